//! The inference backend: each operation computes its result at once on plain tensors.

use crate::math::{self as ops, Conv2dSpec};
use idlevit_kernels as kernels;
use idlevit_tensor::Tensor;

use idlevit_kernels::{PackedBf16, PackedF32};
use std::ops::Range;

use crate::backend::attention_half_composed;
use crate::precision::{linear_bf16_tensor, linear_packed_f32_tensor};
use crate::{AttentionHalf, Backend, Fused, MlpHalf, Norm, OpsError, Param, Proj, Result};

/// A fused attention kernel's signature.
type AttentionKernel = fn(
    &mut [f32],
    kernels::HeadsRef<'_>,
    kernels::HeadsRef<'_>,
    kernels::HeadsRef<'_>,
    kernels::AttentionShape,
    f32,
) -> std::result::Result<(), kernels::KernelError>;

/// Runs layer maths directly on [`Tensor`]s with the operations of
/// [`math`](crate::math) (the same functions a tape records); records nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct Eager;

/// [`Backend`] methods that call the [`math`](crate::math) function of the same name.
macro_rules! math_ops {
    ($($op:ident($($arg:ident: $ty:ty),*);)*) => {
        $(fn $op(&self, $($arg: $ty),*) -> Result<Tensor> {
            ops::$op($($arg),*)
        })*
    };
}

impl Backend for Eager {
    type Value = Tensor;

    math_ops! {
        linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>);
        layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f32);
        gelu(x: &Tensor);
        add(a: &Tensor, b: &Tensor);
        sub(a: &Tensor, b: &Tensor);
        mul(a: &Tensor, b: &Tensor);
        scale(x: &Tensor, factor: f32);
        matmul(a: &Tensor, b: &Tensor);
        softmax(x: &Tensor);
        log_softmax(x: &Tensor);
        reshape(x: &Tensor, shape: &[usize]);
        permute(x: &Tensor, axes: &[usize]);
        slice(x: &Tensor, axis: usize, start: usize, end: usize);
        select(x: &Tensor, axis: usize, index: usize);
        broadcast_to(x: &Tensor, shape: &[usize]);
        concat(xs: &[Tensor], axis: usize);
        gather_rows(x: &Tensor, indices: &[Vec<usize>]);
        scatter_rows(x: &Tensor, indices: &[Vec<usize>], rows: &Tensor);
        sum_axis(x: &Tensor, axis: usize, keepdim: bool);
        sum_all(x: &Tensor);
        abs(x: &Tensor);
        square(x: &Tensor);
        l2_normalize(x: &Tensor, eps: f32);
        conv2d(x: &Tensor, w: &Tensor, b: Option<&Tensor>, spec: Conv2dSpec);
        relu(x: &Tensor);
        max_axis(x: &Tensor, axis: usize);
    }

    fn shape<'a>(&self, x: &'a Tensor) -> &'a [usize] {
        x.shape()
    }

    fn constant(&self, t: Tensor) -> Tensor {
        t
    }

    fn param(&self, p: &Param) -> Tensor {
        p.value().clone()
    }

    fn to_tensor(&self, x: &Tensor) -> Tensor {
        x.clone()
    }

    fn scatter_rows_into(
        &self,
        mut x: Tensor,
        indices: &[Vec<usize>],
        rows: &Tensor,
    ) -> Result<Tensor> {
        x.scatter_rows(indices, rows)?;
        Ok(x)
    }
}

impl Fused for Eager {
    fn linear_packed(
        &self,
        x: &Tensor,
        packed: &PackedBf16,
        cols: Range<usize>,
        _w: &Tensor,
        b: Option<&Tensor>,
    ) -> Result<Tensor> {
        linear_bf16_tensor(x, packed, cols, b)
    }

    fn packs_weights(&self) -> bool {
        kernels::packed_f32_available()
    }

    fn linear_packed_f32(
        &self,
        x: &Tensor,
        packed: &PackedF32,
        cols: Range<usize>,
        _w: &Tensor,
        b: Option<&Tensor>,
    ) -> Result<Tensor> {
        linear_packed_f32_tensor(x, packed, cols, b)
    }

    fn attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, scale: f32) -> Result<Tensor> {
        fused_attention(q, k, v, scale, kernels::attention)
    }

    fn attention_bf16(&self, q: &Tensor, k: &Tensor, v: &Tensor, scale: f32) -> Result<Tensor> {
        fused_attention(q, k, v, scale, kernels::attention_bf16)
    }

    fn linear_residual(
        &self,
        x: Tensor,
        input: &Tensor,
        p: &Proj<'_, Tensor>,
        branch_scale: f32,
        _drop_path: f32,
    ) -> Result<Tensor> {
        let (dim, in_features) = (last_dim(&x), last_dim(input));
        let input_shape = with_last(x.shape(), in_features);
        if input.shape() != input_shape || p.weight.shape() != [dim, in_features] {
            return Err(OpsError::shape(
                "residual projection",
                format!("input {input_shape:?} and weight [{dim}, {in_features}]"),
                input.shape(),
            ));
        }
        let packed = p.packed.filter(|packed| packed.shape().0 == dim);
        let p = Proj {
            packed,
            ..p.map(Tensor::contiguous)
        };
        let input = input.contiguous();
        // `x` itself when it is contiguous: written in place when nothing else holds it.
        let mut y = into_contiguous(x);
        let shape = (in_features, dim);
        let (p, input) = (p.map(values), values(&input));
        kernels::linear_residual_in_place(y.as_mut_slice(), input, &p, shape, branch_scale)?;
        Ok(y)
    }

    fn norm_linear(&self, x: &Tensor, norm: &Norm<Tensor>, p: &Proj<'_, Tensor>) -> Result<Tensor> {
        let dim = last_dim(x);
        let out = p.weight.shape().first().copied().unwrap_or(0);
        expect_shape(&p.weight, "pre-norm projection weight", &[out, dim])?;
        let (norm, p, x) = (
            norm.map(Tensor::contiguous),
            p.map(Tensor::contiguous),
            x.contiguous(),
        );
        let mut y = vec![0.0; x.numel() / dim.max(1) * out];
        let (norm, p) = (norm.map(values), p.map(values));
        kernels::norm_linear(&mut y, values(&x), &norm, &p, (dim, out))?;
        Ok(Tensor::from_vec(with_last(x.shape(), out), y)?)
    }

    fn attention_half(&self, x: Tensor, p: &AttentionHalf<'_, Tensor>) -> Result<Tensor> {
        let (tokens, dim) = match *x.shape() {
            [_, tokens, dim] if p.heads > 0 && dim % p.heads == 0 => (tokens, dim),
            _ => return attention_half_composed(self, x, p),
        };
        expect_shape(&p.qkv.weight, "qkv weight", &[3 * dim, dim])?;
        expect_shape(&p.proj.weight, "attention proj weight", &[dim, dim])?;
        let p = p.map(Tensor::contiguous);
        let mut y = into_contiguous(x);
        let shape = (tokens, dim / p.heads);
        kernels::attention_half_in_place(y.as_mut_slice(), &p.map(values), shape)?;
        Ok(y)
    }

    fn mlp_half(&self, x: Tensor, p: &MlpHalf<'_, Tensor>) -> Result<Tensor> {
        let dim = last_dim(&x);
        let hidden = p.fc1.weight.shape().first().copied().unwrap_or(0);
        expect_shape(&p.fc1.weight, "mlp fc1 weight", &[hidden, dim])?;
        expect_shape(&p.fc2.weight, "mlp fc2 weight", &[dim, hidden])?;
        let p = p.map(Tensor::contiguous);
        let mut y = into_contiguous(x);
        kernels::mlp_half_in_place(y.as_mut_slice(), &p.map(values), (dim, hidden))?;
        Ok(y)
    }
}

/// The kernel's view of a `(batch, heads, tokens, head_dim)` tensor with the given strides.
fn heads_ref(t: &Tensor, tokens: usize, strides: [usize; 4]) -> kernels::HeadsRef<'_> {
    let (data, offset) = t.storage();
    kernels::HeadsRef {
        data,
        offset,
        tokens,
        strides,
    }
}

/// `x` in contiguous storage: `x` itself when it already is (so a sole owner stays one).
fn into_contiguous(x: Tensor) -> Tensor {
    if x.is_contiguous() { x } else { x.contiguous() }
}

/// An error naming `what` unless `t` has the shape `shape`.
fn expect_shape(t: &Tensor, what: &str, shape: &[usize]) -> Result<()> {
    if t.shape() == shape {
        Ok(())
    } else {
        Err(OpsError::shape(what, format!("{shape:?}"), t.shape()))
    }
}

/// The values of a tensor made contiguous (empty for any other, which the kernels refuse).
fn values(t: &Tensor) -> &[f32] {
    t.as_slice().unwrap_or_default()
}

/// The size of the last axis (0 for a scalar).
fn last_dim(t: &Tensor) -> usize {
    t.shape().last().copied().unwrap_or(0)
}

/// `shape` with its last axis (if any) set to `last`.
fn with_last(shape: &[usize], last: usize) -> Vec<usize> {
    let mut shape = shape.to_vec();
    if let Some(axis) = shape.last_mut() {
        *axis = last;
    }
    shape
}

/// The tensor plumbing of a fused attention kernel (`kernels::attention` or its bf16 form):
/// checks the per-head views and runs `kernel` into a fresh `(batch, nq, heads * d)` tensor.
fn fused_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    kernel: AttentionKernel,
) -> Result<Tensor> {
    let layout = |t: &Tensor, what: &str| match (t.shape(), t.strides()) {
        (&[batch, heads, tokens, head_dim], &[sb, sh, st, sd]) => {
            Ok(([batch, heads, head_dim], tokens, [sb, sh, st, sd]))
        }
        _ => Err(OpsError::shape(
            what,
            "(batch, heads, tokens, head_dim)",
            t.shape(),
        )),
    };
    let (q_dims, nq, q_strides) = layout(q, "attention queries")?;
    let (k_dims, nk, k_strides) = layout(k, "attention keys")?;
    let (v_dims, nv, v_strides) = layout(v, "attention values")?;
    if k_dims != q_dims || v_dims != q_dims || nv != nk {
        return Err(OpsError::shape(
            "attention keys and values",
            format!(
                "(batch, heads, tokens, head_dim) matching the queries {:?}",
                q.shape()
            ),
            if k_dims != q_dims {
                k.shape()
            } else {
                v.shape()
            },
        ));
    }
    let [batch, heads, head_dim] = q_dims;
    let mut out = vec![0.0; batch * nq * heads * head_dim];
    kernel(
        &mut out,
        heads_ref(q, nq, q_strides),
        heads_ref(k, nk, k_strides),
        heads_ref(v, nv, v_strides),
        kernels::AttentionShape {
            batch,
            heads,
            head_dim,
        },
        scale,
    )?;
    Ok(Tensor::from_vec(vec![batch, nq, heads * head_dim], out)?)
}
