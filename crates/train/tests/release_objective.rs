//! The released code's objective (`ObjectiveForm::Release`) and batch-statistics batch norms
//! against PyTorch (`fixtures/release`, written by `fixtures/release_objective.py`): every
//! term and every gradient, for DeiT and for LV-ViT with frozen and with train-mode batch
//! norms, and the running statistics one train-mode step leaves.

use std::path::{Path, PathBuf};

use idlevit_checkpoint::Checkpoint;
use idlevit_cutloss::CutLoss;
use idlevit_nn::BatchNormMode;
use idlevit_tensor::Tensor;
use idlevit_train::inspect::loss_report;
use idlevit_train::{Objective, ObjectiveForm, Trainable, smoothed_targets};
use idlevit_zoo::{PolicyKind, Schedule, TokenPolicy, ZooConfig, ZooModel};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/release")
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn load(path: &Path) -> Checkpoint {
    Checkpoint::load_safetensors(path).unwrap()
}

/// The model config without its schedule, and the schedule as an idle policy.
fn config_and_policy(path: &Path) -> (ZooConfig, TokenPolicy) {
    let mut config = json(path);
    let object = config.as_object_mut().unwrap();
    let numbers = |v: Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    let layers = numbers(object.remove("idle_layers").unwrap());
    let ratios = numbers(object.remove("keep_ratios").unwrap());
    let schedule = Schedule::new(layers.iter().map(|&l| l as usize).collect(), ratios).unwrap();
    (
        ZooConfig::from_json(&config.to_string()).unwrap(),
        TokenPolicy::select(PolicyKind::Idle, schedule),
    )
}

/// Runs one case: its terms and gradients must equal the golden's; returns the student
/// after the forward (for the running statistics).
fn check_case(case_dir: &Path, per_layer: &[usize]) -> ZooModel {
    let case = json(&case_dir.join("case.json"));
    let path = |key: &str| case_dir.join(case[key].as_str().unwrap());
    let (config, policy) = config_and_policy(&path("config"));
    let mode = match case["batchnorm"].as_str().unwrap() {
        "train" => BatchNormMode::Train,
        _ => BatchNormMode::Frozen,
    };
    let mut student = ZooModel::load(&config, load(&path("weights")))
        .unwrap()
        .with_policy(policy)
        .unwrap();
    let mut teacher = ZooModel::load(&config, load(&path("teacher"))).unwrap();
    student.set_batch_norm(mode);
    teacher.set_batch_norm(mode);
    let images = load(&path("input")).require("input").unwrap().clone();
    let labels: Vec<usize> = case["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_u64().unwrap() as usize)
        .collect();
    let smoothing = case["smoothing"].as_f64().unwrap() as f32;
    let targets = smoothed_targets(&labels, student.num_classes(), smoothing).unwrap();
    let objective = Objective {
        form: ObjectiveForm::Release,
        cut_loss: CutLoss::Both,
        cut_weight: case["cut_weight"].as_f64().unwrap() as f32,
        distill_weight: case["distill_weight"].as_f64().unwrap() as f32,
        smoothing,
    };
    let report = loss_report(
        &student,
        Some(&teacher),
        &images,
        &targets,
        &objective,
        true,
    )
    .unwrap();
    let name = case_dir.display();
    let want = load(&case_dir.join("values.safetensors"));
    let value = |key: &str| want.require(key).unwrap().to_vec()[0];
    let mut got = vec![
        ("ce", report.ce),
        ("cut", report.cut),
        ("kl", report.kl.unwrap()),
        ("feature", report.feature.unwrap()),
        ("total", report.total),
    ];
    let layers: Vec<usize> = report.cut_layers.iter().map(|l| l.layer).collect();
    assert_eq!(layers, per_layer, "{name}: one cut term per idle layer");
    for (position, layer) in report.cut_layers.iter().enumerate() {
        assert_eq!(
            layer.counted,
            position % 2 == 0,
            "{name}: layer {}",
            layer.layer
        );
    }
    let keys: Vec<String> = per_layer.iter().map(|l| format!("cut.layer{l}")).collect();
    got.extend(
        keys.iter()
            .zip(&report.cut_layers)
            .map(|(k, l)| (k.as_str(), l.value)),
    );
    for (key, got) in got {
        let want = value(key);
        assert!(
            (got - want).abs() <= 1e-5 * want.abs().max(1e-3),
            "{name} {key}: {got} vs {want}"
        );
    }
    let want = load(&case_dir.join("grads.safetensors"));
    let got = report.grads.unwrap();
    assert_eq!(got.len(), want.len(), "{name}: one gradient per parameter");
    for (param, w) in want.iter() {
        let g = got.require(param).unwrap();
        assert_eq!(g.shape(), w.shape(), "{name} {param}");
        assert!(
            relative_error(g, w) <= 1e-4,
            "{name} {param}: gradient off by {:e}",
            relative_error(g, w)
        );
    }
    student
}

/// `||got - want|| / ||want||` (or the absolute error for a zero `want`).
fn relative_error(got: &Tensor, want: &Tensor) -> f32 {
    let (g, w) = (got.to_vec(), want.to_vec());
    let err = g
        .iter()
        .zip(&w)
        .map(|(a, b)| (a - b) * (a - b))
        .sum::<f32>()
        .sqrt();
    err / w.iter().map(|b| b * b).sum::<f32>().sqrt().max(1e-6)
}

#[test]
fn deit_release_objective_matches_pytorch() {
    check_case(&fixtures().join("deit_distill"), &[2, 3, 4, 5]);
}

#[test]
fn lvvit_release_objective_with_frozen_batch_norms_matches_pytorch() {
    check_case(&fixtures().join("lvvit/frozen"), &[1, 2, 3]);
}

#[test]
fn lvvit_release_objective_with_batch_statistics_matches_pytorch() {
    let dir = fixtures().join("lvvit/train");
    let mut student = check_case(&dir, &[1, 2, 3]);
    let momentum = json(&dir.join("case.json"))["batchnorm_momentum"]
        .as_f64()
        .unwrap() as f32;
    student.update_batch_norm(momentum).unwrap();
    let stats = student.to_checkpoint().unwrap();
    let want = load(&dir.join("running_stats.safetensors"));
    assert_eq!(want.len(), 6);
    for (name, w) in want.iter() {
        let got = stats.require(name).unwrap();
        let diff = got.max_abs_diff(w).unwrap();
        assert!(diff <= 1e-5, "{name}: off by {diff:e}");
    }
}

/// The paper's objective on the release's DeiT batch differs exactly by the cut layers the
/// release leaves out: same per-layer terms, a larger cut sum.
#[test]
fn paper_and_release_objectives_differ_only_where_the_release_departs() {
    let dir = fixtures().join("deit_distill");
    let case = json(&dir.join("case.json"));
    let path = |key: &str| dir.join(case[key].as_str().unwrap());
    let (config, policy) = config_and_policy(&path("config"));
    let student = ZooModel::load(&config, load(&path("weights")))
        .unwrap()
        .with_policy(policy)
        .unwrap();
    let images = load(&path("input")).require("input").unwrap().clone();
    let targets = smoothed_targets(&[4, 1], student.num_classes(), 0.1).unwrap();
    let report = |form| {
        let objective = Objective {
            form,
            ..Objective::default()
        };
        loss_report(&student, None, &images, &targets, &objective, false).unwrap()
    };
    let (paper, release) = (report(ObjectiveForm::Paper), report(ObjectiveForm::Release));
    assert_eq!(paper.cut_layers.len(), release.cut_layers.len());
    let (mut skipped, mut kept) = (0.0, 0.0);
    for (p, r) in paper.cut_layers.iter().zip(&release.cut_layers) {
        assert_eq!(p.value, r.value);
        assert!(p.counted);
        if r.counted {
            kept += r.value
        } else {
            skipped += r.value
        }
    }
    assert!((release.cut - kept).abs() <= 1e-6);
    assert!((paper.cut - (kept + skipped)).abs() <= 1e-6);
    assert_eq!(paper.ce, release.ce);
    // The weighted difference of the totals is the skipped layers' share.
    let expected = Objective::default().cut_weight * skipped / 4.0;
    assert!((paper.total - release.total - expected).abs() <= 1e-5);
}
