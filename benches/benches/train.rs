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

fn config() -> DeiTConfig {
    DeiTConfig {
        img_size: 64,
        patch_size: 8,
        num_classes: 10,
        ..DeiTConfig::tiny()
    }
}

/// One benchmarked step: its name, token policy, cut-loss terms and distillation weight (a
/// dense teacher of the same config distils when it is non-zero).
struct Variant {
    name: &'static str,
    policy: TokenPolicy,
    cut_loss: CutLoss,
    distill_weight: f32,
}

/// Times one AdamW step of each variant on `batch` deterministic images of `config`.
fn bench_steps(
    c: &mut Criterion,
    group_name: &str,
    config: &DeiTConfig,
    batch: usize,
    (warm_up, measure): (u64, u64),
    variants: Vec<Variant>,
) {
    // As `finetune` does: a step's freed buffers stay in the allocator for the next step.
    idlevit_kernels::keep_freed_memory();
    let side = config.img_size;
    let n = batch * 3 * side * side;
    let images = Tensor::from_vec(
        vec![batch, 3, side, side],
        (0..n).map(|i| (i % 251) as f32 / 125.0 - 1.0).collect(),
    )
    .expect("images");
    let labels: Vec<usize> = (0..batch).map(|i| i % config.num_classes).collect();
    let targets = smoothed_targets(&labels, config.num_classes, 0.1).expect("targets");
    let teacher = DeiT::random(config, 1).expect("teacher");
    let mut group = c.benchmark_group(group_name);
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(warm_up))
        .measurement_time(Duration::from_secs(measure));
    group.throughput(Throughput::Elements(batch as u64));
    for variant in variants {
        let mut model = DeiT::random(config, 0)
            .expect("model")
            .with_policy(variant.policy)
            .expect("policy");
        let mut optimizer = AdamW::new(0.05);
        let objective = Objective {
            cut_loss: variant.cut_loss,
            distill_weight: variant.distill_weight,
            ..Objective::default()
        };
        let teacher = (variant.distill_weight != 0.0).then_some(&teacher);
        group.bench_function(BenchmarkId::new("step", variant.name), |b| {
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

fn idle_r07() -> TokenPolicy {
    TokenPolicy::select(PolicyKind::Idle, Schedule::deit(0.7).expect("schedule"))
}

fn bench_train(c: &mut Criterion) {
    let variants = vec![
        Variant {
            name: "dense_ce",
            policy: TokenPolicy::Dense,
            cut_loss: CutLoss::None,
            distill_weight: 0.0,
        },
        Variant {
            name: "idle_r0.7_cut",
            policy: idle_r07(),
            cut_loss: CutLoss::Both,
            distill_weight: 0.0,
        },
    ];
    bench_steps(c, "train_deit_tiny_64px", &config(), 32, (2, 15), variants);
}

fn bench_train_small(c: &mut Criterion) {
    let variants = vec![
        Variant {
            name: "dense_ce",
            policy: TokenPolicy::Dense,
            cut_loss: CutLoss::None,
            distill_weight: 0.0,
        },
        Variant {
            name: "idle_r0.7_cut_distill",
            policy: idle_r07(),
            cut_loss: CutLoss::Both,
            distill_weight: 5.0,
        },
    ];
    let config = DeiTConfig::small();
    bench_steps(c, "train_deit_small_224px", &config, 16, (5, 60), variants);
}

criterion_group!(benches, bench_train, bench_train_small);
criterion_main!(benches);
