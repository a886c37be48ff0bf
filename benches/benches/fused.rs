//! The fused inference kernels against the unfused layer sequence they replace, at DeiT-S
//! batch 32 (6304 tokens): the MLP half (layer norm, fc1, GELU, fc2, residual), attention
//! with the heads merged (f32 and bf16), the pre-norm qkv projection, and the whole attention
//! half (layer norm, qkv, attention, projection, residual) per image.
//!
//! The unfused side allocates its intermediates per call, as the layer-by-layer path did
//! (`Vec` of the full hidden tensor or attention map), so the ratio includes what the fused
//! kernels save in page faults and memory traffic.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use idlevit_kernels::{
    AttentionHalf, AttentionShape, HeadsRef, MatMut, MatRef, MlpHalf, Norm, PackedBf16, PackedF32,
    PackedWeight, Proj, attention, attention_bf16, attention_half_in_place, gelu, layer_norm_rows,
    linear, linear_packed_f32, matmul, mlp_half_in_place, norm_linear, packed_f32_available,
    softmax_rows,
};
use rayon::prelude::*;
use std::hint::black_box;
use std::time::Duration;

const TOKENS: usize = 197;
const WIDTH: usize = 384;
const HIDDEN: usize = 1536;
const HEADS: usize = 6;
const HEAD_DIM: usize = WIDTH / HEADS;
const BATCH: usize = 32;

fn filled(len: usize, seed: u32) -> Vec<f32> {
    (0..len as u32)
        .map(|i| ((i.wrapping_mul(2_654_435_761) ^ seed) % 1000) as f32 / 25_000.0 - 0.02)
        .collect()
}

fn bench_mlp(c: &mut Criterion) {
    let rows = TOKENS * BATCH;
    let x = filled(rows * WIDTH, 1);
    let (gamma, beta) = (filled(WIDTH, 2), filled(WIDTH, 3));
    let (w1, b1) = (filled(HIDDEN * WIDTH, 4), filled(HIDDEN, 5));
    let (w2, b2) = (filled(WIDTH * HIDDEN, 6), filled(WIDTH, 7));
    let proj = |weight, bias| Proj {
        weight,
        bias: Some(bias),
        packed: None,
    };
    let mlp = MlpHalf {
        norm: Norm {
            gamma: &gamma[..],
            beta: &beta,
            eps: 1e-6,
        },
        fc1: proj(&w1[..], &b1[..]),
        fc2: proj(&w2, &b2),
        branch_scale: 1.0,
        drop_path: 0.0,
    };
    let mut group = c.benchmark_group("mlp_half_6304x384x1536");
    group.throughput(Throughput::Elements(rows as u64));
    let mut fused_x = x.clone();
    group.bench_function("fused", |b| {
        b.iter(|| {
            fused_x.copy_from_slice(&x);
            mlp_half_in_place(black_box(&mut fused_x), &mlp, (WIDTH, HIDDEN)).expect("shapes fit")
        })
    });
    group.bench_function("layer_by_layer", |b| {
        b.iter(|| {
            let mut h = vec![0.0; rows * WIDTH];
            layer_norm_rows(&mut h, black_box(&x), &gamma, &beta, 1e-6, WIDTH);
            let mut hidden = vec![0.0; rows * HIDDEN];
            linear(&mut hidden, &h, &w1, Some(&b1), rows, WIDTH, HIDDEN).expect("shapes fit");
            gelu(&mut hidden);
            let mut branch = vec![0.0; rows * WIDTH];
            linear(&mut branch, &hidden, &w2, Some(&b2), rows, HIDDEN, WIDTH).expect("fit");
            let mut y = x.clone();
            idlevit_kernels::add_assign(&mut y, &branch);
            y
        })
    });
    group.finish();
}

fn bench_attention(c: &mut Criterion) {
    let qkv = filled(BATCH * TOKENS * 3 * WIDTH, 8);
    let third = |part: usize| HeadsRef {
        data: &qkv,
        offset: part * WIDTH,
        tokens: TOKENS,
        strides: [TOKENS * 3 * WIDTH, HEAD_DIM, 3 * WIDTH, 1],
    };
    let shape = AttentionShape {
        batch: BATCH,
        heads: HEADS,
        head_dim: HEAD_DIM,
    };
    let scale = (HEAD_DIM as f32).powf(-0.5);
    let mut group = c.benchmark_group("attention_32x6x197x64");
    group.throughput(Throughput::Elements((BATCH * HEADS) as u64));
    let mut out = vec![0.0; BATCH * TOKENS * WIDTH];
    group.bench_function("fused", |b| {
        b.iter(|| {
            attention(&mut out, third(0), third(1), third(2), shape, scale).expect("shapes fit")
        })
    });
    group.bench_function("fused_bf16", |b| {
        b.iter(|| {
            attention_bf16(&mut out, third(0), third(1), third(2), shape, scale)
                .expect("shapes fit")
        })
    });
    group.bench_function("stored_map", |b| {
        b.iter(|| {
            let matrix = |part: usize, job: usize| {
                let (batch, head) = (job / HEADS, job % HEADS);
                let start = batch * TOKENS * 3 * WIDTH + part * WIDTH + head * HEAD_DIM;
                MatRef {
                    data: &qkv[start..],
                    rows: TOKENS,
                    cols: HEAD_DIM,
                    row_stride: 3 * WIDTH,
                    col_stride: 1,
                }
            };
            let mut logits = vec![0.0; BATCH * HEADS * TOKENS * TOKENS];
            logits
                .par_chunks_mut(TOKENS * TOKENS)
                .enumerate()
                .for_each(|(job, map)| {
                    let c = MatMut::row_major(map, TOKENS, TOKENS);
                    matmul(c, matrix(0, job), matrix(1, job).t(), scale, 0.0).expect("fit");
                });
            softmax_rows(&mut logits, TOKENS);
            let mut heads = vec![0.0; BATCH * HEADS * TOKENS * HEAD_DIM];
            heads
                .par_chunks_mut(TOKENS * HEAD_DIM)
                .zip(logits.par_chunks(TOKENS * TOKENS))
                .enumerate()
                .for_each(|(job, (o, map))| {
                    let c = MatMut::row_major(o, TOKENS, HEAD_DIM);
                    let a = MatRef::row_major(map, TOKENS, TOKENS);
                    matmul(c, a, matrix(2, job), 1.0, 0.0).expect("fit");
                });
            let mut merged = vec![0.0; BATCH * TOKENS * WIDTH];
            for (job, head) in heads.chunks_exact(TOKENS * HEAD_DIM).enumerate() {
                let (batch, h) = (job / HEADS, job % HEADS);
                for (t, row) in head.chunks_exact(HEAD_DIM).enumerate() {
                    let at = (batch * TOKENS + t) * WIDTH + h * HEAD_DIM;
                    merged[at..at + HEAD_DIM].copy_from_slice(row);
                }
            }
            merged
        })
    });
    group.finish();
}

/// The weights of a DeiT-S attention half: `[gamma, beta, qkv, qkv bias, proj, proj bias]`.
fn attention_weights() -> [Vec<f32>; 6] {
    [
        filled(WIDTH, 11),
        filled(WIDTH, 12),
        filled(3 * WIDTH * WIDTH, 13),
        filled(3 * WIDTH, 14),
        filled(WIDTH * WIDTH, 15),
        filled(WIDTH, 16),
    ]
}

fn bench_norm_linear(c: &mut Criterion) {
    if !packed_f32_available() {
        return;
    }
    let rows = TOKENS * BATCH;
    let x = filled(rows * WIDTH, 10);
    let [gamma, beta, w, b, _, _] = attention_weights();
    let packed = PackedF32::pack(&w, 3 * WIDTH, WIDTH).expect("shapes fit");
    let norm = Norm {
        gamma: &gamma[..],
        beta: &beta,
        eps: 1e-6,
    };
    let params = Proj {
        weight: &w[..],
        bias: Some(&b[..]),
        packed: Some(PackedWeight::F32(&packed)),
    };
    let shape = (WIDTH, 3 * WIDTH);
    let mut group = c.benchmark_group("norm_qkv_6304x384x1152");
    group.throughput(Throughput::Elements(rows as u64));
    let mut y = vec![0.0; rows * 3 * WIDTH];
    group.bench_function("fused", |bench| {
        bench.iter(|| norm_linear(&mut y, black_box(&x), &norm, &params, shape).expect("fit"))
    });
    group.bench_function("layer_by_layer", |bench| {
        bench.iter(|| {
            let mut h = vec![0.0; rows * WIDTH];
            layer_norm_rows(&mut h, black_box(&x), &gamma, &beta, 1e-6, WIDTH);
            let mut y = vec![0.0; rows * 3 * WIDTH];
            let cols = 0..3 * WIDTH;
            linear_packed_f32(&mut y, &h, &packed, cols, Some(&b), rows, false).expect("fit");
            y
        })
    });
    group.finish();
}

fn bench_attention_half(c: &mut Criterion) {
    if !packed_f32_available() {
        return;
    }
    let rows = TOKENS * BATCH;
    let x = filled(rows * WIDTH, 17);
    let [gamma, beta, w_qkv, b_qkv, w_proj, b_proj] = attention_weights();
    let packed = (
        PackedF32::pack(&w_qkv, 3 * WIDTH, WIDTH).expect("shapes fit"),
        PackedF32::pack(&w_proj, WIDTH, WIDTH).expect("shapes fit"),
    );
    let bf16 = (
        PackedBf16::pack(&w_qkv, 3 * WIDTH, WIDTH).expect("shapes fit"),
        PackedBf16::pack(&w_proj, WIDTH, WIDTH).expect("shapes fit"),
    );
    let proj = |weight, bias, packed| Proj {
        weight,
        bias: Some(bias),
        packed: Some(packed),
    };
    let half = AttentionHalf {
        norm: Norm {
            gamma: &gamma[..],
            beta: &beta,
            eps: 1e-6,
        },
        qkv: proj(&w_qkv[..], &b_qkv[..], PackedWeight::F32(&packed.0)),
        proj: proj(&w_proj, &b_proj, PackedWeight::F32(&packed.1)),
        heads: HEADS,
        scale: (HEAD_DIM as f32).powf(-0.5),
        bf16_attention: false,
        branch_scale: 1.0,
        drop_path: 0.0,
    };
    let half_bf16 = AttentionHalf {
        qkv: proj(&w_qkv, &b_qkv, PackedWeight::Bf16(&bf16.0)),
        proj: proj(&w_proj, &b_proj, PackedWeight::Bf16(&bf16.1)),
        bf16_attention: true,
        ..half
    };
    let shape = (TOKENS, HEAD_DIM);
    let mut group = c.benchmark_group("attention_half_32x197x384");
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut y = x.clone();
    group.bench_function("fused", |bench| {
        bench.iter(|| {
            y.copy_from_slice(&x);
            attention_half_in_place(black_box(&mut y), &half, shape).expect("shapes fit")
        })
    });
    group.bench_function("fused_bf16", |bench| {
        bench.iter(|| {
            y.copy_from_slice(&x);
            attention_half_in_place(black_box(&mut y), &half_bf16, shape).expect("fit")
        })
    });
    group.bench_function("operation_by_operation", |bench| {
        bench.iter(|| {
            let mut qkv = vec![0.0; rows * 3 * WIDTH];
            let (norm, qkv_proj) = (&half.norm, &half.qkv);
            norm_linear(&mut qkv, black_box(&x), norm, qkv_proj, (WIDTH, 3 * WIDTH)).expect("fit");
            let third = |part: usize| HeadsRef {
                data: &qkv,
                offset: part * WIDTH,
                tokens: TOKENS,
                strides: [TOKENS * 3 * WIDTH, HEAD_DIM, 3 * WIDTH, 1],
            };
            let shape = AttentionShape {
                batch: BATCH,
                heads: HEADS,
                head_dim: HEAD_DIM,
            };
            let mut mixed = vec![0.0; rows * WIDTH];
            attention(&mut mixed, third(0), third(1), third(2), shape, half.scale)
                .expect("shapes fit");
            let mut y = x.clone();
            let cols = 0..WIDTH;
            linear_packed_f32(&mut y, &mixed, &packed.1, cols, Some(&b_proj), rows, true)
                .expect("shapes fit");
            y
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = bench_mlp, bench_attention, bench_norm_linear, bench_attention_half
}
criterion_main!(benches);
