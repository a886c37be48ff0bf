use super::attention::attention_in;
use super::*;
use crate::bf16::Bf16Kernel;
use crate::reference;
use crate::testutil::{f32_vec, pool};
use proptest::prelude::*;

/// `x + scale * fc2(gelu(fc1(norm(x))))` by the f64 reference kernels.
fn reference_mlp_half(x: &[f32], mlp: &MlpHalf<'_>, (dim, hidden): (usize, usize)) -> Vec<f32> {
    let rows = x.len() / dim;
    let mut normed = vec![0.0; x.len()];
    let Norm { gamma, beta, eps } = mlp.norm;
    reference::layer_norm_rows(&mut normed, x, gamma, beta, eps, dim);
    let mut act = vec![0.0; rows * hidden];
    let (w1, w2) = (mlp.fc1.weight, mlp.fc2.weight);
    let w1 = MatRef::row_major(w1, hidden, dim).t();
    let normed = MatRef::row_major(&normed, rows, dim);
    reference::matmul(
        MatMut::row_major(&mut act, rows, hidden),
        normed,
        w1,
        1.0,
        0.0,
    )
    .unwrap();
    if let Some(b1) = mlp.fc1.bias {
        act.chunks_exact_mut(hidden)
            .for_each(|row| row.iter_mut().zip(b1).for_each(|(v, b)| *v += b));
    }
    reference::gelu(&mut act);
    let mut branch = vec![0.0; x.len()];
    let w2 = MatRef::row_major(w2, dim, hidden).t();
    let act = MatRef::row_major(&act, rows, hidden);
    reference::matmul(MatMut::row_major(&mut branch, rows, dim), act, w2, 1.0, 0.0).unwrap();
    let bias = mlp.fc2.bias;
    x.iter()
        .zip(&branch)
        .enumerate()
        .map(|(i, (x, f))| x + mlp.branch_scale * (f + bias.map_or(0.0, |b| b[i % dim])))
        .collect()
}

/// Seeded `[x, gamma, beta, w1, b1, w2, b2]` for an MLP half of `rows x dim` tokens.
fn mlp_values(seed: u64, rows: usize, dim: usize, hidden: usize) -> [Vec<f32>; 7] {
    let lens = [
        rows * dim,
        dim,
        dim,
        hidden * dim,
        hidden,
        dim * hidden,
        dim,
    ];
    std::array::from_fn(|i| f32_vec(seed ^ i as u64, lens[i]))
}

fn assert_close(found: &[f32], expected: &[f32], tol: f32) {
    assert_eq!(found.len(), expected.len());
    for (i, (f, e)) in found.iter().zip(expected).enumerate() {
        assert!(
            (f - e).abs() <= tol * (1.0 + e.abs()),
            "element {i}: {f} against {e}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Any number of rows (across the chunk size), widths, biases and thread counts give the
    /// unfused layers' result.
    #[test]
    fn mlp_half_matches_the_unfused_layers(
        rows in 1usize..600,
        dim in 1usize..24,
        hidden in 1usize..40,
        biases in (any::<bool>(), any::<bool>()),
        lam_two in any::<bool>(),
        packed in any::<bool>(),
        threads in 1usize..6,
        seed in any::<u64>(),
    ) {
        let [x, gamma, beta, w1, b1, w2, b2] = mlp_values(seed, rows, dim, hidden);
        let mlp: MlpHalf<'_> = MlpHalf {
            norm: Norm { gamma: &gamma, beta: &beta, eps: 1e-6 },
            fc1: Proj { weight: &w1, bias: biases.0.then_some(&b1[..]), packed: None },
            fc2: Proj { weight: &w2, bias: biases.1.then_some(&b2[..]), packed: None },
            branch_scale: if lam_two { 0.5 } else { 1.0 },
            drop_path: 0.0,
        };
        let expected = reference_mlp_half(&x, &mlp, (dim, hidden));
        // The same weights packed once for the f32 kernel, where the CPU runs it.
        let packed = packed && crate::packed_f32_available();
        let (p1, p2) = (PackedF32::pack(&w1, hidden, dim).unwrap(), PackedF32::pack(&w2, dim, hidden).unwrap());
        let run = if packed {
            MlpHalf {
                fc1: Proj { packed: Some(PackedWeight::F32(&p1)), ..mlp.fc1 },
                fc2: Proj { packed: Some(PackedWeight::F32(&p2)), ..mlp.fc2 },
                ..mlp
            }
        } else {
            mlp
        };
        let mut found = x.clone();
        pool(threads).install(|| mlp_half_in_place(&mut found, &run, (dim, hidden))).unwrap();
        assert_close(&found, &expected, 2e-5);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// With packed bf16 weights the fused half equals the bf16 layers run one by one, with
    /// an unscaled branch (fc2 accumulates onto x) and a scaled one (LV-ViT's).
    #[test]
    fn bf16_mlp_half_matches_the_bf16_layers(
        rows in 1usize..600,
        dim in 1usize..24,
        hidden in 1usize..40,
        threads in 1usize..6,
        branch_scale in prop_oneof![Just(1.0f32), Just(0.5f32)],
        seed in any::<u64>(),
    ) {
        let [x, gamma, beta, w1, b1, w2, b2] = mlp_values(seed, rows, dim, hidden);
        let packed1 = PackedBf16::pack(&w1, hidden, dim).unwrap();
        let packed2 = PackedBf16::pack(&w2, dim, hidden).unwrap();
        let mlp: MlpHalf<'_> = MlpHalf {
            norm: Norm { gamma: &gamma, beta: &beta, eps: 1e-5 },
            fc1: Proj { weight: &w1, bias: Some(&b1), packed: Some(PackedWeight::Bf16(&packed1)) },
            fc2: Proj { weight: &w2, bias: Some(&b2), packed: Some(PackedWeight::Bf16(&packed2)) },
            branch_scale,
            drop_path: 0.0,
        };
        let mut normed = vec![0.0; rows * dim];
        crate::layer_norm_rows(&mut normed, &x, &gamma, &beta, 1e-5, dim);
        let mut act = vec![0.0; rows * hidden];
        crate::linear_bf16(&mut act, &normed, &packed1, Some(&b1), rows).unwrap();
        crate::gelu(&mut act);
        let mut branch = vec![0.0; rows * dim];
        crate::linear_bf16(&mut branch, &act, &packed2, Some(&b2), rows).unwrap();
        let expected: Vec<f32> =
            x.iter().zip(&branch).map(|(x, f)| x + branch_scale * f).collect();
        let mut found = x.clone();
        pool(threads).install(|| mlp_half_in_place(&mut found, &mlp, (dim, hidden))).unwrap();
        assert_close(&found, &expected, 1e-5);
    }
}

#[test]
fn mlp_half_refuses_mismatched_buffers() {
    let ones = vec![1.0; 64];
    let proj = |weight, bias| Proj {
        weight,
        bias: Some(bias),
        packed: None,
    };
    let mlp = MlpHalf {
        norm: Norm {
            gamma: &ones[..4],
            beta: &ones[..4],
            eps: 1e-6,
        },
        fc1: proj(&ones[..32], &ones[..8]),
        fc2: proj(&ones[..32], &ones[..4]),
        branch_scale: 1.0,
        drop_path: 0.0,
    };
    let mut x = vec![0.5; 12];
    assert!(mlp_half_in_place(&mut x, &mlp, (4, 8)).is_ok());
    let cases = [
        ("x", MlpHalf { ..mlp }, 10, 4),
        (
            "fc2 weight",
            MlpHalf {
                fc2: proj(&ones[..31], &ones[..4]),
                ..mlp
            },
            12,
            4,
        ),
        (
            "fc1 bias",
            MlpHalf {
                fc1: proj(&ones[..32], &ones[..7]),
                ..mlp
            },
            12,
            4,
        ),
        (
            "norm gamma",
            MlpHalf {
                norm: Norm {
                    gamma: &ones[..5],
                    ..mlp.norm
                },
                ..mlp
            },
            12,
            4,
        ),
        ("fc1 weight", MlpHalf { ..mlp }, 12, 0),
    ];
    for (operand, bad, len, dim) in cases {
        let mut x = vec![0.5; len];
        let err = mlp_half_in_place(&mut x, &bad, (dim, 8)).unwrap_err();
        assert!(err.to_string().contains(operand), "{operand}: {err}");
        assert!(x.iter().all(|&v| v == 0.5), "{operand}: x was written");
    }
}

/// Random attention operands: q, k and v as thirds of a fused qkv tensor
/// `(batch, tokens, 3, heads, d)`, or (for fewer queries than keys) q from its own row-major
/// `(batch, nq, heads * d)` tensor.
struct AttentionOperands {
    shape: AttentionShape,
    tokens: usize,
    qkv: Vec<f32>,
    own_q: Option<(usize, Vec<f32>)>,
}

impl AttentionOperands {
    fn random(shape: AttentionShape, tokens: usize, queries: Option<usize>, seed: u64) -> Self {
        let width = shape.heads * shape.head_dim;
        Self {
            shape,
            tokens,
            qkv: f32_vec(seed, shape.batch * tokens * 3 * width),
            own_q: queries.map(|nq| (nq, f32_vec(seed ^ 7, shape.batch * nq * width))),
        }
    }

    /// q, k and v as strided per-head views.
    fn views(&self) -> [HeadsRef<'_>; 3] {
        let (d, tokens) = (self.shape.head_dim, self.tokens);
        let width = self.shape.heads * d;
        let fused = |part: usize| HeadsRef {
            data: &self.qkv,
            offset: part * width,
            tokens,
            strides: [tokens * 3 * width, d, 3 * width, 1],
        };
        let q = match &self.own_q {
            Some((nq, data)) => HeadsRef {
                data,
                offset: 0,
                tokens: *nq,
                strides: [nq * width, d, width, 1],
            },
            None => fused(0),
        };
        [q, fused(1), fused(2)]
    }
}

/// Attention of image `b`, head `h` by the f64 reference kernels, `(nq, d)` row-major.
fn reference_head(q: MatRef<'_>, k: MatRef<'_>, v: MatRef<'_>, scale: f32) -> Vec<f32> {
    let (nq, nk, d) = (q.rows, k.rows, v.cols);
    let mut scores = vec![0.0; nq * nk];
    reference::matmul(MatMut::row_major(&mut scores, nq, nk), q, k.t(), scale, 0.0).unwrap();
    reference::softmax_rows(&mut scores, nk);
    let mut out = vec![0.0; nq * d];
    let scores = MatRef::row_major(&scores, nq, nk);
    reference::matmul(MatMut::row_major(&mut out, nq, d), scores, v, 1.0, 0.0).unwrap();
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// q, k and v as thirds of a fused qkv tensor `(batch, tokens, 3, heads, d)`, or (for
    /// fewer queries than keys) q from its own row-major `(batch, nq, heads * d)` tensor.
    #[test]
    fn attention_matches_the_reference_per_head(
        batch in 1usize..4,
        heads in 1usize..4,
        head_dim in 1usize..9,
        tokens in 1usize..40,
        queries in proptest::option::of(1usize..40),
        threads in 1usize..6,
        seed in any::<u64>(),
    ) {
        let shape = AttentionShape { batch, heads, head_dim };
        let operands = AttentionOperands::random(shape, tokens, queries, seed);
        let [q, k, v] = operands.views();
        let width = heads * head_dim;
        let scale = (head_dim as f32).powf(-0.5);
        let mut out = vec![f32::NAN; batch * q.tokens * width];
        pool(threads).install(|| attention(&mut out, q, k, v, shape, scale)).unwrap();
        for b in 0..batch {
            for h in 0..heads {
                let expected = reference_head(
                    q.matrix(b, h, head_dim),
                    k.matrix(b, h, head_dim),
                    v.matrix(b, h, head_dim),
                    scale,
                );
                for i in 0..q.tokens {
                    let start = (b * q.tokens + i) * width + h * head_dim;
                    let found = &out[start..start + head_dim];
                    assert_close(found, &expected[i * head_dim..(i + 1) * head_dim], 1e-5);
                }
            }
        }
    }
}

#[test]
fn attention_refuses_views_past_their_slice_and_wrong_outputs() {
    let data = vec![0.25; 2 * 5 * 8];
    let view = HeadsRef {
        data: &data,
        offset: 0,
        tokens: 5,
        strides: [40, 4, 8, 1],
    };
    let shape = AttentionShape {
        batch: 2,
        heads: 2,
        head_dim: 4,
    };
    let mut out = vec![0.0; 2 * 5 * 8];
    assert!(attention(&mut out, view, view, view, shape, 0.5).is_ok());
    assert!((out[0] - 0.25).abs() < 1e-6);
    let short = HeadsRef {
        data: &data[..70],
        ..view
    };
    assert!(attention(&mut out, view, short, view, shape, 0.5).is_err());
    let mut wrong = vec![0.0; 79];
    let err = attention(&mut wrong, view, view, view, shape, 0.5).unwrap_err();
    assert!(err.to_string().contains("out"), "{err}");
    let fewer = HeadsRef { tokens: 4, ..view };
    assert!(attention(&mut out, view, view, fewer, shape, 0.5).is_err());
}

/// Element `(r, c)` of a view.
fn at(m: MatRef<'_>, r: usize, c: usize) -> f32 {
    m.data[r * m.row_stride + c * m.col_stride]
}

/// One head in f64 on the operands bf16 attention sees (`scale · q`, `k`, `v` and the
/// softmax weights rounded to bf16): the output `(nq, d)` and, per output, `Σ_j p_ij |v_jc|`,
/// the size its rounding error scales with.
fn reference_head_bf16(
    q: MatRef<'_>,
    k: MatRef<'_>,
    v: MatRef<'_>,
    scale: f32,
) -> (Vec<f64>, Vec<f64>) {
    let round = |x: f32| f64::from(crate::from_bf16(crate::to_bf16(x)));
    let (nq, nk, d) = (q.rows, k.rows, q.cols);
    let (mut out, mut size) = (vec![0.0; nq * d], vec![0.0; nq * d]);
    for i in 0..nq {
        let scores: Vec<f64> = (0..nk)
            .map(|j| {
                (0..d)
                    .map(|c| round(scale * at(q, i, c)) * round(at(k, j, c)))
                    .sum()
            })
            .collect();
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let total: f64 = exps.iter().sum();
        for (j, e) in exps.iter().enumerate() {
            let p = e / total;
            for c in 0..d {
                let value = round(at(v, j, c));
                out[i * d + c] += round(p as f32) * value;
                size[i * d + c] += p * value.abs();
            }
        }
    }
    (out, size)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// bf16 attention, with every kernel this CPU runs, equals attention on the rounded
    /// operands within one bf16 step of each weight; shapes cover several key panels and
    /// row groups, odd widths, fewer queries than keys and strided heads.
    #[test]
    fn bf16_attention_matches_the_rounded_reference(
        batch in 1usize..3,
        heads in 1usize..3,
        head_dim in 1usize..70,
        tokens in 1usize..80,
        queries in proptest::option::of(1usize..40),
        threads in 1usize..3,
        seed in any::<u64>(),
    ) {
        let shape = AttentionShape { batch, heads, head_dim };
        let operands = AttentionOperands::random(shape, tokens, queries, seed);
        let [q, k, v] = operands.views();
        let width = heads * head_dim;
        let scale = (head_dim as f32).powf(-0.5);
        for kernel in [
            Bf16Kernel::Portable,
            Bf16Kernel::Avx512Bf16,
            Bf16Kernel::Amx,
            Bf16Kernel::AmxModel,
        ] {
            if !kernel.is_supported() {
                continue;
            }
            let mut out = vec![f32::NAN; batch * q.tokens * width];
            pool(threads)
                .install(|| attention_in(&mut out, q, k, v, shape, scale, Some(kernel)))
                .unwrap();
            for b in 0..batch {
                for h in 0..heads {
                    let (expected, size) = reference_head_bf16(
                        q.matrix(b, h, head_dim),
                        k.matrix(b, h, head_dim),
                        v.matrix(b, h, head_dim),
                        scale,
                    );
                    for i in 0..q.tokens {
                        for c in 0..head_dim {
                            let found = f64::from(out[(b * q.tokens + i) * width + h * head_dim + c]);
                            let (want, size) = (expected[i * head_dim + c], size[i * head_dim + c]);
                            let tol = size / 128.0 + 1e-6;
                            prop_assert!(
                                (found - want).abs() <= tol,
                                "{kernel:?} b{b} h{h} ({i}, {c}): {found} against {want} (tolerance {tol})"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn bf16_attention_refuses_views_past_their_slice() {
    let data = vec![0.25; 2 * 5 * 8];
    let view = HeadsRef {
        data: &data,
        offset: 0,
        tokens: 5,
        strides: [40, 4, 8, 1],
    };
    let shape = AttentionShape {
        batch: 2,
        heads: 2,
        head_dim: 4,
    };
    let mut out = vec![0.0; 2 * 5 * 8];
    assert!(attention_bf16(&mut out, view, view, view, shape, 0.5).is_ok());
    // Five weights of bf16(0.2) sum to 0.99976.
    assert!((out[0] - 0.25).abs() < 1e-3, "{}", out[0]);
    let short = HeadsRef {
        data: &data[..70],
        ..view
    };
    assert!(attention_bf16(&mut out, view, short, view, shape, 0.5).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// The fused pre-norm projection equals layer norm then the product, with f32, packed f32
    /// and bf16 weights, whole chunks and tails, on 1-3 threads.
    #[test]
    fn norm_linear_matches_the_layers(
        rows in 1usize..600,
        dim in 1usize..24,
        out in 1usize..40,
        threads in 1usize..6,
        with_bias in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let [x, gamma, beta, w, b, _, _] = mlp_values(seed, rows, dim, out);
        let mut normed = vec![0.0; rows * dim];
        reference::layer_norm_rows(&mut normed, &x, &gamma, &beta, 1e-6, dim);
        let mut expected = vec![0.0; rows * out];
        reference::matmul(
            MatMut::row_major(&mut expected, rows, out),
            MatRef::row_major(&normed, rows, dim),
            MatRef::row_major(&w, out, dim).t(),
            1.0,
            0.0,
        )
        .unwrap();
        if with_bias {
            for row in expected.chunks_exact_mut(out) {
                row.iter_mut().zip(&b).for_each(|(e, b)| *e += b);
            }
        }
        let packed = PackedF32::pack(&w, out, dim).unwrap();
        let norm = Norm { gamma: &gamma[..], beta: &beta, eps: 1e-6 };
        let params = Proj { weight: &w[..], bias: with_bias.then_some(&b[..]), packed: None };
        let mut weights = vec![None];
        if crate::packed_f32_available() {
            weights.push(Some(PackedWeight::F32(&packed)));
        }
        for packed in weights {
            let mut found = vec![f32::NAN; rows * out];
            let p = Proj { packed, ..params };
            pool(threads).install(|| norm_linear(&mut found, &x, &norm, &p, (dim, out))).unwrap();
            assert_close(&found, &expected, 2e-5);
        }
        // bf16: the normalised rows rounded like the bf16 product rounds them.
        let bf16 = PackedBf16::pack(&w, out, dim).unwrap();
        let mut by_layers = vec![0.0; rows * out];
        let mut fused_normed = vec![0.0; rows * dim];
        crate::layer_norm_rows(&mut fused_normed, &x, &gamma, &beta, 1e-6, dim);
        crate::linear_bf16(&mut by_layers, &fused_normed, &bf16, params.bias, rows).unwrap();
        let mut found = vec![f32::NAN; rows * out];
        let p = Proj { packed: Some(PackedWeight::Bf16(&bf16)), ..params };
        pool(threads).install(|| norm_linear(&mut found, &x, &norm, &p, (dim, out))).unwrap();
        assert_close(&found, &by_layers, 1e-5);
    }
}

#[test]
fn norm_linear_refuses_mismatched_buffers() {
    let ones = vec![1.0; 64];
    let norm = Norm {
        gamma: &ones[..4],
        beta: &ones[..4],
        eps: 1e-6,
    };
    let p = Proj {
        weight: &ones[..24],
        bias: Some(&ones[..6]),
        packed: None,
    };
    let x = vec![0.5; 8];
    let mut y = vec![0.0; 12];
    assert!(norm_linear(&mut y, &x, &norm, &p, (4, 6)).is_ok());
    for (operand, bad_norm, bad, y_len) in [
        ("y", norm, p, 11),
        (
            "bias",
            norm,
            Proj {
                bias: Some(&ones[..5]),
                ..p
            },
            12,
        ),
        (
            "weight",
            norm,
            Proj {
                weight: &ones[..23],
                ..p
            },
            12,
        ),
        (
            "norm beta",
            Norm {
                beta: &ones[..3],
                ..norm
            },
            p,
            12,
        ),
    ] {
        let mut y = vec![7.0; y_len];
        let err = norm_linear(&mut y, &x, &bad_norm, &bad, (4, 6)).unwrap_err();
        assert!(err.to_string().contains(operand), "{operand}: {err}");
        assert!(y.iter().all(|&v| v == 7.0), "{operand}: y was written");
    }
}

/// Random `[x, gamma, beta, qkv weight, qkv bias, proj weight, proj bias]` for an attention
/// half over `images` images of `tokens` tokens.
fn attention_half_values(seed: u64, images: usize, tokens: usize, dim: usize) -> [Vec<f32>; 7] {
    let lens = [
        images * tokens * dim,
        dim,
        dim,
        3 * dim * dim,
        3 * dim,
        dim * dim,
        dim,
    ];
    std::array::from_fn(|i| f32_vec(seed ^ (i as u64 + 40), lens[i]))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// The fused attention half equals layer norm, the qkv product, attention per head and
    /// the projection added to the residual, by the f64 reference kernels; with f32 and
    /// packed f32 weights, a scaled and an unscaled branch, on 1-3 threads.
    #[test]
    fn attention_half_matches_the_layers(
        images in 1usize..4,
        tokens in 1usize..30,
        heads in 1usize..4,
        head_dim in 1usize..9,
        branch_scale in prop_oneof![Just(1.0f32), Just(0.5f32)],
        with_bias in any::<bool>(),
        threads in 1usize..6,
        seed in any::<u64>(),
    ) {
        let dim = heads * head_dim;
        let [x, gamma, beta, w_qkv, b_qkv, w_proj, b_proj] =
            attention_half_values(seed, images, tokens, dim);
        let rows = images * tokens;
        let mut normed = vec![0.0; rows * dim];
        reference::layer_norm_rows(&mut normed, &x, &gamma, &beta, 1e-6, dim);
        let mut qkv = vec![0.0; rows * 3 * dim];
        reference::matmul(
            MatMut::row_major(&mut qkv, rows, 3 * dim),
            MatRef::row_major(&normed, rows, dim),
            MatRef::row_major(&w_qkv, 3 * dim, dim).t(),
            1.0,
            0.0,
        )
        .unwrap();
        if with_bias {
            for row in qkv.chunks_exact_mut(3 * dim) {
                row.iter_mut().zip(&b_qkv).for_each(|(v, b)| *v += b);
            }
        }
        let scale = (head_dim as f32).powf(-0.5);
        let mut mixed = vec![0.0; rows * dim];
        for b in 0..images {
            for h in 0..heads {
                let part = |third: usize| MatRef {
                    data: &qkv[b * tokens * 3 * dim + third * dim + h * head_dim..],
                    rows: tokens,
                    cols: head_dim,
                    row_stride: 3 * dim,
                    col_stride: 1,
                };
                let out = reference_head(part(0), part(1), part(2), scale);
                for i in 0..tokens {
                    let at = (b * tokens + i) * dim + h * head_dim;
                    mixed[at..at + head_dim].copy_from_slice(&out[i * head_dim..(i + 1) * head_dim]);
                }
            }
        }
        let mut branch = vec![0.0; rows * dim];
        reference::matmul(
            MatMut::row_major(&mut branch, rows, dim),
            MatRef::row_major(&mixed, rows, dim),
            MatRef::row_major(&w_proj, dim, dim).t(),
            1.0,
            0.0,
        )
        .unwrap();
        let expected: Vec<f32> = x
            .iter()
            .zip(&branch)
            .enumerate()
            .map(|(i, (x, f))| x + branch_scale * (f + if with_bias { b_proj[i % dim] } else { 0.0 }))
            .collect();
        let packed = (
            PackedF32::pack(&w_qkv, 3 * dim, dim).unwrap(),
            PackedF32::pack(&w_proj, dim, dim).unwrap(),
        );
        let half: AttentionHalf<'_> = AttentionHalf {
            norm: Norm { gamma: &gamma, beta: &beta, eps: 1e-6 },
            qkv: Proj { weight: &w_qkv, bias: with_bias.then_some(&b_qkv[..]), packed: None },
            proj: Proj { weight: &w_proj, bias: with_bias.then_some(&b_proj[..]), packed: None },
            heads,
            scale,
            bf16_attention: false,
            branch_scale,
            drop_path: 0.0,
        };
        let mut forms = vec![half];
        if crate::packed_f32_available() {
            forms.push(AttentionHalf {
                qkv: Proj { packed: Some(PackedWeight::F32(&packed.0)), ..half.qkv },
                proj: Proj { packed: Some(PackedWeight::F32(&packed.1)), ..half.proj },
                ..half
            });
        }
        for form in forms {
            let mut found = x.clone();
            pool(threads)
                .install(|| attention_half_in_place(&mut found, &form, (tokens, head_dim)))
                .unwrap();
            assert_close(&found, &expected, 2e-5);
        }
    }

    /// In bf16 the fused half equals the bf16 operations run one by one.
    #[test]
    fn bf16_attention_half_matches_the_bf16_operations(
        images in 1usize..3,
        tokens in 1usize..40,
        heads in 1usize..3,
        head_dim in 1usize..40,
        branch_scale in prop_oneof![Just(1.0f32), Just(0.5f32)],
        seed in any::<u64>(),
    ) {
        let dim = heads * head_dim;
        let [x, gamma, beta, w_qkv, b_qkv, w_proj, b_proj] =
            attention_half_values(seed, images, tokens, dim);
        let rows = images * tokens;
        let (p_qkv, p_proj) = (
            PackedBf16::pack(&w_qkv, 3 * dim, dim).unwrap(),
            PackedBf16::pack(&w_proj, dim, dim).unwrap(),
        );
        let mut normed = vec![0.0; rows * dim];
        crate::layer_norm_rows(&mut normed, &x, &gamma, &beta, 1e-6, dim);
        let mut qkv = vec![0.0; rows * 3 * dim];
        crate::linear_bf16(&mut qkv, &normed, &p_qkv, Some(&b_qkv), rows).unwrap();
        let view = |third: usize| HeadsRef {
            data: &qkv,
            offset: third * dim,
            tokens,
            strides: [tokens * 3 * dim, head_dim, 3 * dim, 1],
        };
        let scale = (head_dim as f32).powf(-0.5);
        let shape = AttentionShape { batch: images, heads, head_dim };
        let mut mixed = vec![0.0; rows * dim];
        attention_bf16(&mut mixed, view(0), view(1), view(2), shape, scale).unwrap();
        let mut branch = vec![0.0; rows * dim];
        crate::linear_bf16(&mut branch, &mixed, &p_proj, Some(&b_proj), rows).unwrap();
        let expected: Vec<f32> = x.iter().zip(&branch).map(|(x, f)| x + branch_scale * f).collect();
        let half: AttentionHalf<'_> = AttentionHalf {
            norm: Norm { gamma: &gamma, beta: &beta, eps: 1e-6 },
            qkv: Proj { weight: &w_qkv, bias: Some(&b_qkv), packed: Some(PackedWeight::Bf16(&p_qkv)) },
            proj: Proj { weight: &w_proj, bias: Some(&b_proj), packed: Some(PackedWeight::Bf16(&p_proj)) },
            heads,
            scale,
            bf16_attention: true,
            branch_scale,
            drop_path: 0.0,
        };
        let mut found = x.clone();
        pool(2).install(|| attention_half_in_place(&mut found, &half, (tokens, head_dim))).unwrap();
        assert_close(&found, &expected, 1e-5);
    }
}

#[test]
fn attention_half_refuses_mismatched_buffers() {
    let ones = vec![1.0; 64];
    let proj = |weight, bias| Proj {
        weight,
        bias: Some(bias),
        packed: None,
    };
    let half = AttentionHalf {
        norm: Norm {
            gamma: &ones[..4],
            beta: &ones[..4],
            eps: 1e-6,
        },
        qkv: proj(&ones[..48], &ones[..12]),
        proj: proj(&ones[..16], &ones[..4]),
        heads: 2,
        scale: 0.5,
        bf16_attention: false,
        branch_scale: 1.0,
        drop_path: 0.0,
    };
    let mut x = vec![0.5; 24];
    assert!(attention_half_in_place(&mut x, &half, (3, 2)).is_ok());
    for (operand, bad, len) in [
        ("x", half, 23),
        (
            "qkv weight",
            AttentionHalf {
                qkv: proj(&ones[..47], &ones[..12]),
                ..half
            },
            24,
        ),
        (
            "proj bias",
            AttentionHalf {
                proj: proj(&ones[..16], &ones[..3]),
                ..half
            },
            24,
        ),
        (
            "norm gamma",
            AttentionHalf {
                norm: Norm {
                    gamma: &ones[..5],
                    ..half.norm
                },
                ..half
            },
            24,
        ),
    ] {
        let mut x = vec![0.5; len];
        let err = attention_half_in_place(&mut x, &bad, (3, 2)).unwrap_err();
        assert!(err.to_string().contains(operand), "{operand}: {err}");
        assert!(x.iter().all(|&v| v == 0.5), "{operand}: x was written");
    }
}

#[test]
fn linear_residual_refuses_mismatched_buffers() {
    let w = [1.0; 6];
    let p = Proj {
        weight: &w[..],
        bias: None,
        packed: None,
    };
    let mut x = vec![0.5; 6];
    assert!(linear_residual_in_place(&mut x, &[1.0; 4], &p, (2, 3), 0.5).is_ok());
    // Each output gains 0.5 * (1 + 1).
    assert_eq!(x, vec![1.5; 6]);
    // (operand, input length, bias length, (in, out))
    for (operand, input, bias, in_out) in [
        ("input", 5, None, (2, 3)),
        ("bias", 4, Some(2), (2, 3)),
        ("weight", 4, None, (2, 4)),
    ] {
        let mut x = vec![0.5; 6];
        let (input, bias) = (vec![1.0; input], bias.map(|n| &w[..n]));
        let p = Proj { bias, ..p };
        let err = linear_residual_in_place(&mut x, &input, &p, in_out, 1.0).unwrap_err();
        assert!(err.to_string().contains(operand), "{operand}: {err}");
        assert!(x.iter().all(|&v| v == 0.5), "{operand}: x was written");
    }
}

/// Chunks of rows come in whole rounds of one chunk per thread, each near the target size.
#[test]
fn row_chunks_give_every_thread_the_same_count() {
    for (rows, threads) in [
        (4416, 16),
        (6304, 16),
        (6304, 2),
        (4416, 2),
        (600, 2),
        (257, 1),
    ] {
        let chunk = chunk_rows(rows, threads);
        let chunks = rows.div_ceil(chunk);
        assert_eq!(
            chunks % threads,
            0,
            "{rows} rows on {threads} threads: {chunks} chunks"
        );
        assert!(
            chunk <= MLP_CHUNK_ROWS,
            "{rows} rows on {threads} threads: {chunk}"
        );
        assert!(
            2 * chunk > MLP_CHUNK_ROWS || chunks == threads,
            "{rows}, {threads}: {chunk}"
        );
    }
    assert_eq!(chunk_rows(4416, 16), 138);
}
