//! Whole-model throughput: dense DeiT-S at batch 1 and 32 with the pool's threads.
//!
//! Compare with timm on the same machine and thread count:
//! `python ../shared/peers/throughput.py --models deit_small_patch16_224 --batches 1,32`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use idlevit_nn::Eager;
use idlevit_tensor::Tensor;
use idlevit_zoo::{DeiT, DeiTConfig};
use std::hint::black_box;
use std::time::Duration;

fn bench_deit(c: &mut Criterion) {
    let model = DeiT::random(&DeiTConfig::small(), 0).expect("DeiT-S builds");
    let mut group = c.benchmark_group("deit_small");
    group.sample_size(10).warm_up_time(Duration::from_secs(2));
    for batch in [1usize, 32] {
        let n = batch * 3 * 224 * 224;
        let images = Tensor::from_vec(
            vec![batch, 3, 224, 224],
            (0..n).map(|i| (i % 255) as f32 / 128.0 - 1.0).collect(),
        )
        .expect("image batch");
        group.throughput(Throughput::Elements(batch as u64));
        group.measurement_time(Duration::from_secs(if batch == 1 { 5 } else { 25 }));
        group.bench_with_input(BenchmarkId::new("dense", batch), &images, |b, images| {
            b.iter(|| model.forward(&Eager, black_box(images)).expect("forward"))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_deit);
criterion_main!(benches);
