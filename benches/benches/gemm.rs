//! `linear` at DeiT-S's projection shapes, against single-thread matrixmultiply as a ceiling.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::Duration;

/// DeiT-S's linear layers as (name, in features K, out features N).
const LAYERS: [(&str, usize, usize); 4] = [
    ("qkv", 384, 1152),
    ("proj", 384, 384),
    ("fc1", 384, 1536),
    ("fc2", 1536, 384),
];
const TOKENS: usize = 197;

fn filled(len: usize, seed: u32) -> Vec<f32> {
    (0..len as u32)
        .map(|i| ((i.wrapping_mul(2_654_435_761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

fn bench_gemm(c: &mut Criterion) {
    let threads = rayon::current_num_threads();
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("one-thread pool");
    let mut group = c.benchmark_group("gemm");
    for batch in [1usize, 32] {
        let m = TOKENS * batch;
        for (name, k, n) in LAYERS {
            let x = filled(m * k, 1);
            let w = filled(n * k, 2);
            let bias = filled(n, 3);
            let mut y = vec![0.0f32; m * n];
            group.throughput(Throughput::Elements((2 * m * k * n) as u64));
            let shape = format!("{name}/b{batch}");
            group.bench_function(BenchmarkId::new("linear_1t", &shape), |bench| {
                bench.iter(|| {
                    one.install(|| {
                        idlevit_kernels::linear(&mut y, black_box(&x), &w, Some(&bias), m, k, n)
                    })
                    .expect("linear")
                })
            });
            group.bench_function(
                BenchmarkId::new(format!("linear_{threads}t"), &shape),
                |bench| {
                    bench.iter(|| {
                        idlevit_kernels::linear(&mut y, black_box(&x), &w, Some(&bias), m, k, n)
                            .expect("linear")
                    })
                },
            );
            if idlevit_kernels::packed_f32_available() {
                let packed = idlevit_kernels::PackedF32::pack(&w, n, k).expect("pack");
                let packed_product = |y: &mut [f32]| {
                    let x = black_box(&x);
                    idlevit_kernels::linear_packed_f32(y, x, &packed, 0..n, Some(&bias), m, false)
                        .expect("packed")
                };
                group.bench_function(BenchmarkId::new("packed_1t", &shape), |bench| {
                    bench.iter(|| one.install(|| packed_product(&mut y)))
                });
                group.bench_function(
                    BenchmarkId::new(format!("packed_{threads}t"), &shape),
                    |bench| bench.iter(|| packed_product(&mut y)),
                );
                // The AVX2 kernel too where the CPU's best is AVX-512, to compare the two.
                let avx2 = packed.clone().with_avx2_kernel();
                let avx2_product = |y: &mut [f32]| {
                    let x = black_box(&x);
                    idlevit_kernels::linear_packed_f32(y, x, &avx2, 0..n, Some(&bias), m, false)
                };
                if avx2_product(&mut y).is_ok() {
                    group.bench_function(BenchmarkId::new("packed_avx2_1t", &shape), |bench| {
                        bench.iter(|| one.install(|| avx2_product(&mut y)).expect("packed avx2"))
                    });
                    group.bench_function(
                        BenchmarkId::new(format!("packed_avx2_{threads}t"), &shape),
                        |bench| bench.iter(|| avx2_product(&mut y).expect("packed avx2")),
                    );
                }
            }
            group.bench_function(BenchmarkId::new("matrixmultiply_1t", &shape), |bench| {
                bench.iter(|| {
                    // SAFETY: x is m x k row-major, w is n x k row-major read as its k x n
                    // transpose, y is m x n row-major; all three slices have exactly those sizes.
                    unsafe {
                        matrixmultiply::sgemm(
                            m,
                            k,
                            n,
                            1.0,
                            black_box(&x).as_ptr(),
                            k as isize,
                            1,
                            w.as_ptr(),
                            1,
                            k as isize,
                            0.0,
                            y.as_mut_ptr(),
                            n as isize,
                            1,
                        )
                    }
                })
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = bench_gemm
}
criterion_main!(benches);
