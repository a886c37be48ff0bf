//! What every selection form shares: choosing the rows a block computes.

use idlevit_ops::Backend;
use idlevit_tensor::Tensor;

use crate::{SelectorError, TokenBlock, TokenSelection};

/// The `keep` best rows of `x` by the block's token scores.
pub(crate) fn select<B: Backend, T: TokenBlock<B>>(
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
pub(crate) fn from_block_scores<B: Backend, T: TokenBlock<B>>(
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
