//! EViT (Liang et al., 2022): after attention, the least attended tokens are fused into one.

use idlevit_ops::Backend;
use idlevit_tensor::Tensor;

use crate::{
    LayerKeep, PolicyStep, SelectionPolicy, SelectorError, TokenBlock, TokenSelection, cls_scores,
    evit_keep_count,
};

/// The EViT policy: each layer's rate applies to the tokens present there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Evit;

impl SelectionPolicy for Evit {
    fn drops_tokens(&self) -> bool {
        true
    }

    /// Selections are not reported: the fused token has no position of its own.
    fn gathered<B: Backend, T: TokenBlock<B>>(
        &self,
        bk: &B,
        block: &T,
        x: B::Value,
        at: LayerKeep,
    ) -> Result<PolicyStep<B::Value>, T::Error> {
        let (output, _) = evit_fused(bk, block, &x, at.ratio)?;
        Ok(PolicyStep {
            output,
            selection: None,
        })
    }
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
