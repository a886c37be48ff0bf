//! `--bf16` end to end: logits close to timm's f32 ones but computed differently, and `bench`
//! timing both precisions in one run.

use std::path::PathBuf;
use std::process::{Command, Output};

use idlevit_checkpoint::Checkpoint;

mod common;

fn deit(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/deit/p16_i64_d4")
        .join(file)
}

fn idlevit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_idlevit"))
        .args(args)
        .args(["--threads", "2"])
        .output()
        .expect("the idlevit binary runs")
}

fn s(p: &std::path::Path) -> &str {
    p.to_str().expect("fixture paths are UTF-8")
}

#[test]
fn logits_with_bf16_stay_near_timm() {
    let dir = common::scratch("bf16-logits");
    let out_file = dir.join("logits.safetensors");
    let out = idlevit(&[
        "logits",
        "--bf16",
        "--config",
        s(&deit("config.json")),
        "--weights",
        s(&deit("weights.safetensors")),
        "--input",
        s(&deit("input.safetensors")),
        "--output",
        s(&out_file),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = Checkpoint::load_safetensors(&out_file).unwrap();
    let expected = Checkpoint::load_safetensors(deit("logits.safetensors")).unwrap();
    let diff = got
        .require("logits")
        .unwrap()
        .max_abs_diff(expected.require("logits").unwrap())
        .unwrap();
    // f32 matches timm within 1e-4; bf16 rounding moves these logits (|logit| < 4) by ~1e-2.
    assert!(diff > 1e-4 && diff < 5e-2, "max |bf16 - timm| = {diff:e}");
}

#[test]
fn bench_with_bf16_prints_the_speed_ratio() {
    // The fixture is 4 blocks deep; idle at blocks 1 and 2.
    let text = std::fs::read_to_string(deit("config.json")).unwrap();
    let text = text.trim_end().trim_end_matches('}').trim_end().to_string()
        + ", \"idle_layers\": [1, 2], \"keep_ratios\": [0.7, 0.7]}";
    let dir = common::scratch("bf16-bench");
    let config = dir.join("config.json");
    std::fs::write(&config, text).unwrap();
    let run = idlevit(&[
        "bench",
        "--bf16",
        "--config",
        s(&config),
        "--batch",
        "2",
        "--runs",
        "2",
        "--warmup",
        "0",
    ]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let ratios = stdout.matches("bf16/f32 speed ratio").count();
    assert_eq!(ratios, 2, "dense and idle rows expected:\n{stdout}");
    assert!(
        stdout.contains("dense") && stdout.contains("idle r=config"),
        "{stdout}"
    );
}
