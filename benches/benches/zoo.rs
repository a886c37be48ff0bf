//! The families after DeiT: LV-ViT-S and PVT-v2-b2 at batch 1, dense and idle at r = 0.7, and
//! the convolutions they add (LV-ViT's 3x3 stem convolution, PVT's depthwise MLP convolution).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use idlevit_nn::{Backend, Conv2dSpec, Eager};
use idlevit_tensor::Tensor;
use idlevit_zoo::{PolicyKind, TokenPolicy, ZooConfig, ZooModel};
use std::hint::black_box;
use std::time::Duration;

/// Deterministic values in [-1, 1) of `shape`.
fn values(shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_vec(
        shape.to_vec(),
        (0..n).map(|i| (i % 255) as f32 / 128.0 - 1.0).collect(),
    )
    .expect("tensor")
}

fn bench_models(c: &mut Criterion) {
    let images = values(&[1, 3, 224, 224]);
    for name in ["lvvit_s", "pvt_v2_b2"] {
        let config = ZooConfig::named(name).expect("a zoo model");
        let dense = ZooModel::random(&config, 0).expect("model builds");
        let schedule = config.schedule(PolicyKind::Idle, 0.7).expect("schedule");
        let idle = dense
            .clone()
            .with_policy(TokenPolicy::select(PolicyKind::Idle, schedule))
            .expect("idle policy");
        let mut group = c.benchmark_group(name);
        group
            .sample_size(10)
            .warm_up_time(Duration::from_secs(2))
            .measurement_time(Duration::from_secs(8))
            .throughput(Throughput::Elements(1));
        for (label, model) in [("dense", &dense), ("idle_r0.7", &idle)] {
            group.bench_with_input(BenchmarkId::new(label, 1), &images, |b, images| {
                b.iter(|| model.forward(&Eager, black_box(images)).expect("forward"))
            });
        }
        group.finish();
    }
}

fn bench_convolutions(c: &mut Criterion) {
    let mut group = c.benchmark_group("conv2d");
    group.sample_size(10).warm_up_time(Duration::from_secs(1));
    let cases = [
        (
            "lvvit_stem_3x3",
            [1, 64, 112, 112],
            [64, 64, 3, 3],
            Conv2dSpec::new(1, 1),
        ),
        (
            "pvt_b2_depthwise_3x3",
            [1, 1024, 28, 28],
            [1024, 1, 3, 3],
            Conv2dSpec::new(1, 1).with_groups(1024),
        ),
    ];
    for (label, x, w, spec) in cases {
        let (x, w) = (values(&x), values(&w));
        let bias = values(&[w.shape()[0]]);
        group.bench_function(label, |b| {
            b.iter(|| {
                Eager
                    .conv2d(black_box(&x), &w, Some(&bias), spec)
                    .expect("conv2d")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_models, bench_convolutions);
criterion_main!(benches);
