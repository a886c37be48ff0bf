//! A stack of transformer blocks under a token policy, shared by the families whose blocks
//! are timm's ViT blocks over a CLS token and image tokens (DeiT, LV-ViT).

use idlevit_nn::{Block, Fused};
use idlevit_selector::{PolicyKind, TokenPolicy, run_layers, run_layers_masked};

use crate::{MaskedForward, Result, Traced};

/// The forward pass of a family's blocks on embedded tokens `x`
/// `(batch, image tokens + 1, dim)`, then its `head` (final features and logits).
pub(crate) fn traced<B: Fused>(
    bk: &B,
    blocks: &[Block],
    policy: &TokenPolicy,
    x: B::Value,
    head: impl FnOnce(&B::Value) -> Result<(B::Value, B::Value)>,
) -> Result<Traced<B::Value>> {
    let (x, selections) = run_layers(bk, blocks, policy, 0, x)?;
    let (features, logits) = head(&x)?;
    Ok(Traced {
        logits,
        features,
        selections,
    })
}

/// [`traced`] with idle layers in their masked (training) form; prune and EViT layers in
/// their gathered form, which is how they train.
pub(crate) fn masked<B: Fused>(
    bk: &B,
    blocks: &[Block],
    policy: &TokenPolicy,
    x: B::Value,
    head: impl FnOnce(&B::Value) -> Result<(B::Value, B::Value)>,
) -> Result<MaskedForward<B::Value>> {
    // Pruning and EViT have no masked form: they train in their gathered form, gradients
    // flowing through the kept (and fused) tokens, as the EViT release trains.
    if let TokenPolicy::Select { kind, .. } = policy
        && *kind != PolicyKind::Idle
    {
        let (x, _) = run_layers(bk, blocks, policy, 0, x)?;
        let (features, logits) = head(&x)?;
        return Ok(MaskedForward {
            logits,
            features,
            layers: Vec::new(),
        });
    }
    let (x, layers) = run_layers_masked(bk, blocks, policy, 0, x)?;
    let (features, logits) = head(&x)?;
    Ok(MaskedForward {
        logits,
        features,
        layers,
    })
}

/// Sets timm's linear stochastic-depth rule on `blocks`: block `i` of `n` drops its residual
/// branches at `rate * i / (n - 1)` (the release finetunes with 0.1).
pub(crate) fn set_linear_drop_path<'a>(
    blocks: impl ExactSizeIterator<Item = &'a mut Block>,
    rate: f32,
) -> Result<()> {
    let last = blocks.len().saturating_sub(1).max(1) as f32;
    for (i, block) in blocks.enumerate() {
        block.set_drop_path(rate * i as f32 / last)?;
    }
    Ok(())
}
