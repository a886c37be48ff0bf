//! `linear_bf16` against the f32 `linear` at DeiT-S's projection shapes (batch 32), on
//! rayon's default pool; throughput is in FLOP/s.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use idlevit_kernels::{PackedBf16, linear, linear_bf16};
use std::hint::black_box;
use std::time::Duration;

/// DeiT-S's linear layers as (name, in features K, out features N).
const LAYERS: [(&str, usize, usize); 4] = [
    ("qkv", 384, 1152),
    ("proj", 384, 384),
    ("fc1", 384, 1536),
    ("fc2", 1536, 384),
];
/// 32 images of 197 tokens.
const ROWS: usize = 32 * 197;

fn filled(len: usize, seed: u32) -> Vec<f32> {
    (0..len as u32)
        .map(|i| ((i.wrapping_mul(2_654_435_761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

fn bench_bf16(c: &mut Criterion) {
    let mut group = c.benchmark_group("bf16");
    let m = ROWS;
    for (name, k, n) in LAYERS {
        let x = filled(m * k, 1);
        let w = filled(n * k, 2);
        let bias = filled(n, 3);
        let packed = PackedBf16::pack(&w, n, k).expect("pack");
        let mut y = vec![0.0f32; m * n];
        group.throughput(Throughput::Elements((2 * m * k * n) as u64));
        group.bench_function(BenchmarkId::new("f32", name), |bench| {
            bench.iter(|| linear(&mut y, black_box(&x), &w, Some(&bias), m, k, n).expect("linear"))
        });
        group.bench_function(BenchmarkId::new("bf16", name), |bench| {
            bench.iter(|| {
                linear_bf16(&mut y, black_box(&x), &packed, Some(&bias), m).expect("linear_bf16")
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = bench_bf16
}
criterion_main!(benches);
