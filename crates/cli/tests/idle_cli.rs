//! `idlevit logits --mode idle|masked`, `--selected-out`, `flops`, `bench`, and the errors
//! for bad schedules.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use idlevit_checkpoint::Checkpoint;

mod common;
use common::scratch;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn idlevit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_idlevit"))
        .args(args)
        .output()
        .expect("the idlevit binary runs")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// The fixture config with a schedule's lists added, written to `dir`.
fn config_with_schedule(dir: &Path, name: &str, key: &str) -> PathBuf {
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("deit").join(name).join("config.json")).unwrap(),
    )
    .unwrap();
    let schedules: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("idle").join(name).join("schedules.json"))
            .unwrap(),
    )
    .unwrap();
    let mut config = config.as_object().unwrap().clone();
    config.insert("idle_layers".into(), schedules[key]["idle_layers"].clone());
    config.insert("keep_ratios".into(), schedules[key]["keep_ratios"].clone());
    let path = dir.join(format!("{key}.json"));
    std::fs::write(&path, serde_json::to_string(&config).unwrap()).unwrap();
    path
}

#[test]
fn idle_masked_and_prune_logits_and_selections_match_the_reference() {
    let name = "p8_i64_d6";
    let dir = scratch("golden");
    let weights = fixtures()
        .join("deit")
        .join(name)
        .join("weights.safetensors");
    let input = fixtures().join("idle").join(name).join("input.safetensors");
    for (key, mode, policy) in [
        ("idle_r0.7", "idle", "idle"),
        ("masked_r0.5", "masked", "idle"),
        ("prune_r0.5", "idle", "prune"),
    ] {
        let config = config_with_schedule(&dir, name, key);
        let (out, selected) = (
            dir.join(format!("{key}.logits")),
            dir.join(format!("{key}.selected")),
        );
        let run = idlevit(&[
            "logits",
            "--config",
            s(&config),
            "--weights",
            s(&weights),
            "--input",
            s(&input),
            "--output",
            s(&out),
            "--mode",
            mode,
            "--policy",
            policy,
            "--selected-out",
            s(&selected),
        ]);
        assert!(
            run.status.success(),
            "{key}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        let golden_bytes = std::fs::read(
            fixtures()
                .join("idle")
                .join(name)
                .join(format!("{key}.safetensors")),
        )
        .unwrap();
        let golden = Checkpoint::from_safetensors_bytes(&golden_bytes).unwrap();
        let ours = Checkpoint::load_safetensors(&out).unwrap();
        let diff = ours
            .require("logits")
            .unwrap()
            .max_abs_diff(golden.require("logits").unwrap())
            .unwrap();
        assert!(diff <= 1e-5, "{key}: {diff:e}");
        let ours = std::fs::read(&selected).unwrap();
        let ours = safetensors::SafeTensors::deserialize(&ours).unwrap();
        let golden = safetensors::SafeTensors::deserialize(&golden_bytes).unwrap();
        let names: Vec<String> = golden
            .names()
            .into_iter()
            .filter(|n| n.starts_with("selected."))
            .map(|n| n.to_string())
            .collect();
        assert_eq!(ours.len(), names.len(), "{key}");
        for n in names {
            let (a, b) = (ours.tensor(&n).unwrap(), golden.tensor(&n).unwrap());
            assert_eq!(
                (a.dtype(), a.shape(), a.data()),
                (b.dtype(), b.shape(), b.data()),
                "{key} {n}"
            );
        }
    }
}

#[test]
fn bad_schedules_give_clear_errors() {
    let dir = scratch("bad");
    let name = "p8_i32_d2";
    let weights = fixtures()
        .join("deit")
        .join(name)
        .join("weights.safetensors");
    let input = fixtures().join("deit").join(name).join("input.safetensors");
    let base =
        std::fs::read_to_string(fixtures().join("deit").join(name).join("config.json")).unwrap();
    let with = |extra: &str| {
        let trimmed = base.trim_end().trim_end_matches('}');
        format!("{trimmed}, {extra}}}")
    };
    let cases = [
        (
            "layer",
            with("\"idle_layers\": [2], \"keep_ratios\": [0.5]"),
            vec![],
            "idle layer 2 does not exist",
        ),
        (
            "lengths",
            with("\"idle_layers\": [0, 1], \"keep_ratios\": [0.5]"),
            vec![],
            "2 idle layers but 1 keep ratios",
        ),
        (
            "zero",
            with("\"idle_layers\": [1], \"keep_ratios\": [0.01]"),
            vec![],
            "keeps no token of 16",
        ),
        (
            "ratio",
            with("\"idle_layers\": [1], \"keep_ratios\": [1.01]"),
            vec![],
            "outside (0, 1]",
        ),
        (
            "rate0",
            base.clone(),
            vec!["--keep-rate", "0"],
            "outside (0, 1]",
        ),
        (
            "rate2",
            base.clone(),
            vec!["--keep-rate", "2"],
            "outside (0, 1]",
        ),
        ("depth", base.clone(), vec!["--keep-rate", "0.7"], "depth 2"),
        (
            "both",
            with("\"idle_layers\": [1], \"keep_ratios\": [0.5]"),
            vec!["--keep-rate", "0.7"],
            "drop --keep-rate",
        ),
    ];
    for (label, config, extra, needle) in cases {
        let path = dir.join(format!("{label}.json"));
        std::fs::write(&path, config).unwrap();
        let out = dir.join("out.safetensors");
        let mut args = vec![
            "logits",
            "--config",
            s(&path),
            "--weights",
            s(&weights),
            "--input",
            s(&input),
            "--output",
            s(&out),
            "--mode",
            "idle",
        ];
        args.extend(extra);
        let run = idlevit(&args);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success(), "{label}: succeeded");
        assert!(
            stderr.contains(needle) && !stderr.contains("panicked"),
            "{label}: {stderr}"
        );
    }
}

#[test]
fn flops_prints_the_spec_figures() {
    let run = idlevit(&[
        "flops",
        "--model",
        "deit_small",
        "--keep-rate",
        "0.7",
        "--policy",
        "idle",
    ]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success());
    assert!(
        stdout.contains("dense: 4.60 GMACs") && stdout.contains("idle r=0.7: 3.24 GMACs"),
        "{stdout}"
    );
    let run = idlevit(&["flops", "--model", "deit_base", "--keep-rate", "0.7"]);
    assert!(String::from_utf8_lossy(&run.stdout).contains("12.47 GMACs"));
}

/// Every named model's dense count, and the published figure it rounds to (papers print
/// one decimal; LV-ViT-M's printed 16.0 is not reproducible from its architecture, see the
/// zoo's cost tests).
#[test]
fn flops_knows_every_model() {
    for (name, dense, published) in [
        ("deit_tiny", "1.25", 1.3),
        ("deit_small", "4.60", 4.6),
        ("deit_base", "17.56", 17.6),
        ("lvvit_s", "6.55", 6.6),
        ("lvvit_m", "12.68", 12.7),
        ("pvt_v2_b0", "0.57", 0.6),
        ("pvt_v2_b1", "2.11", 2.1),
        ("pvt_v2_b2", "4.03", 4.0),
    ] {
        let run = idlevit(&["flops", "--model", name, "--keep-rate", "0.7"]);
        let stdout = String::from_utf8_lossy(&run.stdout);
        assert!(
            run.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        let line = format!("{name} dense: {dense} GMACs");
        assert!(stdout.contains(&line), "{stdout}");
        let value: f64 = dense.parse().unwrap();
        assert_eq!((value * 10.0).round() / 10.0, published, "{name}");
        assert!(stdout.contains(&format!("{name} idle r=0.7: ")), "{stdout}");
    }
    let run = idlevit(&["flops", "--model", "lvvit_s", "--keep-rate", "0.7"]);
    assert!(String::from_utf8_lossy(&run.stdout).contains("idle r=0.7: 4.77 GMACs"));
    // `classify` takes the model and goes on to read its weights (which do not exist here);
    // `classify` itself on every family is tested in `zoo_train_cli.rs`.
    let run = idlevit(&["classify", "--model", "lvvit_m", "--weights", "w", "x.png"]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        !run.status.success() && stderr.contains("cannot read w"),
        "{stderr}"
    );
}

/// The standard output of a run that must have succeeded.
fn success(run: &Output) -> String {
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    String::from_utf8_lossy(&run.stdout).into_owned()
}

#[test]
fn bench_compares_a_policy_with_dense_in_one_run() {
    let config = fixtures().join("deit/p8_i64_d6/config.json");
    let dir = scratch("bench");
    let schedule = config_with_schedule(&dir, "p8_i64_d6", "evit_r0.5");
    let run = idlevit(&[
        "bench",
        "--config",
        s(&schedule),
        "--policy",
        "evit",
        "--batch",
        "2",
        "--runs",
        "3",
        "--warmup",
        "1",
    ]);
    let stdout = success(&run);
    assert!(
        stdout.contains("speed-up") && stdout.contains("GMAC ratio"),
        "{stdout}"
    );
    // Only what was measured in this run: no figures from elsewhere.
    assert!(!stdout.contains("timm"), "{stdout}");
    assert_eq!(stdout.lines().count(), 5, "{stdout}");
    let run = idlevit(&["bench", "--config", s(&config), "--batch", "0"]);
    assert!(!run.status.success());
    // LV-ViT at its published size (random weights), dense against idle.
    let stdout = success(&idlevit(&[
        "bench",
        "--model",
        "lvvit_s",
        "--keep-rate",
        "0.5",
        "--batch",
        "1",
        "--runs",
        "1",
        "--warmup",
        "0",
    ]));
    assert!(
        stdout.contains("lvvit_s batch 1") && stdout.contains("idle r=0.5"),
        "{stdout}"
    );
}
