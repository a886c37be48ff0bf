//! A stack of blocks under a token policy: which form each layer runs, and what it chose.

use idlevit_ops::Backend;

use crate::{
    Evit, Idle, LayerKeep, MaskedLayer, PolicyKind, Prune, Schedule, SelectionPolicy,
    SelectorError, TokenBlock, TokenPolicy, idle_masked, keep_count,
};

/// The rows one selecting layer computed, per batch item, in the token indices of the stack's
/// input (the class token, when there is one, is 0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerSelection {
    /// Block index in the model.
    pub layer: usize,
    /// Per batch item, the selected tokens in descending score order (class token first).
    pub tokens: Vec<Vec<usize>>,
}

/// Runs `blocks` on `x` `(batch, tokens, dim)` under `policy` in inference form: dense
/// layers whole, idle and pruning layers gathered, EViT layers fused. Block `i` is model
/// layer `first_layer + i` (a pyramid stage's blocks start past the earlier stages'). Keep
/// counts are fractions of the image tokens `x` holds. Returns the final tokens and each
/// selecting layer's choice.
pub fn run_layers<B: Backend, T: TokenBlock<B>>(
    bk: &B,
    blocks: &[T],
    policy: &TokenPolicy,
    first_layer: usize,
    x: B::Value,
) -> Result<(B::Value, Vec<LayerSelection>), T::Error> {
    match policy {
        TokenPolicy::Dense => {
            let schedule = Schedule::new(Vec::new(), Vec::new())?;
            run_layers_with(bk, blocks, &schedule, &Idle, first_layer, x)
        }
        TokenPolicy::Select { kind, schedule } => match kind {
            PolicyKind::Idle => run_layers_with(bk, blocks, schedule, &Idle, first_layer, x),
            PolicyKind::Prune => run_layers_with(bk, blocks, schedule, &Prune, first_layer, x),
            PolicyKind::Evit => run_layers_with(bk, blocks, schedule, &Evit, first_layer, x),
        },
    }
}

/// [`run_layers`] with any [`SelectionPolicy`] (yours included) at the schedule's layers.
pub fn run_layers_with<B: Backend, T: TokenBlock<B>, P: SelectionPolicy>(
    bk: &B,
    blocks: &[T],
    schedule: &Schedule,
    policy: &P,
    first_layer: usize,
    mut x: B::Value,
) -> Result<(B::Value, Vec<LayerSelection>), T::Error> {
    let Some((batch, image_tokens, class_rows)) = token_layout(bk, blocks, &x) else {
        return Ok((x, Vec::new()));
    };
    // Row -> token index of the input, which dropping tokens changes.
    let mut positions: Vec<Vec<usize>> = vec![(0..image_tokens + class_rows).collect(); batch];
    let mut selections = Vec::new();
    for (i, block) in blocks.iter().enumerate() {
        let layer = first_layer + i;
        let Some(ratio) = schedule.ratio_at(layer) else {
            x = block.forward(bk, x)?;
            continue;
        };
        let at = LayerKeep {
            ratio,
            image_tokens,
        };
        let step = policy.gathered(bk, block, x, at)?;
        if let Some(selection) = step.selection {
            let tokens = selection.map_positions(&positions);
            if policy.drops_tokens() {
                positions.clone_from(&tokens);
            }
            selections.push(LayerSelection { layer, tokens });
        }
        x = step.output;
    }
    Ok((x, selections))
}

/// The training form of [`run_layers`]: dense layers whole, idle layers masked (every token
/// kept in the tensors); returns the output and, per idle layer, its model index and what
/// the cut loss needs. Only the idle policy (or dense) has a masked form.
#[allow(clippy::type_complexity)]
pub fn run_layers_masked<B: Backend, T: TokenBlock<B>>(
    bk: &B,
    blocks: &[T],
    policy: &TokenPolicy,
    first_layer: usize,
    mut x: B::Value,
) -> Result<(B::Value, Vec<(usize, MaskedLayer<B::Value>)>), T::Error> {
    if let TokenPolicy::Select { kind, .. } = policy
        && *kind != PolicyKind::Idle
    {
        return Err(masked_form_refusal(*kind).into());
    }
    let Some((_, image_tokens, _)) = token_layout(bk, blocks, &x) else {
        return Ok((x, Vec::new()));
    };
    let mut layers = Vec::new();
    for (i, block) in blocks.iter().enumerate() {
        let layer = first_layer + i;
        x = match policy.at(layer) {
            None => block.forward(bk, x)?,
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
pub fn masked_form_refusal(kind: PolicyKind) -> SelectorError {
    SelectorError::Unsupported(format!(
        "the masked (training) form is the idle policy's only, not {kind}'s: top-k pruning \
         and EViT train in their gathered form"
    ))
}

/// `(batch, image tokens, class rows)` of the stack's input, or `None` for an empty stack.
fn token_layout<B: Backend, T: TokenBlock<B>>(
    bk: &B,
    blocks: &[T],
    x: &B::Value,
) -> Option<(usize, usize, usize)> {
    let class_rows = usize::from(blocks.first()?.has_class_token());
    let &[batch, tokens, _] = bk.shape(x) else {
        return Some((0, 0, class_rows));
    };
    Some((batch, tokens.saturating_sub(class_rows), class_rows))
}
