//! One batch through a model, inspected: the logits and each selection layer's tokens, or
//! the finetuning objective's terms and every parameter's gradient.

use idlevit_checkpoint::Checkpoint;
use idlevit_nn::{Backend, Eager};
use idlevit_tensor::Tensor;
use idlevit_zoo::ZooModel;

use crate::step::scalar;
use crate::{Objective, Result, Teacher};

/// One forward pass inspected: the logits and, per selecting layer, the selected tokens.
#[derive(Clone, Debug)]
pub struct LogitsRun {
    /// `(batch, classes)`.
    pub logits: Tensor,
    /// `(layer, tokens per batch item)`, original token indices, CLS first.
    pub selections: Vec<(usize, Vec<Vec<usize>>)>,
}

/// Runs `model` on `input` (masked form when `masked`).
pub fn run_logits(model: &ZooModel, masked: bool, input: &Tensor) -> Result<LogitsRun> {
    let out = if masked {
        model.forward_masked_traced(&Eager, input)?
    } else {
        model.forward_traced(&Eager, input)?
    };
    let chosen = out.selections.into_iter().map(|s| (s.layer, s.tokens));
    Ok(LogitsRun {
        logits: out.logits,
        selections: chosen.collect(),
    })
}

/// The objective's terms for one batch, and optionally every parameter's gradient.
#[derive(Clone, Debug)]
pub struct LossReport {
    /// Cross entropy.
    pub ce: f32,
    /// Cut loss summed over idle layers, before weighting.
    pub cut: f32,
    /// Each idle layer's cut loss, in layer order.
    pub cut_layers: Vec<CutLayer>,
    /// KL to the teacher, when distilling.
    pub kl: Option<f32>,
    /// Feature distillation term, when distilling.
    pub feature: Option<f32>,
    /// The weighted total.
    pub total: f32,
    /// Gradient of `total` per parameter under its timm name and checkpoint shape.
    pub grads: Option<Checkpoint>,
}

/// One idle layer's cut loss.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CutLayer {
    /// The block index.
    pub layer: usize,
    /// Its cut loss, before weighting.
    pub value: f32,
    /// Whether it enters the objective's cut sum (the release's objective skips every
    /// second idle layer).
    pub counted: bool,
}

/// Evaluates the finetuning objective of `student` (masked form) on `images` and soft
/// `targets`, with gradients when `with_grads`.
pub fn loss_report(
    student: &ZooModel,
    teacher: Option<&ZooModel>,
    images: &Tensor,
    targets: &Tensor,
    objective: &Objective,
    with_grads: bool,
) -> Result<LossReport> {
    let teacher_out = teacher.map(|t| Teacher::run(t, images)).transpose()?;
    let tape = idlevit_autodiff::Tape::new();
    let parts = objective.compute(&tape, student, images, targets, teacher_out.as_ref())?;
    let value = |v: &<idlevit_autodiff::Tape as Backend>::Value| scalar(&tape.to_tensor(v));
    let mut report = LossReport {
        ce: value(&parts.ce),
        cut: value(&parts.cut),
        cut_layers: parts
            .cut_layers
            .iter()
            .enumerate()
            .map(|(position, (layer, v))| CutLayer {
                layer: *layer,
                value: value(v),
                counted: objective.counts_cut_layer(position),
            })
            .collect(),
        kl: parts.kl.as_ref().map(value),
        feature: parts.feature.as_ref().map(value),
        total: value(&parts.total),
        grads: None,
    };
    if with_grads {
        let grads = crate::parameter_gradients(&tape, &parts.total, student)?;
        let mut ckpt = Checkpoint::default();
        let mut failure = None;
        student.visit_params(&mut |p| {
            if let Some(g) = grads.get(p.name()) {
                match p.to_stored_shape(g) {
                    Ok(g) => ckpt.insert(p.name(), g),
                    Err(e) => failure = Some(e),
                }
            }
        });
        if let Some(e) = failure {
            return Err(e.into());
        }
        report.grads = Some(ckpt);
    }
    Ok(report)
}
