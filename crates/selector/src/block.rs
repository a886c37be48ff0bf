//! What a transformer block offers the selection forms.

use idlevit_ops::{Backend, OpsError};
use idlevit_tensor::Tensor;

use crate::SelectorError;

/// The attention of a block over every token of its input, split where the masked and
/// fused forms need to step in: the logits, what they mix, and the tokens' scores.
#[derive(Clone, Debug)]
pub struct AttentionParts<V> {
    /// Scaled attention logits `(batch, heads, tokens, keys)`, before any mask.
    pub logits: V,
    /// What the attention weights mix, as [`TokenBlock::attention_branch`] takes it (the
    /// per-head values for a ViT block).
    pub values: V,
    /// Every token's selection score `(batch, tokens)`, detached: higher is kept first.
    pub scores: Tensor,
    /// Whether key `j` of `logits` is token `j` (a ViT block), so that unselected tokens can
    /// be masked as keys; `false` when keys come from a pooled map (PVT's spatial
    /// reduction).
    pub keys_are_tokens: bool,
}

/// A pre-norm transformer block that token selection can run in part: anything with an
/// attention half and an MLP half, each closing a residual. The layer forms of this crate
/// ([`idle_gathered`](crate::idle_gathered), [`idle_masked`](crate::idle_masked),
/// [`prune_gathered`](crate::prune_gathered), [`evit_fused`](crate::evit_fused)) and the
/// stack runners ([`run_layers`](crate::run_layers)) are written over this trait, so a
/// block defined anywhere idles by implementing it.
///
/// Values are `(batch, tokens, dim)`; whether row 0 is a class token is
/// [`has_class_token`](Self::has_class_token).
pub trait TokenBlock<B: Backend> {
    /// The block's error; the forms' own failures convert into it.
    type Error: From<SelectorError> + From<OpsError>;

    /// Whether row 0 is a class token: always computed, never scored. Blocks without one
    /// (PVT's token grids) score and select among every row.
    fn has_class_token(&self) -> bool {
        true
    }

    /// The dense block over every row of `x`, which it takes so that an inference backend
    /// may update it in place.
    fn forward(&self, bk: &B, x: B::Value) -> Result<B::Value, Self::Error>;

    /// Every row's selection score `(batch, tokens)` from the block's input, detached (a
    /// choice carries no gradient); for a ViT block, the class query's scaled attention
    /// logit averaged over heads ([`class_key_scores`](crate::class_key_scores) computes it
    /// without any key).
    fn token_scores(&self, bk: &B, x: &B::Value) -> Result<Tensor, Self::Error>;

    /// The new values `(batch, rows, dim)` of the rows `rows[b]` of `x` in an idle layer,
    /// every other row staying as it is. The default runs the dense block on the gathered
    /// rows alone, so selected tokens attend only to each other (IdleViT's ViT form); a block
    /// whose tokens also read unselected rows (a convolution over a grid) overrides it.
    fn forward_rows(
        &self,
        bk: &B,
        x: &B::Value,
        rows: &[Vec<usize>],
    ) -> Result<B::Value, Self::Error> {
        let gathered = bk.gather_rows(x, rows)?;
        self.forward(bk, gathered)
    }

    /// The attention over every token of `x`, in parts.
    fn attention_parts(
        &self,
        bk: &B,
        x: &B::Value,
    ) -> Result<AttentionParts<B::Value>, Self::Error>;

    /// The attention branch for attention weights `(batch, heads, tokens, keys)` over
    /// [`AttentionParts::values`]: `proj(weights v)`, heads merged, before the residual.
    fn attention_branch(
        &self,
        bk: &B,
        weights: &B::Value,
        values: &B::Value,
    ) -> Result<B::Value, Self::Error>;

    /// The MLP branch for the tokens `x`, before the residual.
    fn mlp_branch(&self, bk: &B, x: &B::Value) -> Result<B::Value, Self::Error>;

    /// `x + branch`, as the block closes each residual (with its layer scale and stochastic
    /// depth).
    fn residual(&self, bk: &B, x: &B::Value, branch: &B::Value) -> Result<B::Value, Self::Error>;

    /// `x + mlp(x)`, the MLP half with its residual; a block may fuse it.
    fn mlp_residual(&self, bk: &B, x: B::Value) -> Result<B::Value, Self::Error> {
        let branch = self.mlp_branch(bk, &x)?;
        self.residual(bk, &x, &branch)
    }
}
