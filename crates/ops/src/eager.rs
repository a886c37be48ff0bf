//! The inference backend: each operation computes its result at once on plain tensors.

use crate::math::{self as ops, Conv2dSpec};
use idlevit_kernels as kernels;
use idlevit_tensor::Tensor;

use idlevit_kernels::{PackedBf16, PackedF32};
use std::ops::Range;

use crate::precision::{linear_bf16_tensor, linear_packed_f32_tensor};

/// A fused attention kernel's signature.
type AttentionKernel = fn(
    &mut [f32],
    kernels::HeadsRef<'_>,
    kernels::HeadsRef<'_>,
    kernels::HeadsRef<'_>,
    kernels::AttentionShape,
    f32,
) -> std::result::Result<(), kernels::KernelError>;
use crate::{
    AttentionHalfParams, Backend, Fused, MlpHalfParams, NormLinearParams, OpsError, PackedWeight,
    Param, Result,
};

/// Runs layer maths directly on [`Tensor`]s with the operations of
/// [`math`](crate::math) (the same functions a tape records); records nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct Eager;

impl Backend for Eager {
    type Value = Tensor;

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

    fn linear(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        ops::linear(x, w, b)
    }

    fn layer_norm(&self, x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<Tensor> {
        ops::layer_norm(x, gamma, beta, eps)
    }

    fn gelu(&self, x: &Tensor) -> Result<Tensor> {
        ops::gelu(x)
    }

    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        ops::add(a, b)
    }

    fn sub(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        ops::sub(a, b)
    }

    fn mul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        ops::mul(a, b)
    }

    fn scale(&self, x: &Tensor, factor: f32) -> Result<Tensor> {
        ops::scale(x, factor)
    }

    fn matmul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        ops::matmul(a, b)
    }

    fn softmax(&self, x: &Tensor) -> Result<Tensor> {
        ops::softmax(x)
    }

    fn log_softmax(&self, x: &Tensor) -> Result<Tensor> {
        ops::log_softmax(x)
    }

    fn reshape(&self, x: &Tensor, shape: &[usize]) -> Result<Tensor> {
        ops::reshape(x, shape)
    }

    fn permute(&self, x: &Tensor, axes: &[usize]) -> Result<Tensor> {
        ops::permute(x, axes)
    }

    fn slice(&self, x: &Tensor, axis: usize, start: usize, end: usize) -> Result<Tensor> {
        ops::slice(x, axis, start, end)
    }

    fn select(&self, x: &Tensor, axis: usize, index: usize) -> Result<Tensor> {
        ops::select(x, axis, index)
    }

    fn broadcast_to(&self, x: &Tensor, shape: &[usize]) -> Result<Tensor> {
        ops::broadcast_to(x, shape)
    }

    fn concat(&self, xs: &[Tensor], axis: usize) -> Result<Tensor> {
        ops::concat(xs, axis)
    }

    fn gather_rows(&self, x: &Tensor, indices: &[Vec<usize>]) -> Result<Tensor> {
        ops::gather_rows(x, indices)
    }

    fn scatter_rows(&self, x: &Tensor, indices: &[Vec<usize>], rows: &Tensor) -> Result<Tensor> {
        ops::scatter_rows(x, indices, rows)
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

    fn sum_axis(&self, x: &Tensor, axis: usize, keepdim: bool) -> Result<Tensor> {
        ops::sum_axis(x, axis, keepdim)
    }

    fn sum_all(&self, x: &Tensor) -> Result<Tensor> {
        ops::sum_all(x)
    }

    fn abs(&self, x: &Tensor) -> Result<Tensor> {
        ops::abs(x)
    }

    fn square(&self, x: &Tensor) -> Result<Tensor> {
        ops::square(x)
    }

    fn l2_normalize(&self, x: &Tensor, eps: f32) -> Result<Tensor> {
        ops::l2_normalize(x, eps)
    }

    fn conv2d(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        spec: Conv2dSpec,
    ) -> Result<Tensor> {
        ops::conv2d(x, w, b, spec)
    }

    fn relu(&self, x: &Tensor) -> Result<Tensor> {
        ops::relu(x)
    }

    fn max_axis(&self, x: &Tensor, axis: usize) -> Result<Tensor> {
        ops::max_axis(x, axis)
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
        w: &Tensor,
        b: Option<&Tensor>,
        packed: Option<PackedWeight<'_>>,
        branch_scale: f32,
        _drop_path: f32,
    ) -> Result<Tensor> {
        let dim = x.shape().last().copied().unwrap_or(0);
        let in_features = input.shape().last().copied().unwrap_or(0);
        let mut input_shape = x.shape().to_vec();
        if let Some(last) = input_shape.last_mut() {
            *last = in_features;
        }
        if input.shape() != input_shape.as_slice() || w.shape() != [dim, in_features] {
            return Err(OpsError::shape(
                "residual projection",
                format!("input {input_shape:?} and weight [{dim}, {in_features}]"),
                input.shape(),
            ));
        }
        let b = b
            .map(|b| expect_shape(b, "residual projection bias", &[dim]))
            .transpose()?;
        let input = input.contiguous();
        let w = w.contiguous();
        // `x` itself when it is contiguous: written in place when nothing else holds it.
        let mut y = into_contiguous(x);
        kernels::linear_residual_in_place(
            y.as_mut_slice(),
            &input.contiguous_values(),
            kernel_weight(&w, packed.filter(|p| p.out_features() == dim))?,
            b.as_ref().and_then(Tensor::as_slice),
            (in_features, dim),
            branch_scale,
        )?;
        Ok(y)
    }

    fn norm_linear(&self, x: &Tensor, p: &NormLinearParams<'_, Tensor>) -> Result<Tensor> {
        let dim = x.shape().last().copied().unwrap_or(0);
        let out = p.weight.shape().first().copied().unwrap_or(0);
        let gamma = expect_shape(p.norm_gamma, "norm scale", &[dim])?;
        let beta = expect_shape(p.norm_beta, "norm shift", &[dim])?;
        let w = expect_shape(p.weight, "pre-norm projection weight", &[out, dim])?;
        let b = p
            .bias
            .map(|b| expect_shape(b, "pre-norm projection bias", &[out]))
            .transpose()?;
        let x = x.contiguous();
        let rows = x.numel() / dim.max(1);
        let mut shape = x.shape().to_vec();
        if let Some(last) = shape.last_mut() {
            *last = out;
        }
        let mut y = vec![0.0; rows * out];
        kernels::norm_linear(
            &mut y,
            &x.contiguous_values(),
            &kernels::NormLinear {
                norm_gamma: &gamma.contiguous_values(),
                norm_beta: &beta.contiguous_values(),
                norm_eps: p.norm_eps,
                weight: kernel_weight(&w, p.packed)?,
                bias: b.as_ref().and_then(Tensor::as_slice),
                dim,
                out,
            },
        )?;
        Ok(Tensor::from_vec(shape, y)?)
    }

    fn attention_half(&self, x: Tensor, p: &AttentionHalfParams<'_, Tensor>) -> Result<Tensor> {
        let &[_, tokens, dim] = x.shape() else {
            return crate::backend::attention_half_composed(self, x, p);
        };
        if p.heads == 0 || dim % p.heads != 0 {
            return crate::backend::attention_half_composed(self, x, p);
        }
        let gamma = expect_shape(p.qkv.norm_gamma, "attention norm scale", &[dim])?;
        let beta = expect_shape(p.qkv.norm_beta, "attention norm shift", &[dim])?;
        let w_qkv = expect_shape(p.qkv.weight, "qkv weight", &[3 * dim, dim])?;
        let b_qkv = p
            .qkv
            .bias
            .map(|b| expect_shape(b, "qkv bias", &[3 * dim]))
            .transpose()?;
        let w_proj = expect_shape(p.proj_weight, "attention proj weight", &[dim, dim])?;
        let b_proj = p
            .proj_bias
            .map(|b| expect_shape(b, "attention proj bias", &[dim]))
            .transpose()?;
        let mut y = into_contiguous(x);
        kernels::attention_half_in_place(
            y.as_mut_slice(),
            &kernels::AttentionHalf {
                norm_gamma: &gamma.contiguous_values(),
                norm_beta: &beta.contiguous_values(),
                norm_eps: p.qkv.norm_eps,
                qkv_weight: kernel_weight(&w_qkv, p.qkv.packed)?,
                qkv_bias: b_qkv.as_ref().and_then(Tensor::as_slice),
                proj_weight: kernel_weight(&w_proj, p.proj_packed)?,
                proj_bias: b_proj.as_ref().and_then(Tensor::as_slice),
                tokens,
                heads: p.heads,
                head_dim: dim / p.heads,
                scale: p.scale,
                bf16_attention: p.bf16_attention,
                branch_scale: p.branch_scale,
            },
        )?;
        Ok(y)
    }

    fn mlp_half(&self, x: Tensor, p: &MlpHalfParams<'_, Tensor>) -> Result<Tensor> {
        let dim = x.shape().last().copied().unwrap_or(0);
        let hidden = p.fc1_weight.shape().first().copied().unwrap_or(0);
        let gamma = expect_shape(p.norm_gamma, "mlp norm scale", &[dim])?;
        let beta = expect_shape(p.norm_beta, "mlp norm shift", &[dim])?;
        let w1 = expect_shape(p.fc1_weight, "mlp fc1 weight", &[hidden, dim])?;
        let w2 = expect_shape(p.fc2_weight, "mlp fc2 weight", &[dim, hidden])?;
        let b1 = p
            .fc1_bias
            .map(|b| expect_shape(b, "mlp fc1 bias", &[hidden]))
            .transpose()?;
        let b2 = p
            .fc2_bias
            .map(|b| expect_shape(b, "mlp fc2 bias", &[dim]))
            .transpose()?;
        let mut y = into_contiguous(x);
        kernels::mlp_half_in_place(
            y.as_mut_slice(),
            &kernels::MlpHalf {
                norm_gamma: &gamma.contiguous_values(),
                norm_beta: &beta.contiguous_values(),
                norm_eps: p.norm_eps,
                fc1_weight: kernel_weight(&w1, p.fc1_packed)?,
                fc1_bias: b1.as_ref().and_then(Tensor::as_slice),
                fc2_weight: kernel_weight(&w2, p.fc2_packed)?,
                fc2_bias: b2.as_ref().and_then(Tensor::as_slice),
                dim,
                hidden,
                branch_scale: p.branch_scale,
            },
        )?;
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

/// `t` in contiguous storage when its shape is `shape`, else an error naming `what`.
fn expect_shape(t: &Tensor, what: &str, shape: &[usize]) -> Result<Tensor> {
    if t.shape() == shape {
        Ok(t.contiguous())
    } else {
        Err(OpsError::shape(what, format!("{shape:?}"), t.shape()))
    }
}

/// A fused kernel's view of a projection weight: its packed bf16 copy when there is one, else
/// its packed f32 copy, else the weight itself (made contiguous by the caller).
fn kernel_weight<'a>(
    w: &'a Tensor,
    packed: Option<PackedWeight<'a>>,
) -> Result<kernels::ProjWeight<'a>> {
    Ok(match packed {
        Some(PackedWeight::Bf16(packed)) => kernels::ProjWeight::Bf16(packed),
        Some(PackedWeight::F32(packed)) => kernels::ProjWeight::PackedF32(packed),
        None => kernels::ProjWeight::F32(
            w.as_slice()
                .ok_or_else(|| OpsError::shape("weight", "a contiguous matrix", w.shape()))?,
        ),
    })
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
