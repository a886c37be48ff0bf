//! Multi-head self-attention with a fused qkv projection.

use crate::{AttentionHalf, Fused, Heads, LayerNorm, Linear, NnError, Result, WeightSource};

/// Multi-head self-attention as timm's `Attention`: one `qkv` linear whose output rows are
/// `[q; k; v]` (heads contiguous inside each), scaled dot-product attention, then `proj`.
#[derive(Clone, Debug)]
pub struct Attention {
    qkv: Linear,
    proj: Linear,
    num_heads: usize,
}

/// One third of the fused qkv projection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QkvPart {
    /// Queries: rows `0..C` of the qkv weight.
    Query = 0,
    /// Keys: rows `C..2C`.
    Key = 1,
    /// Values: rows `2C..3C`.
    Value = 2,
}

crate::params!(Attention: qkv, proj);

impl Attention {
    /// Reads `{prefix}.qkv.*` `(3 dim, dim)` and `{prefix}.proj.*` `(dim, dim)`.
    pub fn load(
        src: &mut dyn WeightSource,
        prefix: &str,
        dim: usize,
        num_heads: usize,
        qkv_bias: bool,
    ) -> Result<Self> {
        if num_heads == 0 || !dim.is_multiple_of(num_heads) {
            return Err(NnError::Config(format!(
                "width {dim} is not divisible by {num_heads} heads"
            )));
        }
        Ok(Self {
            qkv: Linear::load(src, &format!("{prefix}.qkv"), dim, 3 * dim, qkv_bias)?,
            proj: Linear::load(src, &format!("{prefix}.proj"), dim, dim, true)?,
            num_heads,
        })
    }

    /// The number of heads.
    pub fn num_heads(&self) -> usize {
        self.num_heads
    }

    /// The token width.
    pub fn dim(&self) -> usize {
        self.proj.out_features()
    }

    /// The width of one head.
    pub fn head_dim(&self) -> usize {
        self.dim() / self.num_heads
    }

    /// The softmax temperature `head_dim^-1/2`.
    pub fn scale(&self) -> f32 {
        (self.head_dim() as f32).powf(-0.5)
    }

    /// The fused `[q; k; v]` projection.
    pub fn qkv(&self) -> &Linear {
        &self.qkv
    }

    /// The output projection.
    pub fn proj(&self) -> &Linear {
        &self.proj
    }

    /// One of q, k or v for the tokens of `h` `(batch, tokens, dim)`, heads not yet split.
    pub fn project<B: Fused>(&self, bk: &B, h: &B::Value, part: QkvPart) -> Result<B::Value> {
        let c = self.dim();
        let start = part as usize * c;
        self.qkv.forward_outputs(bk, h, start, start + c)
    }

    /// `(batch, tokens, dim)` to `(batch, heads, tokens, head_dim)` (a view in eager mode).
    pub fn split_heads<B: Fused>(&self, bk: &B, x: &B::Value) -> Result<B::Value> {
        let &[batch, tokens, _] = bk.shape(x) else {
            return Err(NnError::shape(
                "attention tokens",
                "(batch, tokens, dim)",
                bk.shape(x),
            ));
        };
        let x = bk.reshape(x, &[batch, tokens, self.num_heads, self.head_dim()])?;
        Ok(bk.permute(&x, &[0, 2, 1, 3])?)
    }

    /// Projects `x` `(batch, tokens, dim)` to per-head queries, keys and values with one
    /// fused product.
    pub fn heads<B: Fused>(&self, bk: &B, x: &B::Value) -> Result<Heads<B::Value>> {
        Ok(idlevit_ops::split_qkv(
            bk,
            &self.qkv.forward(bk, x)?,
            bk.shape(x),
            self.num_heads,
        )?)
    }

    /// `x + branch_scale * drop_path(proj(attention(qkv(norm(x)))))`: the attention half of
    /// a pre-norm block through [`Fused::attention_half`] (in inference, one image at a time
    /// in cache and in place when nothing else holds `x`).
    pub fn residual_half<B: Fused>(
        &self,
        bk: &B,
        norm: &LayerNorm,
        x: B::Value,
        branch_scale: f32,
        drop_path: f32,
    ) -> Result<B::Value> {
        let params = AttentionHalf {
            norm: norm.params(bk),
            qkv: self.qkv.params(bk),
            proj: self.proj.params(bk),
            heads: self.num_heads,
            scale: self.scale(),
            bf16_attention: self.qkv.weight().packed_bf16().is_some(),
            branch_scale,
            drop_path,
        };
        Ok(bk.attention_half(x, &params)?)
    }

    /// Scaled attention logits `s q k^T`, `(batch, heads, queries, keys)`.
    pub fn logits<B: Fused>(&self, bk: &B, q: &B::Value, k: &B::Value) -> Result<B::Value> {
        let q = bk.scale(q, self.scale())?;
        Ok(bk.matmul(&q, &bk.permute(k, &[0, 1, 3, 2])?)?)
    }

    /// Values mixed by attention weights `(batch, heads, queries, keys)`, heads merged, then
    /// projected: `proj(weights v)`.
    pub fn attend_weights<B: Fused>(
        &self,
        bk: &B,
        weights: &B::Value,
        v: &B::Value,
    ) -> Result<B::Value> {
        let out = bk.matmul(weights, v)?;
        let &[batch, heads, tokens, head_dim] = bk.shape(&out) else {
            return Err(NnError::shape(
                "attention output",
                "(batch, heads, tokens, head_dim)",
                bk.shape(&out),
            ));
        };
        let out = bk.permute(&out, &[0, 2, 1, 3])?;
        let out = bk.reshape(&out, &[batch, tokens, heads * head_dim])?;
        self.proj.forward(bk, &out)
    }

    /// `proj(softmax(s q k^T) v)` for per-head queries, keys and values: what [`forward`]
    /// and the selected rows of an idle layer compute, through [`Fused::attention`] (fused
    /// in inference, where the attention map is never stored).
    ///
    /// [`forward`]: Self::forward
    pub fn attend_heads<B: Fused>(
        &self,
        bk: &B,
        q: &B::Value,
        k: &B::Value,
        v: &B::Value,
    ) -> Result<B::Value> {
        self.proj.forward(bk, &self.attention(bk, q, k, v)?)
    }

    /// `softmax(s q k^T) v` with the heads merged, in bf16 when this layer's weights run in
    /// bf16 ([`Backend::attention_bf16`]).
    fn attention<B: Fused>(
        &self,
        bk: &B,
        q: &B::Value,
        k: &B::Value,
        v: &B::Value,
    ) -> Result<B::Value> {
        if self.qkv.weight().packed_bf16().is_some() {
            Ok(bk.attention_bf16(q, k, v, self.scale())?)
        } else {
            Ok(bk.attention(q, k, v, self.scale())?)
        }
    }

    /// `proj(softmax(logits) v)`.
    pub fn attend<B: Fused>(&self, bk: &B, logits: &B::Value, v: &B::Value) -> Result<B::Value> {
        self.attend_weights(bk, &bk.softmax(logits)?, v)
    }

    /// Full self-attention of `x` `(batch, tokens, dim)`.
    pub fn forward<B: Fused>(&self, bk: &B, x: &B::Value) -> Result<B::Value> {
        let Heads { q, k, v } = self.heads(bk, x)?;
        self.attend_heads(bk, &q, &k, &v)
    }
}
