//! The operations a layer's maths is written in.

use crate::math::Conv2dSpec;
use idlevit_tensor::Tensor;

use idlevit_kernels::{AttentionHalf, MlpHalf, Norm, PackedBf16, PackedF32, PackedWeight, Proj};
use std::ops::Range;

use crate::{OpsError, Param, Result};

/// The operations a layer's `forward` uses, so that one definition of the maths serves
/// inference ([`Eager`](crate::Eager)) and training (a backend that records a tape).
///
/// Shapes follow PyTorch: leading axes are batch axes, the last axis is the feature axis.
pub trait Backend {
    /// The value a layer passes around: a plain tensor, or a tensor with a tape entry.
    type Value: Clone;

    /// The shape of a value.
    fn shape<'a>(&self, x: &'a Self::Value) -> &'a [usize];
    /// A value that is data, not a parameter (inputs, masks): no gradient is kept for it.
    fn constant(&self, t: Tensor) -> Self::Value;
    /// A learnable parameter; a training backend keeps its gradient under its identity.
    fn param(&self, p: &Param) -> Self::Value;
    /// The current numbers of a value, detached from any tape (for choices such as top-k
    /// token selection, which carry no gradient).
    fn to_tensor(&self, x: &Self::Value) -> Tensor;

    /// `x W^T + b` over the last axis of `x`, with `W` of shape `(out, in)`.
    fn linear(
        &self,
        x: &Self::Value,
        w: &Self::Value,
        b: Option<&Self::Value>,
    ) -> Result<Self::Value>;
    /// Layer normalisation over the last axis with scale `gamma` and shift `beta`.
    fn layer_norm(
        &self,
        x: &Self::Value,
        gamma: &Self::Value,
        beta: &Self::Value,
        eps: f32,
    ) -> Result<Self::Value>;
    /// GELU with the exact erf.
    fn gelu(&self, x: &Self::Value) -> Result<Self::Value>;
    /// Elementwise sum; `b` may broadcast to `a`'s shape (size-1 or missing leading axes).
    fn add(&self, a: &Self::Value, b: &Self::Value) -> Result<Self::Value>;
    /// Elementwise difference `a - b`; `b` may broadcast to `a`'s shape.
    fn sub(&self, a: &Self::Value, b: &Self::Value) -> Result<Self::Value>;
    /// Elementwise product; `b` may broadcast to `a`'s shape.
    fn mul(&self, a: &Self::Value, b: &Self::Value) -> Result<Self::Value>;
    /// Multiplication by a constant.
    fn scale(&self, x: &Self::Value, factor: f32) -> Result<Self::Value>;
    /// Batched matrix product `(..., m, k) x (..., k, n) -> (..., m, n)`.
    fn matmul(&self, a: &Self::Value, b: &Self::Value) -> Result<Self::Value>;
    /// Softmax over the last axis.
    fn softmax(&self, x: &Self::Value) -> Result<Self::Value>;
    /// Log of the softmax over the last axis.
    fn log_softmax(&self, x: &Self::Value) -> Result<Self::Value>;
    /// The same values under another shape.
    fn reshape(&self, x: &Self::Value, shape: &[usize]) -> Result<Self::Value>;
    /// Axes reordered: axis `i` of the result is axis `axes[i]` of `x`.
    fn permute(&self, x: &Self::Value, axes: &[usize]) -> Result<Self::Value>;
    /// The range `start..end` of `axis`.
    fn slice(&self, x: &Self::Value, axis: usize, start: usize, end: usize) -> Result<Self::Value>;
    /// Index `index` of `axis`, with that axis removed.
    fn select(&self, x: &Self::Value, axis: usize, index: usize) -> Result<Self::Value>;
    /// Repeats size-1 axes (and adds leading axes) to reach `shape`.
    fn broadcast_to(&self, x: &Self::Value, shape: &[usize]) -> Result<Self::Value>;
    /// Joins values along `axis`; all other axes must agree.
    fn concat(&self, xs: &[Self::Value], axis: usize) -> Result<Self::Value>;
    /// Rows of a `(batch, rows, width)` value picked per batch item:
    /// `out[b, i] = x[b, indices[b][i]]`.
    fn gather_rows(&self, x: &Self::Value, indices: &[Vec<usize>]) -> Result<Self::Value>;
    /// `x` with rows replaced per batch item: `out[b, indices[b][i]] = rows[b, i]`, every other
    /// row of `x` unchanged.
    fn scatter_rows(
        &self,
        x: &Self::Value,
        indices: &[Vec<usize>],
        rows: &Self::Value,
    ) -> Result<Self::Value>;
    /// [`scatter_rows`](Self::scatter_rows) that consumes `x`: an inference backend writes the
    /// rows into `x`'s own storage when nothing else shares it, instead of copying it first.
    fn scatter_rows_into(
        &self,
        x: Self::Value,
        indices: &[Vec<usize>],
        rows: &Self::Value,
    ) -> Result<Self::Value> {
        self.scatter_rows(&x, indices, rows)
    }
    /// Sum over `axis`, kept as a size-1 axis when `keepdim`, removed otherwise.
    fn sum_axis(&self, x: &Self::Value, axis: usize, keepdim: bool) -> Result<Self::Value>;
    /// Sum of every element, as a rank-0 value.
    fn sum_all(&self, x: &Self::Value) -> Result<Self::Value>;
    /// Elementwise absolute value (gradient 0 at 0).
    fn abs(&self, x: &Self::Value) -> Result<Self::Value>;
    /// Elementwise square.
    fn square(&self, x: &Self::Value) -> Result<Self::Value>;
    /// Each row of the last axis divided by `max(||row||_2, eps)`, as
    /// `torch.nn.functional.normalize`.
    fn l2_normalize(&self, x: &Self::Value, eps: f32) -> Result<Self::Value>;

    /// Stochastic depth on a residual branch `(batch, ...)`: a training backend with a random
    /// stream zeroes each sample's branch with probability `rate` and scales the kept ones by
    /// `1 / (1 - rate)` (timm's `DropPath`); inference returns the branch unchanged.
    fn drop_path(&self, branch: &Self::Value, rate: f32) -> Result<Self::Value> {
        let _ = rate;
        Ok(branch.clone())
    }
    /// 2-D convolution of `x` `(batch, in, H, W)` with `w` `(out, in / groups, kh, kw)` and
    /// an optional bias `(out)`, as `torch.nn.functional.conv2d`.
    fn conv2d(
        &self,
        x: &Self::Value,
        w: &Self::Value,
        b: Option<&Self::Value>,
        spec: Conv2dSpec,
    ) -> Result<Self::Value>;
    /// `max(x, 0)`.
    fn relu(&self, x: &Self::Value) -> Result<Self::Value>;
    /// Maximum over `axis`, which is removed.
    fn max_axis(&self, x: &Self::Value, axis: usize) -> Result<Self::Value>;
}

/// The fused operations: each has a default composed of [`Backend`]'s primitives (what a
/// training backend records), so a backend opts in with `impl Fused for MyBackend {}` and
/// overrides only what it can run faster. [`Eager`](crate::Eager) runs them as single-pass
/// kernels, in place when nothing else holds the residual stream, and on packed weights.
pub trait Fused: Backend {
    /// Scaled dot-product attention with the heads merged: queries `q`
    /// `(batch, heads, nq, d)` over keys and values `(batch, heads, nk, d)` give
    /// `softmax(scale q k^T) v` as `(batch, nq, heads * d)`, ready for the output projection.
    ///
    /// The default composes the primitive operations (what a training backend records); an
    /// inference backend may fuse it and never store the attention map.
    fn attention(
        &self,
        q: &Self::Value,
        k: &Self::Value,
        v: &Self::Value,
        scale: f32,
    ) -> Result<Self::Value> {
        let logits = self.matmul(&self.scale(q, scale)?, &self.permute(k, &[0, 1, 3, 2])?)?;
        let out = self.matmul(&self.softmax(&logits)?, v)?;
        let &[batch, heads, tokens, head_dim] = self.shape(&out) else {
            return Err(OpsError::shape(
                "attention output",
                "(batch, heads, tokens, head_dim)",
                self.shape(&out),
            ));
        };
        let out = self.permute(&out, &[0, 2, 1, 3])?;
        self.reshape(&out, &[batch, tokens, heads * head_dim])
    }

    /// [`attention`](Self::attention) with its two products in bf16, for a model whose
    /// linear layers run in bf16 ([`Precision::Bf16`](crate::Precision::Bf16)): an inference
    /// backend rounds `scale q`, `k`, `v` and the attention weights to bf16 and accumulates
    /// in f32; the default (and any training backend) is the f32 attention.
    fn attention_bf16(
        &self,
        q: &Self::Value,
        k: &Self::Value,
        v: &Self::Value,
        scale: f32,
    ) -> Result<Self::Value> {
        self.attention(q, k, v, scale)
    }

    /// Whether this backend runs products on weights packed once ([`Param::packed_f32`]);
    /// layers then pass the packed copies, which are made on first use.
    fn packs_weights(&self) -> bool {
        false
    }

    /// `x W[cols]^T + b` where the weight has a packed f32 copy `packed`; the default runs
    /// the f32 [`linear`](Backend::linear) on `w`, the weight rows `cols`, with `b` already
    /// sliced.
    fn linear_packed_f32(
        &self,
        x: &Self::Value,
        packed: &PackedF32,
        cols: Range<usize>,
        w: &Self::Value,
        b: Option<&Self::Value>,
    ) -> Result<Self::Value> {
        let _ = (packed, cols);
        self.linear(x, w, b)
    }

    /// `x + branch_scale * drop_path(input W^T + b)`: a projection `p` closing a residual
    /// (the attention's output projection). The default composes the primitive operations
    /// ([`project`]); an inference backend may accumulate the product straight onto `x`,
    /// which it takes so that, when nothing else holds it, no copy is made.
    fn linear_residual(
        &self,
        x: Self::Value,
        input: &Self::Value,
        p: &Proj<'_, Self::Value>,
        branch_scale: f32,
        drop_path: f32,
    ) -> Result<Self::Value> {
        let branch = project(self, input, p, None)?;
        add_branch(self, &x, &branch, branch_scale, drop_path)
    }

    /// `layer_norm(x) W^T + b` over the last axis of `x`: a pre-norm projection (attention's
    /// qkv after `norm1`). The default composes the primitive operations ([`project`]); an
    /// inference backend may normalise rows in cache-sized chunks right before projecting
    /// them.
    fn norm_linear(
        &self,
        x: &Self::Value,
        norm: &Norm<Self::Value>,
        p: &Proj<'_, Self::Value>,
    ) -> Result<Self::Value> {
        let h = self.layer_norm(x, &norm.gamma, &norm.beta, norm.eps)?;
        project(self, &h, p, None)
    }

    /// `x + branch_scale * drop_path(proj(attention(qkv(layer_norm(x)))))`: the attention
    /// half of a pre-norm block, residual included. The default composes
    /// [`norm_linear`](Self::norm_linear), [`attention`](Self::attention) (or its bf16 form)
    /// and [`linear_residual`](Self::linear_residual); an inference backend may run it per
    /// image in cache, in place when nothing else holds `x`.
    fn attention_half(
        &self,
        x: Self::Value,
        p: &AttentionHalf<'_, Self::Value>,
    ) -> Result<Self::Value> {
        attention_half_composed(self, x, p)
    }

    /// `x + branch_scale * drop_path(fc2(gelu(fc1(layer_norm(x)))))`: the MLP half of a
    /// pre-norm block, residual included, over the last axis of `x`.
    ///
    /// The default composes the primitive operations; an inference backend may fuse it, in
    /// place when nothing else holds `x`.
    fn mlp_half(&self, x: Self::Value, p: &MlpHalf<'_, Self::Value>) -> Result<Self::Value> {
        let h = self.layer_norm(&x, &p.norm.gamma, &p.norm.beta, p.norm.eps)?;
        let hidden = self.gelu(&project(self, &h, &p.fc1, None)?)?;
        let branch = project(self, &hidden, &p.fc2, None)?;
        add_branch(self, &x, &branch, p.branch_scale, p.drop_path)
    }

    /// `x W[cols]^T + b` where the weight also has a packed bf16 copy `packed`: an inference
    /// backend may run the bf16 product; the default (and any training backend) runs the f32
    /// [`linear`](Backend::linear) on `w`, the f32 weight rows `cols`, with `b` already sliced.
    fn linear_packed(
        &self,
        x: &Self::Value,
        packed: &PackedBf16,
        cols: Range<usize>,
        w: &Self::Value,
        b: Option<&Self::Value>,
    ) -> Result<Self::Value> {
        let _ = (packed, cols);
        self.linear(x, w, b)
    }
}

/// [`Fused::attention_half`] as the composition of the backend's operations.
pub fn attention_half_composed<B: Fused + ?Sized>(
    bk: &B,
    x: B::Value,
    p: &AttentionHalf<'_, B::Value>,
) -> Result<B::Value> {
    let qkv = bk.norm_linear(&x, &p.norm, &p.qkv)?;
    let heads = split_qkv(bk, &qkv, bk.shape(&x), p.heads)?;
    let (q, k, v) = (&heads.q, &heads.k, &heads.v);
    let out = if p.bf16_attention {
        bk.attention_bf16(q, k, v, p.scale)?
    } else {
        bk.attention(q, k, v, p.scale)?
    };
    bk.linear_residual(x, &out, &p.proj, p.branch_scale, p.drop_path)
}

/// `x W^T + b` for the projection `p`: on its packed copy where it has one (its output
/// features `cols`, all when `None`, with `p`'s values holding just those rows), else on its
/// f32 weight.
pub fn project<B: Fused + ?Sized>(
    bk: &B,
    x: &B::Value,
    p: &Proj<'_, B::Value>,
    cols: Option<Range<usize>>,
) -> Result<B::Value> {
    let (w, b) = (&p.weight, p.bias.as_ref());
    let cols = cols.unwrap_or(0..p.packed.map_or(0, |packed| packed.shape().0));
    match p.packed {
        Some(PackedWeight::Bf16(packed)) => bk.linear_packed(x, packed, cols, w, b),
        Some(PackedWeight::F32(packed)) => bk.linear_packed_f32(x, packed, cols, w, b),
        None => bk.linear(x, w, b),
    }
}

/// `x + branch_scale * drop_path(branch)`: how every residual branch closes (the scale is
/// LV-ViT's `1 / skip_lam`; nothing is scaled when it is 1).
pub fn add_branch<B: Backend + ?Sized>(
    bk: &B,
    x: &B::Value,
    branch: &B::Value,
    branch_scale: f32,
    drop_path: f32,
) -> Result<B::Value> {
    let branch = bk.drop_path(branch, drop_path)?;
    if branch_scale == 1.0 {
        bk.add(x, &branch)
    } else {
        bk.add(x, &bk.scale(&branch, branch_scale)?)
    }
}

/// Queries, keys and values split into heads, each `(batch, heads, tokens, head_dim)`.
#[derive(Clone, Debug)]
pub struct Heads<V> {
    /// Queries.
    pub q: V,
    /// Keys.
    pub k: V,
    /// Values.
    pub v: V,
}

/// A fused `[q; k; v]` projection `qkv` of tokens shaped `x_shape` `(batch, tokens, dim)`
/// split into `heads` per-head queries, keys and values (views in eager mode).
pub fn split_qkv<B: Backend + ?Sized>(
    bk: &B,
    qkv: &B::Value,
    x_shape: &[usize],
    heads: usize,
) -> Result<Heads<B::Value>> {
    let &[batch, tokens, dim] = x_shape else {
        return Err(OpsError::shape(
            "attention input",
            "(batch, tokens, dim)",
            x_shape,
        ));
    };
    let qkv = bk.reshape(qkv, &[batch, tokens, 3, heads, dim / heads.max(1)])?;
    let qkv = bk.permute(&qkv, &[2, 0, 3, 1, 4])?;
    Ok(Heads {
        q: bk.select(&qkv, 0, 0)?,
        k: bk.select(&qkv, 0, 1)?,
        v: bk.select(&qkv, 0, 2)?,
    })
}
