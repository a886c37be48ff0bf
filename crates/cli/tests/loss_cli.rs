//! `idlevit loss` against PyTorch's values and gradients (`fixtures/loss`, written by
//! `fixtures/loss_reference.py` from the masked form, cut loss and objective of `docs/algorithm.md`).

use std::path::{Path, PathBuf};
use std::process::Command;

use idlevit_checkpoint::Checkpoint;
use serde_json::Value;

mod common;
use common::printed;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/loss")
}

fn s(p: &Path) -> String {
    p.to_str().expect("UTF-8 path").to_string()
}

#[test]
fn values_and_gradients_match_pytorch() {
    let cases = [
        "both_w20",
        "inter_w20",
        "intra_w5",
        "none",
        "distill_both_w20",
        "mixup_soft",
    ];
    let out_dir = common::scratch("loss");
    for case in cases {
        let dir = fixtures().join(case);
        let spec: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
        let grads_out = out_dir.join(format!("{case}.safetensors"));
        let mut args = vec![
            "loss".to_string(),
            "--config".into(),
            s(&fixtures().join("config.json")),
            "--weights".into(),
            s(&fixtures().join("weights.safetensors")),
            "--input".into(),
            s(&fixtures().join("input.safetensors")),
            "--cut-loss".into(),
            spec["cut_loss"].as_str().unwrap().into(),
            "--cut-weight".into(),
            spec["cut_weight"].to_string(),
            "--smoothing".into(),
            spec["smoothing"].to_string(),
            "--grads-out".into(),
            s(&grads_out),
        ];
        match spec.get("targets") {
            Some(file) => args.extend(["--targets".into(), s(&dir.join(file.as_str().unwrap()))]),
            None => {
                let labels: Vec<String> = spec["labels"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|l| l.to_string())
                    .collect();
                args.extend(["--labels".into(), labels.join(",")]);
            }
        }
        let distill = spec["distill_weight"].as_f64().unwrap();
        if distill != 0.0 {
            args.extend([
                "--distill-weight".into(),
                distill.to_string(),
                "--teacher".into(),
                s(&fixtures().join("teacher.safetensors")),
            ]);
        }
        let run = Command::new(env!("CARGO_BIN_EXE_idlevit"))
            .args(&args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&run.stdout);
        assert!(
            run.status.success(),
            "{case}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        let expected = Checkpoint::load_safetensors(dir.join("values.safetensors")).unwrap();
        let mut names = vec!["ce", "cut", "total"];
        if distill != 0.0 {
            names.extend(["kl", "feature"]);
        }
        for name in names {
            let want = expected.require(name).unwrap().to_vec()[0];
            let got = printed(&stdout, name);
            let tolerance = 1e-5 * want.abs().max(1e-3);
            assert!(
                (got - want).abs() <= tolerance,
                "{case} {name}: {got} vs {want}"
            );
        }
        let want = Checkpoint::load_safetensors(dir.join("grads.safetensors")).unwrap();
        let got = Checkpoint::load_safetensors(&grads_out).unwrap();
        assert_eq!(got.len(), want.len(), "{case}: one gradient per parameter");
        for (name, w) in want.iter() {
            let g = got.require(name).unwrap();
            assert_eq!(g.shape(), w.shape(), "{case} {name}");
            let (g, w) = (g.to_vec(), w.to_vec());
            let err: f32 = g
                .iter()
                .zip(&w)
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f32>()
                .sqrt();
            let norm: f32 = w.iter().map(|b| b * b).sum::<f32>().sqrt();
            assert!(
                err <= 1e-4 * norm.max(1e-6),
                "{case} {name}: gradient off by {err:e} of norm {norm:e}"
            );
        }
    }
}

#[test]
fn bad_loss_inputs_are_refused() {
    let base = [
        "loss",
        "--config",
        &s(&fixtures().join("config.json")),
        "--weights",
        &s(&fixtures().join("weights.safetensors")),
        "--input",
        &s(&fixtures().join("input.safetensors")),
    ]
    .map(String::from);
    for (extra, needle) in [
        (vec!["--labels", "1"], "1 labels for a batch of 2"),
        (vec!["--labels", "1,x"], "`x` is not a class index"),
        (vec!["--labels", "1,9"], "out of range"),
        (
            vec!["--labels", "1,2", "--distill-weight", "5"],
            "needs --teacher",
        ),
        (vec![], "give --labels or --targets"),
    ] {
        let run = Command::new(env!("CARGO_BIN_EXE_idlevit"))
            .args(&base)
            .args(&extra)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(
            !run.status.success() && stderr.contains(needle),
            "{extra:?}: {stderr}"
        );
    }
}

/// `--objective release --per-layer` against the release goldens (`fixtures/release`, written
/// by `fixtures/release_objective.py`): DeiT, and LV-ViT from a config with schedule lists with
/// frozen and with train-mode batch norms. The printed terms, each idle layer's term with the
/// layers the release leaves out marked, and every gradient.
#[test]
fn release_objective_prints_and_differentiates_what_pytorch_does() {
    let out_dir = common::scratch("release-objective");
    for (case, layers) in [
        ("deit_distill", &[2, 3, 4, 5][..]),
        ("lvvit/frozen", &[1, 2, 3]),
        ("lvvit/train", &[1, 2, 3]),
    ] {
        let dir = fixtures().join("../release").join(case);
        let spec: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
        let file = |key: &str| dir.join(spec[key].as_str().unwrap());
        let labels: Vec<String> = spec["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.to_string())
            .collect();
        let grads_out = out_dir.join(format!("{}.safetensors", case.replace('/', "-")));
        let run = Command::new(env!("CARGO_BIN_EXE_idlevit"))
            .arg("loss")
            .args(["--config".as_ref(), file("config").as_os_str()])
            .args(["--weights".as_ref(), file("weights").as_os_str()])
            .args(["--input".as_ref(), file("input").as_os_str()])
            .args(["--teacher".as_ref(), file("teacher").as_os_str()])
            .args(["--labels", &labels.join(",")])
            .args(["--distill-weight", &spec["distill_weight"].to_string()])
            .args(["--objective", "release", "--per-layer"])
            .args(["--batchnorm", spec["batchnorm"].as_str().unwrap()])
            .arg("--grads-out")
            .arg(&grads_out)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&run.stdout);
        assert!(
            run.status.success(),
            "{case}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        let expected = Checkpoint::load_safetensors(dir.join("values.safetensors")).unwrap();
        for name in ["ce", "cut", "kl", "feature", "total"] {
            let want = expected.require(name).unwrap().to_vec()[0];
            let got = printed(&stdout, name);
            assert!(
                (got - want).abs() <= 1e-5 * want.abs().max(1e-3),
                "{case} {name}: {got} vs {want}"
            );
        }
        for (position, layer) in layers.iter().enumerate() {
            let want = expected
                .require(&format!("cut.layer{layer}"))
                .unwrap()
                .to_vec()[0];
            let line = stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("cut.layer{layer} ")))
                .unwrap_or_else(|| panic!("{case}: no line for layer {layer}: {stdout}"));
            let counted = !line.contains("not in the release's sum");
            assert_eq!(counted, position % 2 == 0, "{case}: {line}");
            let got: f32 = line.split_whitespace().next().unwrap().parse().unwrap();
            assert!(
                (got - want).abs() <= 1e-5 * want.abs().max(1e-3),
                "{case} layer {layer}: {got} vs {want}"
            );
        }
        let want = Checkpoint::load_safetensors(dir.join("grads.safetensors")).unwrap();
        let got = Checkpoint::load_safetensors(&grads_out).unwrap();
        assert_eq!(got.len(), want.len(), "{case}");
        for (name, w) in want.iter() {
            let diff = got.require(name).unwrap().max_abs_diff(w).unwrap();
            let scale = w.to_vec().iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(
                diff <= 1e-4 * scale.max(1e-6),
                "{case} {name}: off by {diff:e}"
            );
        }
    }
}

#[test]
fn batch_statistics_are_refused_for_a_model_without_batch_norms() {
    let run = Command::new(env!("CARGO_BIN_EXE_idlevit"))
        .args(["loss", "--config"])
        .arg(fixtures().join("config.json"))
        .arg("--weights")
        .arg(fixtures().join("weights.safetensors"))
        .arg("--input")
        .arg(fixtures().join("input.safetensors"))
        .args(["--labels", "4,1", "--batchnorm", "train"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        !run.status.success() && stderr.contains("--batchnorm train: DeiT has no batch norm"),
        "{stderr}"
    );
}
