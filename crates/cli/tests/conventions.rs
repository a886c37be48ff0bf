//! The command line's conventions: choices that clap checks and lists, the model selected
//! by one flag at most, `--json` output that parses and says what the library computes,
//! `convert` as the library converts, and shell completions.

use std::path::Path;
use std::process::{Command, Output};

use idlevit_data::ImageFolder;
use idlevit_data::preprocess::EvalTransform;
use idlevit_zoo::{TokenPolicy, ZooConfig};
use serde_json::Value;

mod common;
use common::{CONFIG, s, scratch, setup};

fn idlevit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_idlevit"))
        .args(args)
        .args(["--threads", "2"])
        .output()
        .expect("the idlevit binary runs")
}

/// The one JSON object a `--json` run printed on stdout.
fn parsed(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|err| {
        panic!(
            "stdout is not one JSON object ({err}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn succeeded(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    parsed(out)
}

/// JSON numbers parse back to within an ulp or so of the value printed.
fn assert_close(parsed: Option<f64>, expected: f64) {
    let parsed = parsed.expect("a number");
    assert!(
        (parsed - expected).abs() <= 1e-12 * expected.abs().max(1.0),
        "{parsed} != {expected}"
    );
}

fn fixture(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(path)
}

#[test]
fn help_lists_every_choice_and_bad_choices_are_refused_by_name() {
    for (command, listed) in [
        ("logits", "[possible values: dense, idle, masked]"),
        ("logits", "[possible values: idle, prune, evit]"),
        ("eval", "[possible values: dense, idle, masked]"),
        ("bench", "[possible values: idle, prune, evit]"),
        ("flops", "[possible values: idle, prune, evit]"),
        ("loss", "[possible values: both, inter, intra, none]"),
        ("finetune", "[possible values: both, inter, intra, none]"),
        ("finetune", "[possible values: paper, release]"),
    ] {
        let out = idlevit(&[command, "-h"]);
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && help.contains(listed),
            "{command}: {help}"
        );
    }
    for (flag, value, listed) in [
        ("--policy", "topk", "idle, prune, evit"),
        ("--mode", "sparse", "dense, idle, masked"),
    ] {
        let out = idlevit(&["logits", "--model", "deit_tiny", flag, value]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!("invalid value '{value}' for '{flag}"))
                && stderr.contains(listed),
            "{stderr}"
        );
    }
}

#[test]
fn model_and_config_together_are_refused_before_anything_runs() {
    let out = idlevit(&["flops", "--model", "deit_small", "--config", "missing.json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("'--model <NAME>' cannot be used with '--config <CFG.json>'")
            || stderr.contains("'--config <CFG.json>' cannot be used with '--model <NAME>'"),
        "{stderr}"
    );
    // Neither is still refused, when the command runs (a hub snapshot could have named it).
    let out = idlevit(&["flops"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("give --config CFG.json or --model NAME"),
        "{stderr}"
    );
}

#[test]
fn flops_json_gives_the_library_counts() {
    let json = succeeded(&idlevit(&[
        "flops",
        "--model",
        "deit_small",
        "--keep-rate",
        "0.7",
        "--json",
    ]));
    let config = ZooConfig::named("deit_small").unwrap();
    let dense = config.macs(&TokenPolicy::Dense).unwrap();
    let idle =
        idlevit_cli::policy::compared_policy(&config, idlevit_zoo::PolicyKind::Idle, Some(0.7))
            .unwrap();
    let reduced = config.macs(&idle).unwrap();
    assert_eq!(json["model"], "deit_small");
    assert_close(json["dense_gmacs"].as_f64(), dense / 1e9);
    assert_eq!(json["policy"]["policy"], "idle");
    assert_close(json["policy"]["keep_rate"].as_f64(), 0.7);
    assert_close(json["policy"]["gmacs"].as_f64(), reduced / 1e9);
    assert_eq!(
        json["policy"]["dense_over_policy"].as_f64(),
        Some(dense / reduced)
    );

    let json = succeeded(&idlevit(&["flops", "--model", "deit_tiny", "--json"]));
    assert!(json["policy"].is_null(), "{json}");
}

#[test]
fn classify_json_gives_the_library_top_classes_and_the_unreadable_files() {
    let dir = scratch("classify-json");
    let labels = dir.join("labels.txt");
    let names: Vec<String> = (0..10).map(|i| format!("class {i}")).collect();
    std::fs::write(&labels, names.join("\n")).unwrap();
    let (config, weights) = (
        fixture("deit/p8_i32_d2/config.json"),
        fixture("deit/p8_i32_d2/weights.safetensors"),
    );
    let (image, bad) = (
        fixture("images/sample.png"),
        fixture("images/not_an_image.png"),
    );
    let zoo = ZooConfig::from_file(&config).unwrap();
    let model =
        idlevit_train::models::load_zoo_model(&zoo, Some(weights.as_path()), "weights", false)
            .unwrap();
    let expected = idlevit_train::evaluate::classify(
        &model,
        std::slice::from_ref(&image),
        3,
        &EvalTransform::for_size(32),
    )
    .unwrap();

    let out = idlevit(&[
        "classify",
        "--config",
        s(&config),
        "--weights",
        s(&weights),
        "--labels",
        s(&labels),
        "--top",
        "3",
        "--json",
        s(&image),
        s(&bad),
    ]);
    assert!(!out.status.success(), "an unreadable file fails the run");
    let json = parsed(&out);
    let images = json["images"].as_array().unwrap();
    assert_eq!(images.len(), 1, "{json}");
    assert_eq!(images[0]["path"], s(&image));
    let top = images[0]["top"].as_array().unwrap();
    assert_eq!(top.len(), 3);
    for (entry, &(index, probability)) in top.iter().zip(&expected.predictions[0].top) {
        assert_eq!(entry["index"].as_u64(), Some(index as u64));
        assert_eq!(entry["label"], names[index].as_str());
        let printed = entry["probability"].as_f64().unwrap();
        assert!((printed - f64::from(probability)).abs() < 1e-4, "{entry}");
    }
    let unreadable = json["unreadable"].as_array().unwrap();
    assert_eq!(unreadable.len(), 1, "{json}");
    assert_eq!(unreadable[0]["path"], s(&bad));
    assert!(
        unreadable[0]["error"]
            .as_str()
            .unwrap()
            .contains("not_an_image.png")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn logits_json_names_what_it_wrote() {
    let (dir, config, weights) = setup("logits-json");
    let input = dir.join("x.safetensors");
    let images = idlevit_tensor::Tensor::from_vec(
        vec![2, 3, 16, 16],
        (0..2 * 3 * 16 * 16).map(|i| (i % 7) as f32 / 7.0).collect(),
    )
    .unwrap();
    let mut checkpoint = idlevit_checkpoint::Checkpoint::default();
    checkpoint.insert("input", images);
    checkpoint.save_safetensors(&input).unwrap();
    let (output, selected) = (dir.join("y.safetensors"), dir.join("s.safetensors"));
    let logits = |extra: &[&str]| {
        let mut args = vec!["logits", "--config", s(&config), "--weights", s(&weights)];
        args.extend(["--input", s(&input), "--output", s(&output), "--json"]);
        args.extend(extra);
        succeeded(&idlevit(&args))
    };
    let json = logits(&[]);
    assert_eq!(json["output"], s(&output));
    assert_eq!(json["shape"], serde_json::json!([2, 3]));
    assert_eq!(json["non_finite_rows"].as_u64(), Some(0));
    assert!(json["selected_out"].is_null(), "{json}");
    assert!(output.is_file());

    let json = logits(&["--mode", "idle", "--selected-out", s(&selected)]);
    assert_eq!(json["selected_out"]["path"], s(&selected));
    assert_eq!(json["selected_out"]["layers"], serde_json::json!([1]));
    assert!(selected.is_file());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn eval_and_bench_json_parse_and_agree_with_the_library() {
    let (dir, config, weights) = setup("eval-bench-json");
    let data = dir.join("data/val");
    let zoo = ZooConfig::from_json(CONFIG).unwrap();
    let dense =
        idlevit_train::models::load_zoo_model(&zoo, Some(weights.as_path()), "weights", false)
            .unwrap()
            .with_policy(TokenPolicy::Dense)
            .unwrap();
    let expected =
        idlevit_train::evaluate::evaluate(&dense, &ImageFolder::open(&data).unwrap(), 4, false)
            .unwrap();
    let json = succeeded(&idlevit(&[
        "eval",
        "--config",
        s(&config),
        "--weights",
        s(&weights),
        "--data",
        s(&data),
        "--batch",
        "4",
        "--json",
    ]));
    assert_eq!(json["model"], "custom");
    assert_eq!(json["images"].as_u64(), Some(expected.images as u64));
    assert_close(json["top1"].as_f64(), expected.top1);
    assert_close(json["top5"].as_f64(), expected.top5);
    assert_eq!(json["non_finite"].as_u64(), Some(0));

    let json = succeeded(&idlevit(&[
        "bench",
        "--config",
        s(&config),
        "--batch",
        "2",
        "--warmup",
        "0",
        "--runs",
        "1",
        "--json",
    ]));
    let rows = json["rows"].as_array().unwrap();
    assert_eq!(json["batch"].as_u64(), Some(2));
    assert_eq!(json["threads"].as_u64(), Some(2));
    assert_eq!(rows[0]["label"], "dense");
    assert!(
        rows[1]["label"].as_str().unwrap().starts_with("idle"),
        "{json}"
    );
    let (dense_ips, idle_ips) = (
        rows[0]["images_per_second"].as_f64().unwrap(),
        rows[1]["images_per_second"].as_f64().unwrap(),
    );
    assert!(dense_ips > 0.0 && idle_ips > 0.0, "{json}");
    assert_close(json["speedup"].as_f64(), idle_ips / dense_ips);
    let gmac_ratio = zoo.macs(&TokenPolicy::Dense).unwrap()
        / zoo
            .macs(
                &idlevit_cli::policy::compared_policy(&zoo, idlevit_zoo::PolicyKind::Idle, None)
                    .unwrap(),
            )
            .unwrap();
    assert_close(json["gmac_ratio"].as_f64(), gmac_ratio);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn convert_writes_what_the_library_writes_and_strict_refuses_unknown_globals() {
    let dir = scratch("convert");
    let input = fixture("deit/p8_i32_d2/checkpoint.pth");
    let (ours, library) = (
        dir.join("ours.safetensors"),
        dir.join("library.safetensors"),
    );
    let out = idlevit(&["convert", s(&input), s(&ours)]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("kept inert (never executed): argparse.Namespace"),
        "{stdout}"
    );
    let options = idlevit_train::convert::ConvertOptions::default();
    let report = idlevit_train::convert::convert(&input, &library, &options).unwrap();
    assert!(
        stdout.contains(&format!("wrote {} tensors", report.tensors)),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read(&ours).unwrap(),
        std::fs::read(&library).unwrap()
    );

    let refused = dir.join("refused.safetensors");
    let out = idlevit(&["convert", "--strict", s(&input), s(&refused)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("argparse.Namespace"), "{stderr}");
    assert!(!refused.exists());

    let out = idlevit(&["convert", "--family", "deit", s(&input), s(&refused)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("[possible values: lvvit]"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn completions_name_every_command_for_each_shell() {
    for (shell, marker) in [
        ("bash", "_idlevit()"),
        ("zsh", "#compdef idlevit"),
        ("fish", "complete -c idlevit"),
    ] {
        let out = idlevit(&["completions", shell]);
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && script.contains(marker),
            "{shell}: {script}"
        );
        for command in ["logits", "classify", "bench", "flops", "eval", "convert"] {
            assert!(script.contains(command), "{shell}: no {command}");
        }
    }
}
