//! Multi-head self-attention with a fused qkv projection.

use crate::{
    AttentionHalfParams, Backend, Eager, LayerNorm, Linear, NnError, NormLinearParams,
    PackedWeight, Result, Tensor, WeightSource,
};

/// Multi-head self-attention as timm's `Attention`: one `qkv` linear whose output rows are
/// `[q; k; v]` (heads contiguous inside each), scaled dot-product attention, then `proj`.
#[derive(Clone, Debug)]
pub struct Attention {
    qkv: Linear,
    proj: Linear,
    num_heads: usize,
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

    /// Spec section 2's idle-layer scores of every token of the normalised input `h`
    /// `(batch, tokens, dim)`: `S[j]`, the mean over heads of the CLS query's scaled logit
    /// `s q_cls,h · k_h[j]`, as `(batch, tokens)` (token 0 is CLS itself).
    ///
    /// The logit is linear in the key, so no key is computed: with `q = q_cls`, the mean over
    /// heads is `S[j] = h_j · u + c` for `u = (s / H) W_k^T q` and `c = (s / H) q · b_k`. That
    /// costs `(N + 1) C + 3 C^2` multiply-adds per image instead of the `(N + 1) C^2` of
    /// projecting every token's key. Selection carries no gradient, so this runs on plain
    /// values.
    pub fn cls_key_scores(&self, h: &Tensor) -> Result<Tensor> {
        let bk = Eager;
        let &[batch, tokens, dim] = h.shape() else {
            return Err(NnError::shape(
                "scored tokens",
                "(batch, tokens, dim)",
                h.shape(),
            ));
        };
        if dim != self.dim() || tokens == 0 {
            return Err(NnError::shape(
                "scored tokens",
                format!("(batch, tokens >= 1, {})", self.dim()),
                h.shape(),
            ));
        }
        let q = self.project(&bk, &h.slice_axis(1, 0, 1)?, QkvPart::Query)?;
        let q = q.reshape(&[batch, dim])?;
        let factor = self.scale() / self.num_heads as f32;
        let key_rows = |t: &Tensor| t.slice_axis(0, dim, 2 * dim);
        let w_k = key_rows(self.qkv.weight().value())?;
        let u = bk.scale(&bk.matmul(&q, &w_k)?, factor)?;
        let scores = bk.matmul(h, &u.reshape(&[batch, dim, 1])?)?;
        let scores = scores.reshape(&[batch, tokens])?;
        match self.qkv.bias() {
            Some(b) => {
                let b_k = key_rows(b.value())?.reshape(&[dim, 1])?;
                let c = bk.scale(&bk.matmul(&q, &b_k)?, factor)?;
                bk.add(&scores, &c)
            }
            None => Ok(scores),
        }
    }

    /// [`cls_key_scores`](Self::cls_key_scores) of `norm(x)`, from `x` `(batch, tokens,
    /// dim)` without normalising it whole: only the CLS rows are normalised (for `q_cls`),
    /// and with layer norm's scale folded into `u` and its shift into `c`, each token's score
    /// is its normalised row's dot product with `gamma * u`, computed from the row's mean and
    /// variance in one pass over it (`kernels::layer_norm_dot`).
    pub fn norm_cls_key_scores(&self, norm: &LayerNorm, x: &Tensor) -> Result<Tensor> {
        let bk = Eager;
        let &[batch, tokens, dim] = x.shape() else {
            return Err(NnError::shape(
                "scored tokens",
                "(batch, tokens, dim)",
                x.shape(),
            ));
        };
        let (gamma, beta) = (norm.weight().value(), norm.bias().value());
        if dim != self.dim() || tokens == 0 || gamma.shape() != [dim] || beta.shape() != [dim] {
            return Err(NnError::shape(
                "scored tokens",
                format!("(batch, tokens >= 1, {})", self.dim()),
                x.shape(),
            ));
        }
        let h_cls = norm.forward(&bk, &x.slice_axis(1, 0, 1)?)?;
        let q = self.project(&bk, &h_cls, QkvPart::Query)?;
        let q = q.reshape(&[batch, dim])?;
        let factor = self.scale() / self.num_heads as f32;
        let key_rows = |t: &Tensor| t.slice_axis(0, dim, 2 * dim);
        let u = bk.scale(
            &bk.matmul(&q, &key_rows(self.qkv.weight().value())?)?,
            factor,
        )?;
        let u = u.to_vec();
        let (gamma, beta) = (gamma.to_vec(), beta.to_vec());
        let g: Vec<f32> = u
            .chunks_exact(dim)
            .flat_map(|u| u.iter().zip(&gamma).map(|(u, g)| u * g))
            .collect();
        let mut shift: Vec<f32> = u
            .chunks_exact(dim)
            .map(|u| u.iter().zip(&beta).map(|(u, b)| u * b).sum())
            .collect();
        if let Some(b) = self.qkv.bias() {
            let b_k = key_rows(b.value())?.reshape(&[dim, 1])?;
            let c = bk.scale(&bk.matmul(&q, &b_k)?, factor)?;
            shift.iter_mut().zip(c.to_vec()).for_each(|(s, c)| *s += c);
        }
        let x = x.contiguous();
        let mut scores = vec![0.0; batch * tokens];
        let values = x.as_slice().unwrap_or_default();
        idlevit_kernels::layer_norm_dot(&mut scores, values, &g, norm.eps(), dim, tokens);
        for (image, c) in scores.chunks_exact_mut(tokens).zip(&shift) {
            image.iter_mut().for_each(|s| *s += c);
        }
        Ok(Tensor::from_vec(vec![batch, tokens], scores)?)
    }

    /// One of q, k or v for the tokens of `h` `(batch, tokens, dim)`, heads not yet split.
    pub fn project<B: Backend>(&self, bk: &B, h: &B::Value, part: QkvPart) -> Result<B::Value> {
        let c = self.dim();
        let start = part as usize * c;
        self.qkv.forward_outputs(bk, h, start, start + c)
    }

    /// `(batch, tokens, dim)` to `(batch, heads, tokens, head_dim)` (a view in eager mode).
    pub fn split_heads<B: Backend>(&self, bk: &B, x: &B::Value) -> Result<B::Value> {
        let &[batch, tokens, _] = bk.shape(x) else {
            return Err(NnError::shape(
                "attention tokens",
                "(batch, tokens, dim)",
                bk.shape(x),
            ));
        };
        let x = bk.reshape(x, &[batch, tokens, self.num_heads, self.head_dim()])?;
        bk.permute(&x, &[0, 2, 1, 3])
    }

    /// Projects `x` `(batch, tokens, dim)` to per-head queries, keys and values with one
    /// fused product.
    pub fn heads<B: Backend>(&self, bk: &B, x: &B::Value) -> Result<Heads<B::Value>> {
        split_qkv(bk, &self.qkv.forward(bk, x)?, bk.shape(x), self.num_heads)
    }

    /// `x + branch_scale * drop_path(proj(attention(qkv(norm(x)))))`: the attention half of
    /// a pre-norm block through [`Backend::attention_half`] (in inference, one image at a time
    /// in cache and in place when nothing else holds `x`).
    pub fn residual_half<B: Backend>(
        &self,
        bk: &B,
        norm: &LayerNorm,
        x: B::Value,
        branch_scale: f32,
        drop_path: f32,
    ) -> Result<B::Value> {
        let param = |p: &crate::Param| bk.param(p);
        let (gamma, beta) = (param(norm.weight()), param(norm.bias()));
        let (w_qkv, b_qkv) = (param(self.qkv.weight()), self.qkv.bias().map(param));
        let (w_proj, b_proj) = (param(self.proj.weight()), self.proj.bias().map(param));
        let params = AttentionHalfParams {
            qkv: NormLinearParams {
                norm_gamma: &gamma,
                norm_beta: &beta,
                norm_eps: norm.eps(),
                weight: &w_qkv,
                bias: b_qkv.as_ref(),
                packed: PackedWeight::of(bk, self.qkv.weight()),
            },
            proj_weight: &w_proj,
            proj_bias: b_proj.as_ref(),
            proj_packed: PackedWeight::of(bk, self.proj.weight()),
            heads: self.num_heads,
            scale: self.scale(),
            bf16_attention: self.qkv.weight().packed_bf16().is_some(),
            branch_scale,
            drop_path,
        };
        bk.attention_half(x, &params)
    }

    /// Scaled attention logits `s q k^T`, `(batch, heads, queries, keys)`.
    pub fn logits<B: Backend>(&self, bk: &B, q: &B::Value, k: &B::Value) -> Result<B::Value> {
        let q = bk.scale(q, self.scale())?;
        bk.matmul(&q, &bk.permute(k, &[0, 1, 3, 2])?)
    }

    /// Values mixed by attention weights `(batch, heads, queries, keys)`, heads merged, then
    /// projected: `proj(weights v)`.
    pub fn attend_weights<B: Backend>(
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
    /// and the selected rows of an idle layer compute, through [`Backend::attention`] (fused
    /// in inference, where the attention map is never stored).
    ///
    /// [`forward`]: Self::forward
    pub fn attend_heads<B: Backend>(
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
    fn attention<B: Backend>(
        &self,
        bk: &B,
        q: &B::Value,
        k: &B::Value,
        v: &B::Value,
    ) -> Result<B::Value> {
        if self.qkv.weight().packed_bf16().is_some() {
            bk.attention_bf16(q, k, v, self.scale())
        } else {
            bk.attention(q, k, v, self.scale())
        }
    }

    /// `proj(softmax(logits) v)`.
    pub fn attend<B: Backend>(&self, bk: &B, logits: &B::Value, v: &B::Value) -> Result<B::Value> {
        self.attend_weights(bk, &bk.softmax(logits)?, v)
    }

    /// Full self-attention of `x` `(batch, tokens, dim)`.
    pub fn forward<B: Backend>(&self, bk: &B, x: &B::Value) -> Result<B::Value> {
        let Heads { q, k, v } = self.heads(bk, x)?;
        self.attend_heads(bk, &q, &k, &v)
    }
}

/// A fused `[q; k; v]` projection `qkv` of tokens shaped `x_shape` `(batch, tokens, dim)`
/// split into `heads` per-head queries, keys and values.
pub(crate) fn split_qkv<B: Backend + ?Sized>(
    bk: &B,
    qkv: &B::Value,
    x_shape: &[usize],
    heads: usize,
) -> Result<Heads<B::Value>> {
    let &[batch, tokens, dim] = x_shape else {
        return Err(NnError::shape(
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
