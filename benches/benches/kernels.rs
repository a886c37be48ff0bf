//! Softmax, layer norm, GELU and top-k at DeiT-S sizes: on the whole pool, and per instruction
//! set on one thread.
//!
//! Softmax and GELU run in place on the same buffer every iteration: their cost does not depend
//! on the values (no branches), and skipping a reset copy keeps the copy's memory traffic out
//! of the figure.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use idlevit_kernels::Isa;
use std::hint::black_box;
use std::time::Duration;

const TOKENS: usize = 197;
const WIDTH: usize = 384;
const HEADS: usize = 6;
const BATCH: usize = 32;

fn filled(len: usize, seed: u32) -> Vec<f32> {
    (0..len as u32)
        .map(|i| ((i.wrapping_mul(2_654_435_761) ^ seed) % 1000) as f32 / 250.0 - 2.0)
        .collect()
}

fn bench_kernels(c: &mut Criterion) {
    let threads = rayon::current_num_threads();
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("one-thread pool");
    let pool_id = format!("auto_{threads}t");

    let mut work = filled(TOKENS * TOKENS * HEADS * BATCH, 1);
    let mut group = c.benchmark_group("softmax_197x197x6x32");
    group.throughput(Throughput::Elements(work.len() as u64));
    group.bench_function(&pool_id, |b| {
        b.iter(|| idlevit_kernels::softmax_rows(black_box(&mut work), TOKENS))
    });
    for isa in Isa::supported() {
        group.bench_function(BenchmarkId::new("1t", format!("{isa:?}")), |b| {
            b.iter(|| {
                one.install(|| {
                    idlevit_kernels::softmax_rows_with(isa, black_box(&mut work), TOKENS)
                })
            })
        });
    }
    group.finish();

    let rows = TOKENS * BATCH;
    let x = filled(rows * WIDTH, 2);
    let (gamma, beta) = (filled(WIDTH, 3), filled(WIDTH, 4));
    let mut out = vec![0.0f32; x.len()];
    let mut group = c.benchmark_group("layer_norm_6304x384");
    group.throughput(Throughput::Elements(x.len() as u64));
    group.bench_function(&pool_id, |b| {
        b.iter(|| {
            idlevit_kernels::layer_norm_rows(&mut out, black_box(&x), &gamma, &beta, 1e-6, WIDTH)
        })
    });
    for isa in Isa::supported() {
        group.bench_function(BenchmarkId::new("1t", format!("{isa:?}")), |b| {
            b.iter(|| {
                one.install(|| {
                    idlevit_kernels::layer_norm_rows_with(
                        isa,
                        &mut out,
                        black_box(&x),
                        &gamma,
                        &beta,
                        1e-6,
                        WIDTH,
                    )
                })
            })
        });
    }
    group.finish();

    let mut work = filled(rows * 4 * WIDTH, 5);
    let mut group = c.benchmark_group("gelu_6304x1536");
    group.throughput(Throughput::Elements(work.len() as u64));
    group.bench_function(&pool_id, |b| {
        b.iter(|| idlevit_kernels::gelu(black_box(&mut work)))
    });
    for isa in Isa::supported() {
        group.bench_function(BenchmarkId::new("1t", format!("{isa:?}")), |b| {
            b.iter(|| one.install(|| idlevit_kernels::gelu_with(isa, black_box(&mut work))))
        });
    }
    group.finish();

    let cls_attention = filled(TOKENS - 1, 6);
    let mut group = c.benchmark_group("top_k_196");
    group.throughput(Throughput::Elements(cls_attention.len() as u64));
    group.bench_function("k137", |b| {
        b.iter(|| idlevit_kernels::top_k(black_box(&cls_attention), 137))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = bench_kernels
}
criterion_main!(benches);
