//! The selection forms of a transformer block, written over [`TokenBlock`].

use idlevit_ops::Backend;
use idlevit_tensor::Tensor;

use crate::{SelectorError, TokenBlock, TokenSelection, cls_scores, evit_keep_count};

/// The `keep` best rows of `x` by the block's token scores.
fn select<B: Backend, T: TokenBlock<B>>(
    bk: &B,
    block: &T,
    x: &B::Value,
    keep: usize,
) -> Result<TokenSelection, T::Error> {
    let scores = block.token_scores(bk, x)?;
    Ok(from_block_scores(block, &scores, keep)?)
}

/// A selection from scores of every row `(batch, tokens)`: the class row, when the block has
/// one, is kept and not scored.
fn from_block_scores<B: Backend, T: TokenBlock<B>>(
    block: &T,
    scores: &Tensor,
    keep: usize,
) -> crate::Result<TokenSelection> {
    if !block.has_class_token() {
        return TokenSelection::from_row_scores(scores, keep);
    }
    let tokens = scores.shape().get(1).copied().unwrap_or(0);
    if tokens < 2 {
        return Err(SelectorError::Schedule(format!(
            "a layer of {tokens} token(s) has no image token to select"
        )));
    }
    TokenSelection::from_scores(&scores.slice_axis(1, 1, tokens)?, keep)
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

/// A top-k pruning layer: like [`idle_gathered`], but the output holds only the selected
/// rows `(batch, selected, dim)`; the others are dropped for good.
pub fn prune_gathered<B: Backend, T: TokenBlock<B>>(
    bk: &B,
    block: &T,
    x: &B::Value,
    keep: usize,
) -> Result<(B::Value, TokenSelection), T::Error> {
    let selection = select(bk, block, x, keep)?;
    let y = block.forward_rows(bk, x, selection.indices())?;
    Ok((y, selection))
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

/// An EViT layer (Liang et al., 2022): full attention, then the `ceil(rate n)` image tokens
/// the class token attends to most are kept (descending attention) and the rest are fused
/// into one token — their features summed, weighted by their class attention (EViT's
/// inattentive token fusion, unnormalised) — before the MLP. Returns the reduced tokens and
/// the kept selection (`None` when every token is kept and nothing is fused). Needs a block
/// with a class token whose keys are its tokens.
pub fn evit_fused<B: Backend, T: TokenBlock<B>>(
    bk: &B,
    block: &T,
    x: &B::Value,
    rate: f64,
) -> Result<(B::Value, Option<TokenSelection>), T::Error> {
    let parts = block.attention_parts(bk, x)?;
    if !(block.has_class_token() && parts.keys_are_tokens) {
        return Err(SelectorError::Unsupported(
            "EViT fuses tokens by their class attention: the block needs a class token and \
             keys that are its tokens"
                .into(),
        )
        .into());
    }
    let weights = bk.softmax(&parts.logits)?;
    let branch = block.attention_branch(bk, &weights, &parts.values)?;
    let x = block.residual(bk, x, &branch)?;
    let &[batch, tokens, _] = bk.shape(&x) else {
        return Err(SelectorError::Schedule(format!(
            "EViT tokens must be (batch, tokens, dim), found {:?}",
            bk.shape(&x)
        ))
        .into());
    };
    let keep = evit_keep_count(tokens - 1, rate)?;
    if keep == tokens - 1 {
        return Ok((block.mlp_residual(bk, x)?, None));
    }
    let selection = TokenSelection::from_scores(&cls_scores(&bk.to_tensor(&weights))?, keep)?;
    let complement = selection.complement();
    let num_heads = bk.shape(&weights)[1];
    // Mean over heads of the class attention row, kept on the tape: (batch, 1, tokens).
    let head_mean = Tensor::full(&[batch, 1, num_heads], 1.0 / num_heads as f32)
        .map_err(SelectorError::from)?;
    let head_mean = bk.constant(head_mean);
    let cls_attention = bk.matmul(&head_mean, &bk.select(&weights, 2, 0)?)?;
    let fuse_weights = bk.gather_rows(&bk.permute(&cls_attention, &[0, 2, 1])?, &complement)?;
    let fused = bk.matmul(
        &bk.permute(&fuse_weights, &[0, 2, 1])?,
        &bk.gather_rows(&x, &complement)?,
    )?;
    let x = bk.concat(&[bk.gather_rows(&x, selection.indices())?, fused], 1)?;
    Ok((block.mlp_residual(bk, x)?, Some(selection)))
}
