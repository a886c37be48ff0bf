//! Where a training step's time goes: runs `STEPS` AdamW steps of the dense DeiT-T 64px
//! batch-32 step of the `train` benchmark, for a profiler (`perf record`) to attribute.

use idlevit_cutloss::CutLoss;
use idlevit_tensor::Tensor;
use idlevit_train::{AdamW, Objective, StepSettings, smoothed_targets, train_step};
use idlevit_zoo::{DeiT, DeiTConfig, TokenPolicy};

const BATCH: usize = 32;

fn main() {
    // As `finetune` does, unless IDLEVIT_RELEASE_FREED is set (to measure the difference).
    if std::env::var_os("IDLEVIT_RELEASE_FREED").is_none() {
        idlevit_kernels::keep_freed_memory();
    }
    let steps: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let config = DeiTConfig {
        img_size: 64,
        patch_size: 8,
        num_classes: 10,
        ..DeiTConfig::tiny()
    };
    let n = BATCH * 3 * 64 * 64;
    let images = Tensor::from_vec(
        vec![BATCH, 3, 64, 64],
        (0..n).map(|i| (i % 251) as f32 / 125.0 - 1.0).collect(),
    )
    .expect("images");
    let labels: Vec<usize> = (0..BATCH).map(|i| i % 10).collect();
    let targets = smoothed_targets(&labels, 10, 0.1).expect("targets");
    let mut model = DeiT::random(&config, 0)
        .expect("model")
        .with_policy(TokenPolicy::Dense)
        .expect("policy");
    let mut optimizer = AdamW::new(0.05);
    let objective = Objective {
        cut_loss: CutLoss::None,
        ..Objective::default()
    };
    let started = std::time::Instant::now();
    for _ in 0..steps {
        train_step(
            &mut model,
            None,
            &mut optimizer,
            &objective,
            &images,
            &targets,
            &StepSettings {
                lr: 1e-5,
                clip_grad: None,
                seed: None,
            },
        )
        .expect("step");
    }
    let per_step = started.elapsed().as_secs_f64() / steps as f64;
    println!("{steps} steps, {:.1} img/s", BATCH as f64 / per_step);
}
