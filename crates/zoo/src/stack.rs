//! A stack of transformer blocks under a token policy, shared by the families whose blocks
//! are timm's ViT blocks over a CLS token and image tokens (DeiT, LV-ViT).

use idlevit_nn::{Backend, Block};
use idlevit_selector::{
    MaskedLayer, PolicyKind, TokenPolicy, evit_fused, idle_gathered, idle_masked, keep_count,
    prune_gathered,
};

use crate::{LayerSelection, MaskedForward, Result, Traced, ZooError};

/// The forward pass of a family's blocks on embedded tokens `x`
/// `(batch, image tokens + 1, dim)`, then its `head` (final features and logits).
pub(crate) fn traced<B: Backend>(
    bk: &B,
    blocks: &[Block],
    policy: &TokenPolicy,
    x: B::Value,
    head: impl FnOnce(&B::Value) -> Result<(B::Value, B::Value)>,
) -> Result<Traced<B::Value>> {
    let image_tokens = bk.shape(&x)[1] - 1;
    let (x, selections) = run_blocks(bk, blocks, policy, x, image_tokens)?;
    let (features, logits) = head(&x)?;
    Ok(Traced {
        logits,
        features,
        selections,
    })
}

/// [`traced`] with idle layers in their masked (training) form; prune and EViT layers in
/// their gathered form, which is how they train.
pub(crate) fn masked<B: Backend>(
    bk: &B,
    blocks: &[Block],
    policy: &TokenPolicy,
    x: B::Value,
    head: impl FnOnce(&B::Value) -> Result<(B::Value, B::Value)>,
) -> Result<MaskedForward<B::Value>> {
    let image_tokens = bk.shape(&x)[1] - 1;
    // Pruning and EViT have no masked form: they train in their gathered form, gradients
    // flowing through the kept (and fused) tokens, as the EViT release trains.
    if let TokenPolicy::Select { kind, .. } = policy
        && *kind != PolicyKind::Idle
    {
        let (x, _) = run_blocks(bk, blocks, policy, x, image_tokens)?;
        let (features, logits) = head(&x)?;
        return Ok(MaskedForward {
            logits,
            features,
            layers: Vec::new(),
        });
    }
    let (x, layers) = run_blocks_masked(bk, blocks, policy, x, image_tokens)?;
    let (features, logits) = head(&x)?;
    Ok(MaskedForward {
        logits,
        features,
        layers,
    })
}

/// Runs `blocks` on tokens `x` `(batch, image_tokens + 1, dim)` under `policy`, idle layers
/// in their gathered (inference) form; returns the final tokens and each selecting layer's
/// choice, in original token indices.
fn run_blocks<B: Backend>(
    bk: &B,
    blocks: &[Block],
    policy: &TokenPolicy,
    mut x: B::Value,
    image_tokens: usize,
) -> Result<(B::Value, Vec<LayerSelection>)> {
    let batch = bk.shape(&x)[0];
    // Row -> original token index, which pruning changes.
    let mut positions: Vec<Vec<usize>> = vec![(0..=image_tokens).collect(); batch];
    let mut selections = Vec::new();
    for (layer, block) in blocks.iter().enumerate() {
        x = match policy.at(layer) {
            None => block.forward_owned(bk, x)?,
            Some((PolicyKind::Idle, ratio)) => {
                let (y, selection) = idle_gathered(bk, block, x, keep_count(image_tokens, ratio)?)?;
                selections.push(LayerSelection {
                    layer,
                    tokens: selection.indices().to_vec(),
                });
                y
            }
            Some((PolicyKind::Prune, ratio)) => {
                let (y, selection) =
                    prune_gathered(bk, block, &x, keep_count(image_tokens, ratio)?)?;
                positions = selection.map_positions(&positions);
                selections.push(LayerSelection {
                    layer,
                    tokens: positions.clone(),
                });
                y
            }
            Some((PolicyKind::Evit, rate)) => evit_fused(bk, block, &x, rate)?.0,
        };
    }
    Ok((x, selections))
}

/// The training form of [`run_blocks`]: dense layers as usual, idle layers masked (every
/// token kept in the tensors), returning per idle layer what the cut loss needs. Only the
/// idle policy (or dense) has a masked form.
#[allow(clippy::type_complexity)]
fn run_blocks_masked<B: Backend>(
    bk: &B,
    blocks: &[Block],
    policy: &TokenPolicy,
    mut x: B::Value,
    image_tokens: usize,
) -> Result<(B::Value, Vec<(usize, MaskedLayer<B::Value>)>)> {
    if let TokenPolicy::Select { kind, .. } = policy
        && *kind != PolicyKind::Idle
    {
        return Err(masked_form_refusal(*kind));
    }
    let mut layers = Vec::new();
    for (layer, block) in blocks.iter().enumerate() {
        x = match policy.at(layer) {
            None => block.forward(bk, &x)?,
            Some((_, ratio)) => {
                let masked = idle_masked(bk, block, &x, keep_count(image_tokens, ratio)?)?;
                let out = masked.output.clone();
                layers.push((layer, masked));
                out
            }
        };
    }
    Ok((x, layers))
}

/// The error for asking the masked (training) form of a policy other than idle.
pub(crate) fn masked_form_refusal(kind: PolicyKind) -> ZooError {
    ZooError::Config(format!(
        "the masked (training) form is the idle policy's only, not {kind}'s: top-k pruning \
         and EViT train in their gathered form"
    ))
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
