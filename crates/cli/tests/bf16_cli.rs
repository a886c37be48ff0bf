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

/// The fixture's config (4 blocks deep) with idle layers at blocks 1 and 2, written to a
/// scratch directory named `name`: the directory (removed when dropped) and the file.
fn idle_fixture_config(name: &str) -> (common::Scratch, PathBuf) {
    let text = std::fs::read_to_string(deit("config.json")).unwrap();
    let text = text.trim_end().trim_end_matches('}').trim_end().to_string()
        + ", \"idle_layers\": [1, 2], \"keep_ratios\": [0.7, 0.7]}";
    let dir = common::scratch(name);
    let config = dir.join("config.json");
    std::fs::write(&config, text).unwrap();
    (dir, config)
}

/// `bench --bf16` on the fixture's weights and its idle config, with `extra` arguments.
fn bench_bf16(config: &std::path::Path, extra: &[&str]) -> String {
    let weights = deit("weights.safetensors");
    let args = [
        "bench",
        "--bf16",
        "--config",
        s(config),
        "--weights",
        s(&weights),
        "--batch",
        "2",
        "--runs",
        "2",
        "--warmup",
        "0",
    ];
    let run = idlevit(&[&args[..], extra].concat());
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    String::from_utf8_lossy(&run.stdout).into_owned()
}

#[test]
fn bench_with_bf16_prints_the_speed_ratio() {
    let (_dir, config) = idle_fixture_config("bf16-bench");
    let stdout = bench_bf16(&config, &[]);
    let ratios = stdout.matches("bf16/f32 speed ratio").count();
    assert_eq!(ratios, 2, "dense and idle rows expected:\n{stdout}");
    assert!(
        stdout.contains("dense") && stdout.contains("idle r=config"),
        "{stdout}"
    );
    assert!(
        stdout.contains("speed-up of idle r=config over dense: f32 ")
            && stdout.contains("speed-up / GMAC ratio f32 "),
        "{stdout}"
    );
    for label in ["dense", "idle r=config"] {
        let line = format!("bf16 against f32, {label}: top-1 the same on ");
        assert!(stdout.contains(&line), "{line} missing:\n{stdout}");
    }
}

#[test]
fn bench_bf16_json_gives_speedups_and_how_close_bf16_stays() {
    let (_dir, config) = idle_fixture_config("bf16-bench-json");
    let json: serde_json::Value =
        serde_json::from_str(&bench_bf16(&config, &["--json"])).expect("bench prints JSON");
    let number = |v: &serde_json::Value, key: &str| {
        v[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing: {v}"))
    };
    // Two idle layers keeping 70% of 16 tokens (11) in a 4-block model of 17 tokens: the
    // ratio is the library's, well above 1.
    let ratio = number(&json, "gmac_ratio");
    assert!(ratio > 1.05 && ratio < 1.3, "{ratio}");
    assert!(number(&json, "speedup_f32") > 0.0 && number(&json, "speedup_bf16") > 0.0);
    let rows = json["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 2);
    for row in rows {
        assert_eq!(number(row, "images_compared"), 2.0);
        // The fixture's logits are below 4 in magnitude; bf16 moves them by about 1e-2
        // (`logits_with_bf16_stay_near_timm`), and not at all would mean f32 ran.
        let diff = number(row, "bf16_max_abs_logit_difference");
        let largest = number(row, "f32_max_abs_logit");
        assert!(diff > 1e-4 && diff < 5e-2, "{row}");
        assert!(largest > 0.1 && largest < 10.0, "{row}");
        assert!(number(row, "bf16_top1_same_as_f32") <= 2.0);
    }
    assert!(json.get("amx_status").is_some(), "{json}");
}
