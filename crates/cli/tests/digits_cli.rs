//! `idlevit digits` writes the task as an image folder; `classify` without `--weights` runs
//! the embedded digits model; `finetune` trains from scratch and writes bare weights.

use std::path::PathBuf;
use std::process::{Command, Output};

mod common;
use common::scratch;

fn idlevit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_idlevit"))
        .args(args)
        .output()
        .expect("the idlevit binary runs")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn digits_folder_default_classify_and_training_from_scratch() {
    let dir = scratch("digits");
    let data = dir.join("digits");
    let data_str = data.to_str().unwrap();
    let stdout = ok(&idlevit(&[
        "digits",
        "--out",
        data_str,
        "--train-copies",
        "1",
    ]));
    assert!(
        stdout.contains("1348 training and 449 validation"),
        "{stdout}"
    );
    let mut sevens: Vec<PathBuf> = std::fs::read_dir(data.join("val/7"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    sevens.sort();
    assert!(sevens.len() > 30);

    // The embedded model, its digit names as labels: it reads 97.55% of the validation
    // canvases, so nearly every seven comes out as 7 (chance: 2 of 20).
    let images: Vec<&str> = sevens[..20].iter().map(|p| p.to_str().unwrap()).collect();
    let mut args = vec!["classify", "--top", "1"];
    args.extend(&images);
    let stdout = ok(&idlevit(&args));
    let sevens_read = stdout
        .lines()
        .filter(|l| l.trim().starts_with("7 "))
        .count();
    assert!(sevens_read >= 17, "{sevens_read} of 20\n{stdout}");
    let refused = idlevit(&["classify", "--model", "deit_tiny", images[0]]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("need --weights"));

    // From scratch on the validation half, a small model: bare weights come out and load.
    let config_path = dir.join("config.json");
    std::fs::write(
        &config_path,
        r#"{"img_size": 64, "patch_size": 16, "embed_dim": 16, "depth": 1, "num_heads": 2,
            "mlp_ratio": 2.0, "num_classes": 10, "qkv_bias": true,
            "idle_layers": [0], "keep_ratios": [0.5]}"#,
    )
    .unwrap();
    let config = config_path.to_str().unwrap();
    let weights = dir.join("w.safetensors");
    let out = dir.join("run");
    let stdout = ok(&idlevit(&[
        "finetune",
        "--config",
        config,
        "--data",
        data.join("val").to_str().unwrap(),
        "--epochs",
        "1",
        "--batch",
        "64",
        "--lr",
        "1e-3",
        "--init-seed",
        "3",
        "--out",
        out.to_str().unwrap(),
        "--weights-out",
        weights.to_str().unwrap(),
    ]));
    assert!(stdout.contains("epoch 1 mean loss"), "{stdout}");
    let stdout = ok(&idlevit(&[
        "eval",
        "--config",
        config,
        "--weights",
        weights.to_str().unwrap(),
        "--data",
        data.join("val").to_str().unwrap(),
        "--mode",
        "idle",
    ]));
    assert!(stdout.contains("(449 images)"), "{stdout}");
}

/// The top-1 percentage in `eval`'s text output.
fn top1(stdout: &str) -> f64 {
    stdout
        .split("top-1 ")
        .nth(1)
        .and_then(|rest| rest.split('%').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no top-1 in {stdout}"))
}

#[test]
fn the_built_in_tasks_train_on_fresh_canvases_and_validate_on_held_out_digits() {
    let assets = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../train/assets");
    let config = assets.join("digits/config.json");
    let config = config.to_str().unwrap();
    // The embedded models on their tasks' validation canvases, without writing any folder.
    for (task, weights, images, at_least) in [
        ("digits", "digits", "(449 images)", 95.0),
        ("larger-digit", "larger-digit", "(898 images)", 85.0),
    ] {
        let weights = assets.join(weights).join("model.safetensors");
        let stdout = ok(&idlevit(&[
            "eval",
            "--config",
            config,
            "--weights",
            weights.to_str().unwrap(),
            "--task",
            task,
            "--batch",
            "64",
        ]));
        assert!(stdout.contains(images), "{stdout}");
        assert!(top1(&stdout) >= at_least, "{task}: {stdout}");
    }

    // A finetune on fresh larger-digit canvases: a few per epoch, validation on all 898.
    let dir = scratch("tasks");
    let stdout = ok(&idlevit(&[
        "finetune",
        "--config",
        config,
        "--weights",
        assets
            .join("larger-digit/model.safetensors")
            .to_str()
            .unwrap(),
        "--task",
        "larger-digit",
        "--canvases-per-epoch",
        "8",
        "--epochs",
        "2",
        "--batch",
        "4",
        "--keep-rate",
        "0.7",
        "--out",
        dir.join("run").to_str().unwrap(),
    ]));
    assert_eq!(stdout.matches("mean loss").count(), 2, "{stdout}");
    assert!(stdout.contains("(898 images)"), "{stdout}");

    // --task and --data exclude each other, and one of them is needed.
    let both = idlevit(&[
        "finetune", "--config", config, "--task", "digits", "--data", "x",
    ]);
    assert!(!both.status.success());
    assert!(String::from_utf8_lossy(&both.stderr).contains("cannot be used with"));
    let neither = idlevit(&["finetune", "--config", config]);
    assert!(!neither.status.success());
    let stderr = String::from_utf8_lossy(&neither.stderr);
    assert!(
        stderr.contains("--data") && stderr.contains("required"),
        "{stderr}"
    );
    let per_epoch_alone = idlevit(&[
        "finetune",
        "--config",
        config,
        "--data",
        "x",
        "--canvases-per-epoch",
        "8",
    ]);
    assert!(!per_epoch_alone.status.success());
}

#[test]
fn digits_writes_the_larger_digit_task_with_its_training_copies() {
    let dir = scratch("larger-digit-folder");
    let out = dir.join("task");
    let stdout = ok(&idlevit(&[
        "digits",
        "--task",
        "larger-digit",
        "--out",
        out.to_str().unwrap(),
        "--train-copies",
        "2",
    ]));
    // Two canvases per training digit, two per validation digit.
    assert!(
        stdout.contains("2696 training and 898 validation"),
        "{stdout}"
    );
    let pngs = |half: &str| {
        std::fs::read_dir(out.join(half))
            .unwrap()
            .map(|class| std::fs::read_dir(class.unwrap().path()).unwrap().count())
            .sum::<usize>()
    };
    assert_eq!((pngs("train"), pngs("val")), (2696, 898));
}
