//! The selection forms of a transformer block, written over the [`Backend`] trait.

use idlevit_nn::{Backend, Block};
use idlevit_tensor::Tensor;

use crate::{Result, TokenSelection, cls_scores, evit_keep_count};

/// Selects the `keep` best image tokens of `x` by the CLS query's attention logits, then runs
/// the block on the selected rows alone, attention over the selected keys only (spec section
/// 2, steps 1-4). Returns the updated selected rows `(batch, keep + 1, dim)` and the selection.
///
/// Nothing beyond the selected rows is computed or copied: the scores come from `x` and
/// `q_cls` without any key and without normalising `x` whole
/// ([`Attention::norm_cls_key_scores`]), `x` is gathered once, and the block (layer norm, q,
/// k and v, attention, MLP) runs on the `keep + 1` gathered rows. Layer norm works row by
/// row, so the gathered rows it normalises equal the rows of the spec's full `h`.
///
/// [`Attention::norm_cls_key_scores`]: idlevit_nn::Attention::norm_cls_key_scores
fn compute_selected<B: Backend>(
    bk: &B,
    block: &Block,
    x: &B::Value,
    keep: usize,
) -> Result<(B::Value, TokenSelection)> {
    let scores = block
        .attn()
        .norm_cls_key_scores(block.norm1(), &bk.to_tensor(x))?;
    let tokens = scores.shape()[1];
    if tokens < 2 {
        return Err(crate::SelectorError::Schedule(format!(
            "a layer of {tokens} token(s) has no image token to select"
        )));
    }
    let image_scores = scores.slice_axis(1, 1, tokens)?.contiguous();
    let selection = TokenSelection::from_scores(&image_scores, keep)?;
    let y = block.forward_owned(bk, bk.gather_rows(x, selection.indices())?)?;
    Ok((y, selection))
}

/// An IdleViT layer in its inference form: only the CLS token and the `keep` selected image
/// tokens are computed; every other row of the output is the input row, untouched. Takes `x`
/// by value so that, when nothing else holds it, the selected rows are scattered into it in
/// place.
pub fn idle_gathered<B: Backend>(
    bk: &B,
    block: &Block,
    x: B::Value,
    keep: usize,
) -> Result<(B::Value, TokenSelection)> {
    let (y, selection) = compute_selected(bk, block, &x, keep)?;
    Ok((bk.scatter_rows_into(x, selection.indices(), &y)?, selection))
}

/// A top-k pruning layer: like [`idle_gathered`], but the output holds only the selected
/// rows `(batch, keep + 1, dim)`; the others are dropped for good.
pub fn prune_gathered<B: Backend>(
    bk: &B,
    block: &Block,
    x: &B::Value,
    keep: usize,
) -> Result<(B::Value, TokenSelection)> {
    compute_selected(bk, block, x, keep)
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
    /// The attention logits before masking, `(batch, heads, tokens, tokens)`, for the cut
    /// loss.
    pub logits: V,
}

/// An IdleViT layer in its training form (spec section 3): every token stays in the tensors,
/// unselected keys get [`KEY_MASK_VALUE`](crate::KEY_MASK_VALUE), and the residual updates
/// are multiplied by the 0/1 token mask, so unselected rows leave the layer unchanged.
pub fn idle_masked<B: Backend>(
    bk: &B,
    block: &Block,
    x: &B::Value,
    keep: usize,
) -> Result<MaskedLayer<B::Value>> {
    let attn = block.attn();
    let h = block.norm1().forward(bk, x)?;
    let heads = attn.heads(bk, &h)?;
    let logits = attn.logits(bk, &heads.q, &heads.k)?;
    let selection = TokenSelection::from_scores(&cls_scores(&bk.to_tensor(&logits))?, keep)?;
    let masked_logits = bk.add(&logits, &bk.constant(selection.key_mask()?))?;
    let token_mask = selection.token_mask()?;
    let mask = bk.constant(token_mask.clone());
    let update = bk.mul(&attn.attend(bk, &masked_logits, &heads.v)?, &mask)?;
    let x = block.residual(bk, x, &update)?;
    let update = bk.mul(&block.mlp_branch(bk, &x)?, &mask)?;
    Ok(MaskedLayer {
        output: block.residual(bk, &x, &update)?,
        selection,
        token_mask,
        logits,
    })
}

/// An EViT layer (Liang et al., 2022): full attention, then the `ceil(rate n)` image tokens
/// the CLS token attends to most are kept (descending attention) and the rest are fused into
/// one token — their features summed, weighted by their CLS attention (EViT's inattentive
/// token fusion, unnormalised) — before the MLP. Returns the reduced tokens and the kept
/// selection (`None` when every token is kept and nothing is fused).
pub fn evit_fused<B: Backend>(
    bk: &B,
    block: &Block,
    x: &B::Value,
    rate: f64,
) -> Result<(B::Value, Option<TokenSelection>)> {
    let attn = block.attn();
    let h = block.norm1().forward(bk, x)?;
    let heads = attn.heads(bk, &h)?;
    let weights = bk.softmax(&attn.logits(bk, &heads.q, &heads.k)?)?;
    let x = block.residual(bk, x, &attn.attend_weights(bk, &weights, &heads.v)?)?;
    let &[batch, tokens, _] = bk.shape(&x) else {
        unreachable!("attention checked the token layout");
    };
    let keep = evit_keep_count(tokens - 1, rate)?;
    if keep == tokens - 1 {
        return Ok((block.mlp_residual(bk, x)?, None));
    }
    let selection = TokenSelection::from_scores(&cls_scores(&bk.to_tensor(&weights))?, keep)?;
    let complement = selection.complement();
    let num_heads = bk.shape(&weights)[1];
    // Mean over heads of the CLS attention row, kept on the tape: (batch, 1, tokens).
    let head_mean = bk.constant(Tensor::full(
        &[batch, 1, num_heads],
        1.0 / num_heads as f32,
    )?);
    let cls_attention = bk.matmul(&head_mean, &bk.select(&weights, 2, 0)?)?;
    let fuse_weights = bk.gather_rows(&bk.permute(&cls_attention, &[0, 2, 1])?, &complement)?;
    let fused = bk.matmul(
        &bk.permute(&fuse_weights, &[0, 2, 1])?,
        &bk.gather_rows(&x, &complement)?,
    )?;
    let x = bk.concat(&[bk.gather_rows(&x, selection.indices())?, fused], 1)?;
    Ok((block.mlp_residual(bk, x)?, Some(selection)))
}
