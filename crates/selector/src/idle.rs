//! IdleViT: unselected tokens skip the layer unchanged and stay selectable in later layers.

use idlevit_ops::Backend;
use idlevit_tensor::Tensor;

use crate::forms::{from_block_scores, select};
use crate::{LayerKeep, PolicyStep, SelectionPolicy, TokenBlock, TokenSelection, keep_count};

/// The idle policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Idle;

impl SelectionPolicy for Idle {
    fn gathered<B: Backend, T: TokenBlock<B>>(
        &self,
        bk: &B,
        block: &T,
        x: B::Value,
        at: LayerKeep,
    ) -> Result<PolicyStep<B::Value>, T::Error> {
        let keep = keep_count(at.image_tokens, at.ratio)?;
        let (output, selection) = idle_gathered(bk, block, x, keep)?;
        Ok(PolicyStep {
            output,
            selection: Some(selection),
        })
    }
}

/// An IdleViT layer in its inference form: the block scores every token, and only the
/// selected rows (the class token and the `keep` best image tokens) are computed
/// ([`TokenBlock::forward_rows`]); every other row of the output is the input row,
/// untouched, so an idle token can be picked again later. Takes `x` by value so that, when
/// nothing else holds it, the new rows are written into it in place.
pub fn idle_gathered<B: Backend, T: TokenBlock<B>>(
    bk: &B,
    block: &T,
    x: B::Value,
    keep: usize,
) -> Result<(B::Value, TokenSelection), T::Error> {
    let selection = select(bk, block, &x, keep)?;
    let y = block.forward_rows(bk, &x, selection.indices())?;
    Ok((bk.scatter_rows_into(x, selection.indices(), &y)?, selection))
}

/// What the masked (training) form of an idle layer returns.
#[derive(Clone, Debug)]
pub struct MaskedLayer<V> {
    /// The layer output, all tokens `(batch, tokens, dim)`.
    pub output: V,
    /// The selected rows.
    pub selection: TokenSelection,
    /// The 0/1 token mask `(batch, tokens, 1)`.
    pub token_mask: Tensor,
    /// The attention logits before masking, `(batch, heads, tokens, keys)`, for the cut
    /// loss.
    pub logits: V,
}

/// An IdleViT layer in its training form: every token stays in the tensors, the selection
/// comes from the attention's own scores, unselected keys get
/// [`KEY_MASK_VALUE`](crate::KEY_MASK_VALUE) (when keys are tokens), and both residual
/// updates are multiplied by the 0/1 token mask, so unselected rows leave the layer
/// unchanged and gradients reach only what the inference form computes.
pub fn idle_masked<B: Backend, T: TokenBlock<B>>(
    bk: &B,
    block: &T,
    x: &B::Value,
    keep: usize,
) -> Result<MaskedLayer<B::Value>, T::Error> {
    let parts = block.attention_parts(bk, x)?;
    let selection = from_block_scores(block, &parts.scores, keep)?;
    let weights = if parts.keys_are_tokens {
        bk.softmax(&bk.add(&parts.logits, &bk.constant(selection.key_mask()?))?)?
    } else {
        bk.softmax(&parts.logits)?
    };
    let token_mask = selection.token_mask()?;
    let mask = bk.constant(token_mask.clone());
    let update = bk.mul(&block.attention_branch(bk, &weights, &parts.values)?, &mask)?;
    let x = block.residual(bk, x, &update)?;
    let update = bk.mul(&block.mlp_branch(bk, &x)?, &mask)?;
    Ok(MaskedLayer {
        output: block.residual(bk, &x, &update)?,
        selection,
        token_mask,
        logits: parts.logits,
    })
}
