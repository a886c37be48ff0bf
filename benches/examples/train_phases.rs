//! Where a training step's time goes: runs `STEPS` AdamW steps of one step of the `train`
//! benchmark, for a profiler (`perf record`) to attribute, and prints images/s over the steps
//! after the first. `train_phases [STEPS] [tiny64|small224|small224-idle]`: the dense DeiT-T
//! 64px batch-32 step (default), the dense DeiT-S 224px batch-16 step, or that step idle at
//! r = 0.7 in the masked form with the cut loss and distillation from a dense teacher.

use idlevit_cutloss::CutLoss;
use idlevit_tensor::Tensor;
use idlevit_train::{AdamW, Objective, StepSettings, smoothed_targets, train_step};
use idlevit_zoo::{DeiT, DeiTConfig, PolicyKind, Schedule, TokenPolicy};

fn main() {
    // As `finetune` does, unless IDLEVIT_RELEASE_FREED is set (to measure the difference).
    if std::env::var_os("IDLEVIT_RELEASE_FREED").is_none() {
        idlevit_kernels::keep_freed_memory();
    }
    let steps: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let shape = std::env::args().nth(2).unwrap_or_else(|| "tiny64".into());
    let (config, batch, idle) = match shape.as_str() {
        "tiny64" => {
            let config = DeiTConfig {
                img_size: 64,
                patch_size: 8,
                num_classes: 10,
                ..DeiTConfig::tiny()
            };
            (config, 32, false)
        }
        "small224" => (DeiTConfig::small(), 16, false),
        "small224-idle" => (DeiTConfig::small(), 16, true),
        other => panic!("unknown shape {other}: expected tiny64, small224 or small224-idle"),
    };
    let side = config.img_size;
    let n = batch * 3 * side * side;
    let images = Tensor::from_vec(
        vec![batch, 3, side, side],
        (0..n).map(|i| (i % 251) as f32 / 125.0 - 1.0).collect(),
    )
    .expect("images");
    let labels: Vec<usize> = (0..batch).map(|i| i % config.num_classes).collect();
    let targets = smoothed_targets(&labels, config.num_classes, 0.1).expect("targets");
    let policy = if idle {
        TokenPolicy::select(PolicyKind::Idle, Schedule::deit(0.7).expect("schedule"))
    } else {
        TokenPolicy::Dense
    };
    let mut model = DeiT::random(&config, 0)
        .expect("model")
        .with_policy(policy)
        .expect("policy");
    let teacher = DeiT::random(&config, 1).expect("teacher");
    let mut optimizer = AdamW::new(0.05);
    let objective = Objective {
        cut_loss: if idle { CutLoss::Both } else { CutLoss::None },
        distill_weight: if idle { 5.0 } else { 0.0 },
        ..Objective::default()
    };
    let settings = StepSettings {
        lr: 1e-5,
        clip_grad: None,
        seed: None,
    };
    let mut step = || {
        train_step(
            &mut model,
            idle.then_some(&teacher),
            &mut optimizer,
            &objective,
            &images,
            &targets,
            &settings,
        )
        .expect("step")
    };
    step();
    let started = std::time::Instant::now();
    for _ in 1..steps {
        step();
    }
    let per_step = started.elapsed().as_secs_f64() / steps.saturating_sub(1).max(1) as f64;
    println!(
        "{shape}: {steps} steps, {:.2} img/s after the first",
        batch as f64 / per_step
    );
}
