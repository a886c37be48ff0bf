//! Training smoke test: a tiny idle model fits a small generated task.

use idlevit_cutloss::CutLoss;
use idlevit_tensor::Tensor;
use idlevit_train::{
    AdamW, CosineSchedule, Objective, ObjectiveForm, StepSettings, smoothed_targets, train_step,
};
use idlevit_zoo::{DeiT, DeiTConfig, PolicyKind, Schedule, TokenPolicy};

/// Images of 8x8 pixels whose class is where a bright 4x4 square sits (one of 4 quadrants),
/// on seeded noise: a task a 4-patch ViT must attend to the right patch to solve.
fn quadrant_task(count: usize, seed: u64) -> (Tensor, Vec<usize>) {
    let mut state = seed;
    let mut noise = || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.6
    };
    let mut pixels = Vec::with_capacity(count * 3 * 64);
    let mut labels = Vec::with_capacity(count);
    for i in 0..count {
        let label = i % 4;
        let (qy, qx) = (label / 2, label % 2);
        for _channel in 0..3 {
            for y in 0..8 {
                for x in 0..8 {
                    let inside = y / 4 == qy && x / 4 == qx;
                    pixels.push(if inside { 1.0 } else { -0.5 } + noise());
                }
            }
        }
        labels.push(label);
    }
    (
        Tensor::from_vec(vec![count, 3, 8, 8], pixels).unwrap(),
        labels,
    )
}

#[test]
fn a_tiny_idle_model_fits_a_generated_task() {
    let config = DeiTConfig {
        img_size: 8,
        patch_size: 4,
        embed_dim: 16,
        depth: 2,
        num_heads: 2,
        mlp_ratio: 2.0,
        num_classes: 4,
        qkv_bias: true,
        idle_layers: None,
        keep_ratios: None,
    };
    let policy = TokenPolicy::select(PolicyKind::Idle, Schedule::new(vec![1], vec![0.5]).unwrap());
    let mut model = DeiT::random(&config, 11)
        .unwrap()
        .with_policy(policy)
        .unwrap();
    let objective = Objective {
        form: ObjectiveForm::Paper,
        cut_loss: CutLoss::Both,
        cut_weight: 1.0,
        distill_weight: 0.0,
        smoothing: 0.0,
    };
    let (images, labels) = quadrant_task(32, 5);
    let targets = smoothed_targets(&labels, 4, 0.0).unwrap();
    let mut optimizer = AdamW::new(0.01);
    let steps = 80;
    let schedule = CosineSchedule {
        base_lr: 3e-3,
        min_lr: 3e-4,
        warmup_lr: 3e-4,
        warmup_steps: 5,
        total_steps: steps,
    };
    let losses: Vec<f32> = (0..steps)
        .map(|step| {
            train_step(
                &mut model,
                None,
                &mut optimizer,
                &objective,
                &images,
                &targets,
                &StepSettings {
                    lr: schedule.lr(step),
                    clip_grad: Some(1.0),
                    seed: None,
                },
            )
            .unwrap()
        })
        .collect();
    let (first, last) = (losses[0], losses[steps - 1]);
    assert!(
        first > 1.0,
        "an untrained 4-way classifier starts near ln 4, got {first}"
    );
    assert!(
        last < 0.25 * first,
        "loss fell only from {first} to {last}: {losses:?}"
    );
}
