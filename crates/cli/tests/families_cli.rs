//! Every family in every command: a tiny DeiT, LV-ViT and PVT-v2, each from a config whose
//! `idle_layers` / `keep_ratios` lists give its idle schedule, run `logits` in its three
//! forms and in bf16, `bench`, `loss`, `finetune` and `eval`; the policies a family cannot
//! run are refused in the user's words.

use std::path::{Path, PathBuf};

use idlevit_checkpoint::Checkpoint;
use idlevit_tensor::Tensor;
use idlevit_zoo::{ZooConfig, ZooModel};

mod common;
use common::{CONFIG, LVVIT, PVT, failure, idlevit, printed, s, scratch, success, write_folder};

/// Each family's tiny config with schedule lists: DeiT idles its second block; LV-ViT (two
/// blocks over 4 tokens) its second; PVT-v2 every block of stages 2-4 (global indices 1, 2,
/// 3), keeping half of each stage's 64, 16 and 4 tokens.
fn configs() -> [(&'static str, String); 3] {
    let lvvit = LVVIT.replace("\"depth\": 16", "\"depth\": 2").replace(
        "\"skip_lam\": 2.0",
        "\"skip_lam\": 2.0, \"idle_layers\": [1], \"keep_ratios\": [0.5]",
    );
    let pvt = PVT.replace(
        "\"num_classes\": 3",
        "\"num_classes\": 3, \"idle_layers\": [1, 2, 3], \"keep_ratios\": [0.5, 0.5, 0.5]",
    );
    [("deit", CONFIG.to_string()), ("lvvit", lvvit), ("pvt", pvt)]
}

/// A family's files in `dir`: config, random weights, and two deterministic input images.
struct Files {
    config: PathBuf,
    weights: PathBuf,
    input: PathBuf,
    zoo: ZooConfig,
}

fn write_files(dir: &Path, name: &str, text: &str) -> Files {
    let config = dir.join(format!("{name}.json"));
    std::fs::write(&config, text).unwrap();
    let zoo = ZooConfig::from_json(text).unwrap();
    let weights = dir.join(format!("{name}-weights.safetensors"));
    let model = ZooModel::random(&zoo, 5).unwrap();
    model
        .to_checkpoint()
        .unwrap()
        .save_safetensors(&weights)
        .unwrap();
    let side = zoo.img_size();
    let values = (0..2 * 3 * side * side).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0);
    let images = Tensor::from_vec(vec![2, 3, side, side], values.collect()).unwrap();
    let mut input_file = Checkpoint::default();
    input_file.insert("input", images);
    let input = dir.join(format!("{name}-input.safetensors"));
    input_file.save_safetensors(&input).unwrap();
    Files {
        config,
        weights,
        input,
        zoo,
    }
}

/// `logits` of `files` with `extra` flags: the logits written, checked to be finite and
/// of shape (2, classes).
fn logits(dir: &Path, name: &str, files: &Files, extra: &[&str]) -> Vec<f32> {
    let output = dir.join(format!("{name}-logits.safetensors"));
    let args = [
        "logits",
        "--config",
        s(&files.config),
        "--weights",
        s(&files.weights),
        "--input",
        s(&files.input),
        "--output",
        s(&output),
    ];
    success(&idlevit(&[&args[..], extra].concat()));
    let written = Checkpoint::load_safetensors(&output).unwrap();
    let logits = written.get("logits").unwrap();
    assert_eq!(
        logits.shape(),
        &[2, files.zoo.num_classes()],
        "{name} {extra:?}"
    );
    let values = logits.to_vec();
    assert!(values.iter().all(|v| v.is_finite()), "{name} {extra:?}");
    values
}

/// max |a - b| over max |a|.
fn relative_diff(a: &[f32], b: &[f32]) -> f32 {
    let diff = a
        .iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
    diff / a.iter().fold(1e-6f32, |m, v| m.max(v.abs()))
}

#[test]
fn every_family_runs_every_command_from_a_config_with_schedule_lists() {
    let dir = scratch("families");
    let data = dir.join("data");
    write_folder(&data.join("train"), 2);
    write_folder(&data.join("val"), 1);
    for (name, text) in configs() {
        let files = write_files(&dir, name, &text);
        let config = s(&files.config);

        // logits: the gathered and masked idle forms agree, and idling changes the result.
        let dense = logits(&dir, name, &files, &["--mode", "dense"]);
        let idle = logits(&dir, name, &files, &["--mode", "idle"]);
        let masked = logits(&dir, name, &files, &["--mode", "masked"]);
        let gap = relative_diff(&idle, &masked);
        assert!(gap <= 1e-5, "{name}: idle and masked differ by {gap:e}");
        let change = relative_diff(&dense, &idle);
        assert!(change > 1e-6, "{name}: idling changed nothing");
        // bf16 (or f32 where this CPU's bf16 kernel cannot win) stays near f32.
        let bf16 = logits(&dir, name, &files, &["--mode", "dense", "--bf16"]);
        let gap = relative_diff(&dense, &bf16);
        assert!(gap <= 3e-2, "{name}: bf16 differs from f32 by {gap:e}");
        logits(&dir, name, &files, &["--mode", "idle", "--bf16"]);

        let bench = ["bench", "--config", config, "--batch", "1", "--warmup", "0"];
        let stdout = success(&idlevit(&[&bench[..], &["--runs", "1"]].concat()));
        assert!(
            stdout.contains("idle r=config") && stdout.contains("speed-up"),
            "{name}: {stdout}"
        );
        let stdout = success(&idlevit(&[&bench[..], &["--runs", "1", "--bf16"]].concat()));
        assert!(stdout.contains("bf16/f32 speed ratio"), "{name}: {stdout}");

        let stdout = success(&idlevit(&[
            "loss",
            "--config",
            config,
            "--weights",
            s(&files.weights),
            "--input",
            s(&files.input),
            "--labels",
            "0,2",
        ]));
        let (ce, total) = (printed(&stdout, "ce"), printed(&stdout, "total"));
        assert!(ce > 0.0 && total.is_finite(), "{name}: {stdout}");
        if name == "pvt" {
            assert_eq!(printed(&stdout, "cut"), 0.0, "{name}: {stdout}");
        } else {
            assert!(printed(&stdout, "cut") > 0.0, "{name}: {stdout}");
        }

        let out = dir.join(format!("{name}-out"));
        let trained = dir.join(format!("{name}-trained.safetensors"));
        let stdout = success(&idlevit(&[
            "finetune",
            "--config",
            config,
            "--weights",
            s(&files.weights),
            "--data",
            s(&data),
            "--epochs",
            "1",
            "--batch",
            "6",
            "--lr",
            "1e-3",
            "--out",
            s(&out),
            "--weights-out",
            s(&trained),
        ]));
        assert!(stdout.contains("epoch 1 mean loss"), "{name}: {stdout}");
        assert!(out.join("checkpoint.safetensors").is_file(), "{name}");
        let weights = Checkpoint::load_safetensors(&trained).unwrap();
        ZooModel::load(&files.zoo, weights).unwrap();

        let val_dir = data.join("val");
        for extra in [&[][..], &["--bf16"]] {
            let args = ["eval", "--config", config, "--weights", s(&trained)];
            let val = ["--data", s(&val_dir), "--mode", "idle"];
            let stdout = success(&idlevit(&[&args[..], &val, extra].concat()));
            assert!(
                stdout.contains("top-1") && stdout.contains("(3 images)"),
                "{name}: {stdout}"
            );
        }
    }
}

#[test]
fn pvt_refuses_pruning_and_evit_and_errors_quote_the_keep_rate_given() {
    let dir = scratch("families-errors");
    let files = write_files(&dir, "pvt", PVT);
    let output = dir.join("out.safetensors");
    let run = |extra: &[&str]| {
        let args = [
            "logits",
            "--config",
            s(&files.config),
            "--weights",
            s(&files.weights),
            "--input",
            s(&files.input),
            "--output",
            s(&output),
        ];
        failure(&idlevit(&[&args[..], extra].concat()))
    };
    for policy in ["prune", "evit"] {
        let err = run(&["--mode", "idle", "--policy", policy, "--keep-rate", "0.7"]);
        assert!(
            err.contains(&format!("PVT-v2 runs the idle policy only, not {policy}"))
                && err.contains("need every token of the grid"),
            "{err}"
        );
        assert!(!err.contains("::") && !err.contains("Unsupported"), "{err}");
    }
    // The tiny model's last stage has 4 tokens: 0.3^3 of them is none.
    let err = run(&["--mode", "idle", "--keep-rate", "0.3"]);
    assert!(
        err.contains("keep rate 0.3 keeps no token of the 4 in stage 4 (0.3^3 = 0.027 of them)"),
        "{err}"
    );
    // The schedule lists and a keep rate exclude each other; lists are checked per stage.
    let listed = dir.join("listed.json");
    let lists = |layers: &str, ratios: &str| {
        PVT.replace(
            "\"num_classes\": 3",
            &format!("\"num_classes\": 3, \"idle_layers\": {layers}, \"keep_ratios\": {ratios}"),
        )
    };
    std::fs::write(&listed, lists("[3]", "[0.5]")).unwrap();
    let err = failure(&idlevit(&[
        "flops",
        "--config",
        s(&listed),
        "--keep-rate",
        "0.7",
    ]));
    assert!(err.contains("drop --keep-rate or the lists"), "{err}");
    for (layers, ratios, needle) in [
        ("[0]", "[0.5]", "idle layer 0 is in stage 1"),
        (
            "[4]",
            "[0.5]",
            "idle layer 4 does not exist in a model of 4 blocks",
        ),
        ("[3]", "[0.2]", "keeps no token of the 4 in stage 4"),
        ("[1, 2]", "[0.5]", "2 idle layers but 1 keep ratios"),
    ] {
        std::fs::write(&listed, lists(layers, ratios)).unwrap();
        let err = failure(&idlevit(&["flops", "--config", s(&listed)]));
        assert!(
            err.contains(s(&listed))
                && err.contains("idle_layers / keep_ratios: ")
                && err.contains(needle),
            "{err}"
        );
    }
}
