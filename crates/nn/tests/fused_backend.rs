//! The eager backend's fused operations (attention, the MLP half, a projection closing a
//! residual) against the tape, which runs the trait's compositions of primitive operations.

use idlevit_autodiff::Tape;
use idlevit_kernels::{PackedBf16, PackedF32};
use idlevit_nn::{AttentionHalf, Backend, Eager, Fused, MlpHalf, Norm, PackedWeight, Proj, Tensor};

mod common;
use common::values;

fn assert_close(eager: &Tensor, composed: &Tensor) {
    assert_eq!(eager.shape(), composed.shape());
    for (e, c) in eager.to_vec().iter().zip(composed.to_vec()) {
        assert!((e - c).abs() <= 1e-5 * (1.0 + c.abs()), "{e} against {c}");
    }
}

#[test]
fn fused_attention_equals_the_composition_on_strided_heads() {
    // q, k and v as thirds of a fused qkv output, heads split by views (as Attention does).
    let (batch, tokens, heads, head_dim) = (3, 11, 2, 5);
    let qkv = values(1, &[batch, tokens, 3, heads, head_dim])
        .permute(&[2, 0, 3, 1, 4])
        .unwrap();
    let [q, k, v] = [0, 1, 2].map(|i| qkv.select(0, i).unwrap());
    let eager = Eager.attention(&q, &k, &v, 0.4).unwrap();
    let tape = Tape::new();
    let [tq, tk, tv] = [&q, &k, &v].map(|t| tape.constant(t.clone()));
    let composed = tape.attention(&tq, &tk, &tv, 0.4).unwrap();
    assert_eq!(eager.shape(), &[batch, tokens, heads * head_dim]);
    assert_close(&eager, composed.value());
    // Fewer queries than keys: the first 4 tokens ask.
    let q4 = q.slice_axis(2, 0, 4).unwrap();
    let eager = Eager.attention(&q4, &k, &v, 0.4).unwrap();
    let composed = tape
        .attention(&tape.constant(q4.clone()), &tk, &tv, 0.4)
        .unwrap();
    assert_close(&eager, composed.value());
    let short_v = v.slice_axis(2, 0, 10).unwrap();
    assert!(Eager.attention(&q, &k, &short_v, 0.4).is_err());
    // In bf16 the result stays within bf16 rounding of f32 (the tape keeps f32), on the
    // same strided views; the kernel's own tests bound it per element.
    let eager = Eager.attention(&q4, &k, &v, 0.4).unwrap();
    let bf16 = Eager.attention_bf16(&q4, &k, &v, 0.4).unwrap();
    let scale = eager.view().iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let diff = bf16.max_abs_diff(&eager).unwrap();
    assert!(diff > 0.0 && diff <= 2e-2 * scale, "{diff} of {scale}");
    assert_eq!(
        tape.attention_bf16(&tape.constant(q4), &tk, &tv, 0.4)
            .unwrap()
            .value(),
        composed.value()
    );
    assert!(Eager.attention_bf16(&q, &k, &short_v, 0.4).is_err());
}

/// A projection's parameters: weight `w`, bias `b`, the weight's packed copy.
fn proj<'a, V: Clone>(w: &V, b: &V, packed: Option<PackedWeight<'a>>) -> Proj<'a, V> {
    Proj {
        weight: w.clone(),
        bias: Some(b.clone()),
        packed,
    }
}

/// A layer norm's parameters `gamma` and `beta`.
fn norm<V: Clone>(gamma: &V, beta: &V, eps: f32) -> Norm<V> {
    Norm {
        gamma: gamma.clone(),
        beta: beta.clone(),
        eps,
    }
}

/// The MLP half's parameters from `[gamma, beta, w1, b1, w2, b2]`, branch scaled by 1/2.
fn make<'a, V: Clone>(p: &[V]) -> MlpHalf<'a, V> {
    MlpHalf {
        norm: norm(&p[0], &p[1], 1e-5),
        fc1: proj(&p[2], &p[3], None),
        fc2: proj(&p[4], &p[5], None),
        branch_scale: 0.5,
        drop_path: 0.0,
    }
}

/// Random `[gamma, beta, w1, b1, w2, b2]` of an MLP half.
fn mlp_values(dim: usize, hidden: usize) -> [Tensor; 6] {
    [
        values(3, &[dim]),
        values(4, &[dim]),
        values(5, &[hidden, dim]),
        values(6, &[hidden]),
        values(7, &[dim, hidden]),
        values(8, &[dim]),
    ]
}

#[test]
fn fused_mlp_half_and_residual_projection_equal_the_composition() {
    let (rows, dim, hidden) = (37, 6, 10);
    let x = values(2, &[1, rows, dim]);
    let params = mlp_values(dim, hidden);
    let tape = Tape::new();
    let tp: Vec<_> = params.iter().map(|t| tape.constant(t.clone())).collect();
    let eager = Eager.mlp_half(x.clone(), &make(&params)).unwrap();
    let composed = tape.mlp_half(tape.constant(x.clone()), &make(&tp)).unwrap();
    assert_close(&eager, composed.value());
    let swapped = MlpHalf {
        fc1: proj(&params[4], &params[3], None),
        ..make(&params)
    };
    assert!(Eager.mlp_half(x.clone(), &swapped).is_err());

    let input = values(9, &[1, rows, hidden]);
    let (w, b) = (&params[4], &params[5]);
    let eager = Eager
        .linear_residual(x.clone(), &input, &proj(w, b, None), 0.5, 0.0)
        .unwrap();
    let composed_residual = |scale| {
        tape.linear_residual(
            tape.constant(x.clone()),
            &tape.constant(input.clone()),
            &proj(&tp[4], &tp[5], None),
            scale,
            0.0,
        )
        .unwrap()
    };
    let composed = composed_residual(0.5);
    assert_close(&eager, composed.value());
    assert!(
        Eager
            .linear_residual(x.clone(), &input, &proj(&params[2], b, None), 0.5, 0.0)
            .is_err()
    );
    // The packed f32 kernel (where the CPU runs it) accumulates onto the residual directly.
    if idlevit_kernels::packed_f32_available() {
        let packed = PackedF32::pack(&w.to_vec(), dim, hidden).unwrap();
        let eager = Eager
            .linear_residual(
                x.clone(),
                &input,
                &proj(w, b, Some(PackedWeight::F32(&packed))),
                1.0,
                0.0,
            )
            .unwrap();
        let composed = composed_residual(1.0);
        assert_close(&eager, composed.value());
        let packed = [&params[2], &params[4]].map(|w| {
            let &[out, input] = w.shape() else {
                unreachable!()
            };
            PackedF32::pack(&w.to_vec(), out, input).unwrap()
        });
        let with_packed = MlpHalf {
            fc1: proj(&params[2], &params[3], Some(PackedWeight::F32(&packed[0]))),
            fc2: proj(&params[4], &params[5], Some(PackedWeight::F32(&packed[1]))),
            ..make(&params)
        };
        let eager = Eager.mlp_half(x.clone(), &with_packed).unwrap();
        let composed = tape.mlp_half(tape.constant(x.clone()), &make(&tp)).unwrap();
        assert_close(&eager, composed.value());
    }
    // The bf16 projection equals the bf16 product added by hand, accumulated onto the
    // residual (scale 1) or added scaled.
    let packed = PackedBf16::pack(&w.to_vec(), dim, hidden).unwrap();
    let branch = Eager
        .linear_packed(&input, &packed, 0..dim, w, Some(b))
        .unwrap();
    for scale in [1.0, 0.5] {
        let eager = Eager
            .linear_residual(
                x.clone(),
                &input,
                &proj(w, b, Some(PackedWeight::Bf16(&packed))),
                scale,
                0.0,
            )
            .unwrap();
        let by_hand = Eager
            .add(&x, &Eager.scale(&branch, scale).unwrap())
            .unwrap();
        assert_close(&eager, &by_hand);
    }
    assert!(
        Eager
            .linear_residual(x.clone(), &x, &proj(w, b, None), 0.5, 0.0)
            .is_err()
    );
}

#[test]
fn an_optimiser_step_drops_the_stale_packed_f32_copy_and_clones_share_it() {
    if !idlevit_kernels::packed_f32_available() {
        return;
    }
    let mut p = idlevit_nn::Param::new("w", values(11, &[3, 4]));
    let product = |p: &idlevit_nn::Param| {
        let mut y = vec![0.0; 3];
        let packed = p
            .packed_f32()
            .expect("a matrix on a CPU with the packed kernel");
        idlevit_kernels::linear_packed_f32(&mut y, &[1.0; 4], packed, 0..3, None, 1, false)
            .unwrap();
        y
    };
    let sums = |p: &idlevit_nn::Param| -> Vec<f32> {
        p.value()
            .to_vec()
            .chunks(4)
            .map(|row| row.iter().sum())
            .collect()
    };
    // A clone made before the first use shares the one packed copy.
    let twin = p.clone();
    assert_close_vec(&product(&p), &sums(&p));
    let (ours, theirs) = (p.packed_f32().unwrap(), twin.packed_f32().unwrap());
    assert!(std::ptr::eq(ours, theirs));
    p.value_mut().as_mut_slice()[0] += 1.0;
    assert_close_vec(&product(&p), &sums(&p));
    // The twin keeps its own, unchanged value and the copy packed from it.
    assert_close_vec(&product(&twin), &sums(&twin));
    assert_ne!(sums(&p), sums(&twin));
    assert!(
        idlevit_nn::Param::new("b", values(1, &[3]))
            .packed_f32()
            .is_none()
    );
}

fn assert_close_vec(found: &[f32], expected: &[f32]) {
    for (f, e) in found.iter().zip(expected) {
        assert!((f - e).abs() <= 1e-5 * (1.0 + e.abs()), "{f} against {e}");
    }
}

#[test]
fn fused_norm_linear_equals_the_composition() {
    let (rows, dim, out) = (300, 6, 9);
    let x = values(11, &[2, rows, dim]);
    let p = [
        values(12, &[dim]),
        values(13, &[dim]),
        values(14, &[out, dim]),
        values(15, &[out]),
    ];
    let eager = |weight: &Tensor, packed: Option<PackedWeight<'_>>| {
        Eager.norm_linear(&x, &norm(&p[0], &p[1], 1e-6), &proj(weight, &p[3], packed))
    };
    let tape = Tape::new();
    let tp: Vec<_> = p.iter().map(|t| tape.constant(t.clone())).collect();
    let composed = tape
        .norm_linear(
            &tape.constant(x.clone()),
            &norm(&tp[0], &tp[1], 1e-6),
            &proj(&tp[2], &tp[3], None),
        )
        .unwrap();
    assert_close(&eager(&p[2], None).unwrap(), composed.value());
    if idlevit_kernels::packed_f32_available() {
        let packed = PackedF32::pack(&p[2].to_vec(), out, dim).unwrap();
        let eager = eager(&p[2], Some(PackedWeight::F32(&packed))).unwrap();
        assert_close(&eager, composed.value());
    }
    // bf16: the same as normalising, then the bf16 product.
    let packed = PackedBf16::pack(&p[2].to_vec(), out, dim).unwrap();
    let h = Eager.layer_norm(&x, &p[0], &p[1], 1e-6).unwrap();
    let by_layers = Eager
        .linear_packed(&h, &packed, 0..out, &p[2], Some(&p[3]))
        .unwrap();
    let bf16 = eager(&p[2], Some(PackedWeight::Bf16(&packed))).unwrap();
    assert_close(&bf16, &by_layers);
    let wrong = values(16, &[out, dim + 1]);
    assert!(eager(&wrong, None).is_err());
}

#[test]
fn residual_updates_write_into_a_sole_owner_and_leave_shared_inputs_alone() {
    let (rows, dim, hidden) = (5, 4, 6);
    let params = mlp_values(dim, hidden);
    let x = values(2, &[1, rows, dim]);
    let before = x.to_vec();
    let start = |t: &Tensor| t.storage().0.as_ptr();
    // Shared: the caller's x keeps its values.
    let shared = Eager.mlp_half(x.clone(), &make(&params)).unwrap();
    assert_eq!(x.to_vec(), before);
    assert_ne!(start(&shared), start(&x));
    // Sole owner: the result lives in x's own storage.
    let owned = Tensor::from_vec(vec![1, rows, dim], before.clone()).unwrap();
    let at = start(&owned);
    let updated = Eager.mlp_half(owned, &make(&params)).unwrap();
    assert_eq!(start(&updated), at);
    assert_eq!(updated.to_vec(), shared.to_vec());
    let input = values(9, &[1, rows, hidden]);
    let (w, b) = (&params[4], &params[5]);
    let at = start(&updated);
    let projected = Eager
        .linear_residual(updated, &input, &proj(w, b, None), 0.5, 0.0)
        .unwrap();
    assert_eq!(start(&projected), at);
}

#[test]
fn fused_attention_half_equals_the_composition() {
    // Three images (at least one per thread, so the eager form runs the fused kernel), and one.
    let (tokens, heads, head_dim) = (11, 2, 3);
    let dim = heads * head_dim;
    let p = [
        values(21, &[dim]),
        values(22, &[dim]),
        values(23, &[3 * dim, dim]),
        values(24, &[3 * dim]),
        values(25, &[dim, dim]),
        values(26, &[dim]),
    ];
    fn params<V: Clone>(p: &[V], heads: usize, branch_scale: f32) -> AttentionHalf<'_, V> {
        AttentionHalf {
            norm: norm(&p[0], &p[1], 1e-6),
            qkv: proj(&p[2], &p[3], None),
            proj: proj(&p[4], &p[5], None),
            heads,
            scale: 0.6,
            bf16_attention: false,
            branch_scale,
            drop_path: 0.0,
        }
    }
    let tape = Tape::new();
    let tp: Vec<_> = p.iter().map(|t| tape.constant(t.clone())).collect();
    for (batch, branch_scale) in [(3, 1.0), (3, 0.5), (1, 1.0)] {
        let x = values(20, &[batch, tokens, dim]);
        let eager = Eager
            .attention_half(x.clone(), &params(&p, heads, branch_scale))
            .unwrap();
        let composed = tape
            .attention_half(tape.constant(x), &params(&tp, heads, branch_scale))
            .unwrap();
        assert_close(&eager, composed.value());
    }
    let x = values(20, &[3, tokens, dim]);
    let wrong = values(27, &[dim, dim + 1]);
    let bad = AttentionHalf {
        proj: proj(&wrong, &p[5], None),
        ..params(&p, heads, 1.0)
    };
    assert!(Eager.attention_half(x, &bad).is_err());
}
