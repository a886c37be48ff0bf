//! PVT-v2's layers: the overlapping patch embedding and the block (spatial-reduction
//! attention, depthwise-convolution MLP), with the block's idle forms as a [`TokenBlock`].

use idlevit_nn::{
    Backend, Conv2d, Conv2dSpec, ConvShape, Eager, Fused, LayerNorm, Linear, NnError, WeightSource,
};
use idlevit_selector::{AttentionParts, KeyScoring, TokenBlock, class_key_scores};
use idlevit_tensor::Tensor;

use super::{BLOCK_NORM_EPS, TORCH_NORM_EPS};
use crate::{Result, ZooError};

/// `(batch, tokens, C)` as a `(batch, C, side, side)` feature map.
pub(super) fn to_grid<B: Fused>(bk: &B, x: &B::Value, side: usize) -> Result<B::Value> {
    let &[batch, _, c] = bk.shape(x) else {
        return Err(NnError::shape("PVT tokens", "(batch, tokens, dim)", bk.shape(x)).into());
    };
    Ok(bk.reshape(&bk.permute(x, &[0, 2, 1])?, &[batch, c, side, side])?)
}

/// A `(batch, C, h, w)` feature map as `(batch, h w, C)` tokens.
fn from_grid<B: Fused>(bk: &B, x: &B::Value) -> Result<B::Value> {
    let &[batch, c, h, w] = bk.shape(x) else {
        return Err(NnError::shape("PVT feature map", "(batch, C, h, w)", bk.shape(x)).into());
    };
    Ok(bk.permute(&bk.reshape(x, &[batch, c, h * w])?, &[0, 2, 1])?)
}

/// `(batch, tokens, C)` to `(batch, heads, tokens, C / heads)`.
fn split_heads<B: Fused>(bk: &B, x: &B::Value, heads: usize) -> Result<B::Value> {
    let &[batch, tokens, c] = bk.shape(x) else {
        return Err(NnError::shape("attention tokens", "(batch, tokens, dim)", bk.shape(x)).into());
    };
    let x = bk.reshape(x, &[batch, tokens, heads, c / heads])?;
    Ok(bk.permute(&x, &[0, 2, 1, 3])?)
}

/// An overlapping patch embedding: a `k x k` convolution of stride `s` and padding `k / 2`,
/// then a layer norm over the channels.
#[derive(Clone, Debug)]
pub(super) struct PatchEmbed {
    proj: Conv2d,
    norm: LayerNorm,
}

idlevit_nn::params!(PatchEmbed: proj, norm);

impl PatchEmbed {
    pub(super) fn load(src: &mut dyn WeightSource, prefix: &str, shape: ConvShape) -> Result<Self> {
        Ok(Self {
            proj: Conv2d::load(src, &format!("{prefix}.proj"), shape, true)?,
            norm: LayerNorm::load(
                src,
                &format!("{prefix}.norm"),
                shape.out_channels,
                TORCH_NORM_EPS,
            )?,
        })
    }

    /// A feature map to normalised tokens `(batch, side^2, C)`.
    pub(super) fn forward<B: Fused>(&self, bk: &B, x: &B::Value) -> Result<B::Value> {
        let tokens = from_grid(bk, &self.proj.forward(bk, x)?)?;
        Ok(self.norm.forward(bk, &tokens)?)
    }
}

/// A PVT-v2 block: spatial-reduction attention and the MLP with a depthwise convolution,
/// each a pre-norm residual branch.
#[derive(Clone, Debug)]
pub(super) struct PvtBlock {
    norm1: LayerNorm,
    q: Linear,
    kv: Linear,
    /// The spatial reduction (convolution of kernel and stride `sr`, then a norm), if sr > 1.
    sr: Option<(Conv2d, LayerNorm)>,
    proj: Linear,
    norm2: LayerNorm,
    fc1: Linear,
    dwconv: Conv2d,
    fc2: Linear,
    heads: usize,
    side: usize,
    /// Stochastic-depth rate of both residual branches (a seeded training tape only).
    pub(super) drop_path: f32,
}

/// Stage hyper-parameters a block needs.
pub(super) struct StageShape {
    pub(super) dim: usize,
    pub(super) heads: usize,
    pub(super) sr: usize,
    pub(super) hidden: usize,
    pub(super) side: usize,
}

idlevit_nn::params!(PvtBlock: norm1, q, kv, sr, proj, norm2, fc1, dwconv, fc2);

impl PvtBlock {
    /// Reads the block under `p` in timm's order (seeded models draw in it).
    pub(super) fn load(src: &mut dyn WeightSource, p: &str, s: &StageShape) -> Result<Self> {
        let c = s.dim;
        let norm1 = LayerNorm::load(src, &format!("{p}.norm1"), c, BLOCK_NORM_EPS)?;
        let q = Linear::load(src, &format!("{p}.attn.q"), c, c, true)?;
        let kv = Linear::load(src, &format!("{p}.attn.kv"), c, 2 * c, true)?;
        let sr = (s.sr > 1)
            .then(|| -> Result<_> {
                let shape = ConvShape {
                    in_channels: c,
                    out_channels: c,
                    kernel: s.sr,
                    spec: Conv2dSpec::new(s.sr, 0),
                };
                Ok((
                    Conv2d::load(src, &format!("{p}.attn.sr"), shape, true)?,
                    LayerNorm::load(src, &format!("{p}.attn.norm"), c, TORCH_NORM_EPS)?,
                ))
            })
            .transpose()?;
        let dw = ConvShape {
            in_channels: s.hidden,
            out_channels: s.hidden,
            kernel: 3,
            spec: Conv2dSpec::new(1, 1).with_groups(s.hidden),
        };
        Ok(Self {
            norm1,
            q,
            kv,
            sr,
            proj: Linear::load(src, &format!("{p}.attn.proj"), c, c, true)?,
            norm2: LayerNorm::load(src, &format!("{p}.norm2"), c, BLOCK_NORM_EPS)?,
            fc1: Linear::load(src, &format!("{p}.mlp.fc1"), c, s.hidden, true)?,
            dwconv: Conv2d::load(src, &format!("{p}.mlp.dwconv"), dw, true)?,
            fc2: Linear::load(src, &format!("{p}.mlp.fc2"), s.hidden, c, true)?,
            heads: s.heads,
            side: s.side,
            drop_path: 0.0,
        })
    }

    fn scale(&self) -> f32 {
        ((self.q.out_features() / self.heads) as f32).powf(-0.5)
    }

    /// Keys and values `(batch, heads, reduced tokens, head_dim)` from the (reduced) map of
    /// the normalised tokens `h`.
    fn keys_values<B: Fused>(&self, bk: &B, h: &B::Value) -> Result<(B::Value, B::Value)> {
        let reduced = match &self.sr {
            Some((conv, norm)) => {
                let map = conv.forward(bk, &to_grid(bk, h, self.side)?)?;
                norm.forward(bk, &from_grid(bk, &map)?)?
            }
            None => h.clone(),
        };
        let c = self.q.out_features();
        let k = self.kv.forward_outputs(bk, &reduced, 0, c)?;
        let v = self.kv.forward_outputs(bk, &reduced, c, 2 * c)?;
        Ok((
            split_heads(bk, &k, self.heads)?,
            split_heads(bk, &v, self.heads)?,
        ))
    }

    /// `proj(softmax(s q k^T) v)` for the queries of the tokens `h_rows` `(batch, M, C)`,
    /// both products in bf16 when the layer's weights run in bf16.
    fn attend<B: Fused>(
        &self,
        bk: &B,
        h_rows: &B::Value,
        k: &B::Value,
        v: &B::Value,
    ) -> Result<B::Value> {
        let q = split_heads(bk, &self.q.forward(bk, h_rows)?, self.heads)?;
        let out = if self.q.weight().packed_bf16().is_some() {
            bk.attention_bf16(&q, k, v, self.scale())?
        } else {
            bk.attention(&q, k, v, self.scale())?
        };
        Ok(self.proj.forward(bk, &out)?)
    }

    /// The MLP's hidden features after the depthwise convolution and GELU, for every token
    /// of the grid `x` `(batch, side^2, C)`.
    fn mlp_hidden<B: Fused>(&self, bk: &B, x: &B::Value) -> Result<B::Value> {
        let hidden = self.fc1.forward(bk, &self.norm2.forward(bk, x)?)?;
        let mixed = self.dwconv.forward(bk, &to_grid(bk, &hidden, self.side)?)?;
        Ok(bk.gelu(&from_grid(bk, &mixed)?)?)
    }

    /// `x + drop_path(branch)`: how every form of the block closes a residual.
    fn residual<B: Fused>(&self, bk: &B, x: &B::Value, branch: &B::Value) -> Result<B::Value> {
        Ok(bk.add(x, &bk.drop_path(branch, self.drop_path)?)?)
    }

    /// The dense block over every token.
    fn dense<B: Fused>(&self, bk: &B, x: &B::Value) -> Result<B::Value> {
        let h = self.norm1.forward(bk, x)?;
        let (k, v) = self.keys_values(bk, &h)?;
        let x = self.residual(bk, x, &self.attend(bk, &h, &k, &v)?)?;
        let mlp = self.fc2.forward(bk, &self.mlp_hidden(bk, &x)?)?;
        self.residual(bk, &x, &mlp)
    }
}

/// The PVT block as a [`TokenBlock`]: no class token (every token of the grid is scored and
/// selectable), a virtual class query (the mean normalised token) for scoring, keys and
/// values from the reduced map, and an idle form whose MLP convolution reads idle tokens.
impl<B: Fused> TokenBlock<B> for PvtBlock {
    type Error = ZooError;

    fn has_class_token(&self) -> bool {
        false
    }

    fn forward(&self, bk: &B, x: B::Value) -> Result<B::Value> {
        self.dense(bk, &x)
    }

    /// Every token against the virtual class query through full-resolution keys (the
    /// attention's keys when nothing is reduced), detached: the choice carries no gradient.
    fn token_scores(&self, bk: &B, x: &B::Value) -> Result<Tensor> {
        let eager = Eager;
        let x = bk.to_tensor(x);
        let &[batch, tokens, c] = x.shape() else {
            return Err(NnError::shape("PVT tokens", "(batch, tokens, dim)", x.shape()).into());
        };
        let h = self.norm1.forward(&eager, &x)?;
        let mean = eager.scale(&eager.sum_axis(&h, 1, true)?, 1.0 / tokens as f32)?;
        let query = self.q.forward(&eager, &mean)?.reshape(&[batch, c])?;
        let key_rows = |t: &Tensor| t.slice_axis(0, 0, c);
        let key_weight = key_rows(self.kv.weight().value())?;
        let key_bias = self.kv.bias().map(|b| key_rows(b.value())).transpose()?;
        let scoring = KeyScoring {
            norm_gamma: self.norm1.weight().value(),
            norm_beta: self.norm1.bias().value(),
            norm_eps: self.norm1.eps(),
            key_weight: &key_weight,
            key_bias: key_bias.as_ref(),
            scale_per_head: self.scale() / self.heads as f32,
        };
        Ok(class_key_scores(&x, &query, &scoring)?)
    }

    /// The selected tokens' queries attend over the full reduced keys and values; then the
    /// MLP, whose depthwise convolution runs on the grid where idle tokens hold their input
    /// values.
    fn forward_rows(&self, bk: &B, x: &B::Value, rows: &[Vec<usize>]) -> Result<B::Value> {
        let h = self.norm1.forward(bk, x)?;
        let (k, v) = self.keys_values(bk, &h)?;
        let attended = self.attend(bk, &bk.gather_rows(&h, rows)?, &k, &v)?;
        let y = self.residual(bk, &bk.gather_rows(x, rows)?, &attended)?;
        let x = bk.scatter_rows(x, rows, &y)?;
        let hidden = bk.gather_rows(&self.mlp_hidden(bk, &x)?, rows)?;
        self.residual(bk, &y, &self.fc2.forward(bk, &hidden)?)
    }

    fn attention_parts(&self, bk: &B, x: &B::Value) -> Result<AttentionParts<B::Value>> {
        let h = self.norm1.forward(bk, x)?;
        let (k, v) = self.keys_values(bk, &h)?;
        let q = split_heads(bk, &self.q.forward(bk, &h)?, self.heads)?;
        let logits = bk.matmul(
            &bk.scale(&q, self.scale())?,
            &bk.permute(&k, &[0, 1, 3, 2])?,
        )?;
        Ok(AttentionParts {
            logits,
            values: v,
            scores: TokenBlock::<B>::token_scores(self, bk, x)?,
            keys_are_tokens: false,
        })
    }

    fn attention_branch(&self, bk: &B, weights: &B::Value, values: &B::Value) -> Result<B::Value> {
        let out = bk.matmul(weights, values)?;
        let &[batch, heads, tokens, head_dim] = bk.shape(&out) else {
            return Err(NnError::shape(
                "attention output",
                "(batch, heads, tokens, head_dim)",
                bk.shape(&out),
            )
            .into());
        };
        let out = bk.reshape(
            &bk.permute(&out, &[0, 2, 1, 3])?,
            &[batch, tokens, heads * head_dim],
        )?;
        Ok(self.proj.forward(bk, &out)?)
    }

    fn mlp_branch(&self, bk: &B, x: &B::Value) -> Result<B::Value> {
        Ok(self.fc2.forward(bk, &self.mlp_hidden(bk, x)?)?)
    }

    fn residual(&self, bk: &B, x: &B::Value, branch: &B::Value) -> Result<B::Value> {
        PvtBlock::residual(self, bk, x, branch)
    }
}
