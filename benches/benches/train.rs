//! Training throughput: one AdamW step of
//! - a DeiT-T-sized model on 64x64 images (patch 8, 64 tokens), batch 32: dense (cross
//!   entropy) and idle (masked form + cut loss);
//! - DeiT-S on 224x224 images, batch 16: dense, and idle at r = 0.7 in the masked form with
//!   the cut loss (weight 20) and distillation (weight 5) from a dense teacher.
//!
//! Compare with PyTorch on the same machine and threads:
//! `python benches/python/train_throughput.py --threads 2 [--shape small224 --form idle]`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use idlevit_cutloss::CutLoss;
use idlevit_tensor::Tensor;
use idlevit_train::{AdamW, Objective, StepSettings, smoothed_targets, train_step};
use idlevit_zoo::{DeiT, DeiTConfig, PolicyKind, Schedule, TokenPolicy};
use std::time::Duration;

const BATCH: usize = 32;

fn config() -> DeiTConfig {
    DeiTConfig {
        img_size: 64,
        patch_size: 8,
        num_classes: 10,
        ..DeiTConfig::tiny()
    }
}

fn bench_train(c: &mut Criterion) {
    // As `finetune` does: a step's freed buffers stay in the allocator for the next step.
    idlevit_kernels::keep_freed_memory();
    let n = BATCH * 3 * 64 * 64;
    let images = Tensor::from_vec(
        vec![BATCH, 3, 64, 64],
        (0..n).map(|i| (i % 251) as f32 / 125.0 - 1.0).collect(),
    )
    .expect("images");
    let labels: Vec<usize> = (0..BATCH).map(|i| i % 10).collect();
    let targets = smoothed_targets(&labels, 10, 0.1).expect("targets");
    let mut group = c.benchmark_group("train_deit_tiny_64px");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(15));
    group.throughput(Throughput::Elements(BATCH as u64));
    let variants = [
        ("dense_ce", TokenPolicy::Dense, CutLoss::None),
        (
            "idle_r0.7_cut",
            TokenPolicy::select(PolicyKind::Idle, Schedule::deit(0.7).expect("schedule")),
            CutLoss::Both,
        ),
    ];
    for (name, policy, cut_loss) in variants {
        let mut model = DeiT::random(&config(), 0)
            .expect("model")
            .with_policy(policy)
            .expect("policy");
        let mut optimizer = AdamW::new(0.05);
        let objective = Objective {
            cut_loss,
            cut_weight: 20.0,
            distill_weight: 0.0,
            smoothing: 0.1,
            ..Objective::default()
        };
        group.bench_function(BenchmarkId::new("step", name), |b| {
            b.iter(|| {
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
                .expect("step")
            })
        });
    }
    group.finish();
}

fn bench_train_small(c: &mut Criterion) {
    const SMALL_BATCH: usize = 16;
    let config = DeiTConfig::small();
    let side = config.img_size;
    let n = SMALL_BATCH * 3 * side * side;
    let images = Tensor::from_vec(
        vec![SMALL_BATCH, 3, side, side],
        (0..n).map(|i| (i % 251) as f32 / 125.0 - 1.0).collect(),
    )
    .expect("images");
    let labels: Vec<usize> = (0..SMALL_BATCH).map(|i| i % config.num_classes).collect();
    let targets = smoothed_targets(&labels, config.num_classes, 0.1).expect("targets");
    let teacher = DeiT::random(&config, 1).expect("teacher");
    let mut group = c.benchmark_group("train_deit_small_224px");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(5))
        .measurement_time(Duration::from_secs(60));
    group.throughput(Throughput::Elements(SMALL_BATCH as u64));
    let idle = TokenPolicy::select(PolicyKind::Idle, Schedule::deit(0.7).expect("schedule"));
    let variants = [
        ("dense_ce", TokenPolicy::Dense, CutLoss::None, 0.0, None),
        (
            "idle_r0.7_cut_distill",
            idle,
            CutLoss::Both,
            5.0,
            Some(&teacher),
        ),
    ];
    for (name, policy, cut_loss, distill_weight, teacher) in variants {
        let mut model = DeiT::random(&config, 0)
            .expect("model")
            .with_policy(policy)
            .expect("policy");
        let mut optimizer = AdamW::new(0.05);
        let objective = Objective {
            cut_loss,
            distill_weight,
            ..Objective::default()
        };
        group.bench_function(BenchmarkId::new("step", name), |b| {
            b.iter(|| {
                train_step(
                    &mut model,
                    teacher,
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
                .expect("step")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_train, bench_train_small);
criterion_main!(benches);
