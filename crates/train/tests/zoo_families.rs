//! The finetuning objective on LV-ViT and PVT-v2: its tape gradient agrees with finite
//! differences of its eager value (cross entropy, cut loss where the family has one, KL and
//! feature distillation from a teacher of the same family), one AdamW step lowers it, and a
//! cut weight on an idle PVT-v2 is refused.

use idlevit_autodiff::Tape;
use std::collections::BTreeMap;

use idlevit_cutloss::CutLoss;
use idlevit_nn::{Backend, Eager};
use idlevit_tensor::Tensor;
use idlevit_train::{
    AdamW, Objective, ObjectiveForm, StepSettings, Teacher, Trainable, smoothed_targets,
    step_gradients, train_step,
};
use idlevit_zoo::{PolicyKind, Schedule, TokenPolicy, ZooConfig, ZooModel};

/// LV-ViT on 32x32 images (16 tokens, 3 blocks of width 24) and PVT-v2 on 48x48 images (four
/// one-block stages on 12x12 to 2x2 grids), both with 5 classes.
fn configs() -> [ZooConfig; 2] {
    let lvvit = r#"{"family": "lvvit", "img_size": 32, "patch_size": 8, "stem_channels": 4,
        "embed_dim": 24, "depth": 3, "num_heads": 3, "mlp_ratio": 2.0, "num_classes": 5,
        "skip_lam": 2.0}"#;
    let pvt = r#"{"family": "pvt_v2", "img_size": 48, "embed_dims": [8, 8, 12, 16],
        "depths": [1, 1, 1, 1], "num_heads": [1, 2, 2, 4], "sr_ratios": [4, 2, 1, 1],
        "mlp_ratios": [2.0, 2.0, 2.0, 2.0], "num_classes": 5}"#;
    [lvvit, pvt].map(|text| ZooConfig::from_json(text).unwrap())
}

/// Blocks 1 and 2 idle (LV-ViT: the last two blocks; PVT: stages 2 and 3).
fn idle() -> TokenPolicy {
    TokenPolicy::select(
        PolicyKind::Idle,
        Schedule::new(vec![1, 2], vec![0.5, 0.75]).unwrap(),
    )
}

/// Deterministic values in [-1, 1]: a multiplicative hash of the position and the seed
/// (irregular, so that no two tokens tie in an idle layer's scores).
fn values(seed: u64, shape: &[usize]) -> Tensor {
    let count: usize = shape.iter().product();
    let hash = |i: usize| ((i as u64 + 1).wrapping_mul(2_654_435_761) ^ (seed * 97)) % 2001;
    let data = (0..count).map(|i| hash(i) as f32 / 1000.0 - 1.0);
    Tensor::from_vec(shape.to_vec(), data.collect()).unwrap()
}

/// The Euclidean norm of `t`, in f64.
fn norm(t: &Tensor) -> f64 {
    t.to_vec()
        .iter()
        .map(|&v| f64::from(v) * f64::from(v))
        .sum::<f64>()
        .sqrt()
}

/// The objective each family trains with: the release's terms, the cut loss only where the
/// family has a CLS attention map.
fn objective(model: &ZooModel) -> Objective {
    Objective {
        form: ObjectiveForm::Paper,
        cut_loss: CutLoss::Both,
        cut_weight: if model.has_cut_graph() { 2.0 } else { 0.0 },
        distill_weight: 0.5,
        smoothing: 0.1,
    }
}

/// A student under the idle policy, its dense teacher of the same family, two images and
/// their smoothed targets.
fn problem(config: &ZooConfig) -> (ZooModel, ZooModel, Tensor, Tensor) {
    let mut student = ZooModel::random(config, 21).unwrap();
    // LV-ViT's stem is piecewise linear; moving its batch-norm shifts clear of ReLU's kink
    // keeps the f32 difference quotient smooth (as the zoo's own gradient check does).
    student.visit_params_mut(&mut |p| {
        if p.name().starts_with("patch_embed.bn") && p.name().ends_with(".bias") {
            *p.value_mut() = p.value().map(|v| v + 3.0);
        }
    });
    let student = student.with_policy(idle()).unwrap();
    let teacher = ZooModel::random(config, 22).unwrap();
    let side = config.img_size();
    let images = values(4, &[2, 3, side, side]);
    let targets = smoothed_targets(&[1, 3], 5, 0.1).unwrap();
    (student, teacher, images, targets)
}

/// Every idle layer's selected tokens (the hard choice the gradient does not see).
fn selections(model: &ZooModel, images: &Tensor) -> Vec<Vec<Vec<usize>>> {
    match model {
        ZooModel::Pvt(m) => m
            .forward_masked(&Eager, images)
            .unwrap()
            .selections
            .into_iter()
            .map(|s| s.tokens)
            .collect(),
        _ => model
            .forward_masked(&Eager, images)
            .unwrap()
            .layers
            .iter()
            .map(|(_, l)| l.selection.indices().to_vec())
            .collect(),
    }
}

/// The objective's total by the inference backend, in f64.
fn eager_total(
    objective: &Objective,
    model: &ZooModel,
    images: &Tensor,
    targets: &Tensor,
    teacher: &Teacher,
) -> f64 {
    let parts = objective
        .compute(&Eager, model, images, targets, Some(teacher))
        .unwrap();
    f64::from(parts.total.to_vec()[0])
}

#[test]
fn objective_gradients_match_finite_differences() {
    for config in configs() {
        let (student, teacher, images, targets) = problem(&config);
        let objective = objective(&student);
        let teacher = Teacher::run(&teacher, &images).unwrap();
        let tape = Tape::new();
        let parts = objective
            .compute(&tape, &student, &images, &targets, Some(&teacher))
            .unwrap();
        // Every term is present: the check covers the cut loss (LV-ViT) and distillation.
        let value = |v| tape.to_tensor(v).to_vec()[0];
        assert!(value(parts.kl.as_ref().unwrap()) > 0.0);
        assert!(value(parts.feature.as_ref().unwrap()) > 0.0);
        assert_eq!(
            parts.cut_layers.len(),
            if student.has_cut_graph() { 2 } else { 0 }
        );
        let grads = idlevit_train::parameter_gradients(&tape, &parts.total, &student).unwrap();

        // Per parameter tensor: the derivative along a seeded unit direction, by central
        // differences, against <grad, direction>, within 0.1% of |grad| (measured: 4e-4 at
        // most). LV-ViT's ReLU stem bends the quotient (see the zoo's tape tests; measured
        // up to 4% here), so its stem is held to 6%.
        let tolerance = |name: &str| {
            let stem = name.starts_with("patch_embed.conv") || name.starts_with("patch_embed.bn");
            if matches!(config, ZooConfig::LvVit(_)) && stem {
                6e-2
            } else {
                1e-3
            }
        };
        let chosen = selections(&student, &images);
        let mut checked = 0;
        for (i, (name, grad)) in grads.iter().enumerate() {
            let direction = values(500 + i as u64, grad.shape());
            let length = norm(&direction) as f32;
            let direction = direction.map(|v| v / length);
            let moved = |step: f32| {
                let mut moved = student.clone();
                moved.visit_params_mut(&mut |p| {
                    if p.name() == name {
                        let shift = direction.map(|d| step * d);
                        *p.value_mut() = Tensor::from_vec(
                            p.value().shape().to_vec(),
                            p.value()
                                .to_vec()
                                .iter()
                                .zip(shift.to_vec())
                                .map(|(a, b)| a + b)
                                .collect(),
                        )
                        .unwrap();
                    }
                });
                moved
            };
            // The difference quotient spans no change of selection: the objective is smooth
            // only while every idle layer keeps its tokens, so the step shrinks until it does.
            let step = [1e-2f32, 3e-3, 1e-3]
                .into_iter()
                .find(|&h| {
                    [h, -h]
                        .iter()
                        .all(|&h| selections(&moved(h), &images) == chosen)
                })
                .unwrap_or_else(|| panic!("{name}: every step changes the selection"));
            let total = |h: f32| eager_total(&objective, &moved(h), &images, &targets, &teacher);
            let numeric = (total(step) - total(-step)) / (2.0 * f64::from(step));
            let analytic: f64 = grad
                .to_vec()
                .iter()
                .zip(direction.to_vec())
                .map(|(&g, d)| f64::from(g) * f64::from(d))
                .sum();
            let (error, bound) = (
                (numeric - analytic).abs(),
                tolerance(name) * norm(grad) + 1e-4,
            );
            let family = config.family();
            assert!(
                error <= bound,
                "{family} {name}: finite difference {numeric}, gradient {analytic}, bound {bound}"
            );
            checked += 1;
        }
        let mut count = 0;
        student.visit_params(&mut |_| count += 1);
        assert_eq!(checked, count, "every parameter has a gradient");
    }
}

#[test]
fn one_adamw_step_lowers_the_objective() {
    for config in configs() {
        let (mut student, teacher, images, targets) = problem(&config);
        let objective = objective(&student);
        let before = student.clone();
        let mut optimizer = AdamW::new(0.05);
        let settings = StepSettings {
            lr: 1e-3,
            clip_grad: Some(5.0),
            seed: None,
        };
        let first = train_step(
            &mut student,
            Some(&teacher),
            &mut optimizer,
            &objective,
            &images,
            &targets,
            &settings,
        )
        .unwrap();
        let (second, _) = step_gradients(
            &student,
            Some(&teacher),
            &objective,
            &images,
            &targets,
            None,
        )
        .unwrap();
        assert!(
            second < first,
            "{}: the loss went from {first} to {second}",
            config.family()
        );
        let mut weights = BTreeMap::new();
        before.visit_params(&mut |p| {
            weights.insert(p.name().to_string(), p.value().to_vec());
        });
        let mut moved = 0;
        student
            .visit_params(&mut |p| moved += usize::from(weights[p.name()] != p.value().to_vec()));
        assert_eq!(
            moved,
            weights.len(),
            "{}: every parameter moves",
            config.family()
        );
    }
}

#[test]
fn an_idle_pvt_refuses_a_cut_weight() {
    let [_, config] = configs();
    let dense = ZooModel::random(&config, 1).unwrap();
    let idle = dense.clone().with_policy(idle()).unwrap();
    let with_cut = Objective {
        distill_weight: 0.0,
        ..Objective::default()
    };
    let err = with_cut.check(&idle).unwrap_err().to_string();
    assert!(
        err.contains("PVT-v2 has no CLS attention map") && err.contains("found weight 20"),
        "{err}"
    );
    let images = values(2, &[1, 3, 48, 48]);
    let targets = smoothed_targets(&[0], 5, 0.0).unwrap();
    assert!(
        with_cut
            .compute(&Eager, &idle, &images, &targets, None)
            .is_err()
    );
    // Dense, or with the cut terms off, the same objective trains.
    with_cut.check(&dense).unwrap();
    let no_terms = Objective {
        cut_loss: CutLoss::None,
        ..with_cut
    };
    let parts = no_terms
        .compute(&Eager, &idle, &images, &targets, None)
        .unwrap();
    assert_eq!(parts.cut.to_vec(), [0.0]);
    assert_eq!(Eager.shape(&parts.total), &[] as &[usize]);
}
