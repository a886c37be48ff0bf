//! Top-k pruning: unselected tokens are dropped for good.

use idlevit_ops::Backend;

use crate::forms::select;
use crate::{LayerKeep, PolicyStep, SelectionPolicy, TokenBlock, TokenSelection, keep_count};

/// The top-k pruning policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Prune;

impl SelectionPolicy for Prune {
    fn drops_tokens(&self) -> bool {
        true
    }

    fn gathered<B: Backend, T: TokenBlock<B>>(
        &self,
        bk: &B,
        block: &T,
        x: B::Value,
        at: LayerKeep,
    ) -> Result<PolicyStep<B::Value>, T::Error> {
        let keep = keep_count(at.image_tokens, at.ratio)?;
        let (output, selection) = prune_gathered(bk, block, &x, keep)?;
        Ok(PolicyStep {
            output,
            selection: Some(selection),
        })
    }
}

/// A top-k pruning layer: like [`idle_gathered`](crate::idle_gathered), but the output holds only the selected
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
