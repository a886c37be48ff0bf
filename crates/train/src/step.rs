//! One optimisation step on the tape, and gradient collection by parameter name.

use std::collections::BTreeMap;

use idlevit_autodiff::Tape;
use idlevit_nn::{Backend, Param};
use idlevit_tensor::Tensor;

use crate::{AdamW, Objective, Result, Teacher, TrainError, Trainable, clip_grad_norm};

/// The settings of one optimiser step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepSettings {
    /// Learning rate of this step.
    pub lr: f64,
    /// Clip the global gradient norm to this value.
    pub clip_grad: Option<f64>,
    /// Seed of the step's random stream (drop path); `None` runs the student without
    /// stochastic depth.
    pub seed: Option<u64>,
}

/// One optimiser step on a batch; returns the loss before the step.
pub fn train_step<M: Trainable>(
    student: &mut M,
    teacher: Option<&M>,
    optimizer: &mut AdamW,
    objective: &Objective,
    images: &Tensor,
    targets: &Tensor,
    settings: &StepSettings,
) -> Result<f32> {
    let (loss, grads) =
        step_gradients(student, teacher, objective, images, targets, settings.seed)?;
    if !loss.is_finite() {
        return Err(TrainError::NonFinite(loss));
    }
    apply_gradients(student, optimizer, grads, settings)?;
    Ok(loss)
}

/// The loss of a batch and the gradient of every parameter, without updating anything (what
/// each rank of a data-parallel step computes before the gradients are averaged). `seed`
/// drives the step's stochastic layers, as in [`StepSettings::seed`].
pub fn step_gradients<M: Trainable>(
    student: &M,
    teacher: Option<&M>,
    objective: &Objective,
    images: &Tensor,
    targets: &Tensor,
    seed: Option<u64>,
) -> Result<(f32, BTreeMap<String, Tensor>)> {
    let teacher_out = match teacher {
        Some(t) if objective.distill_weight != 0.0 => Some(Teacher::run(t, images)?),
        _ => None,
    };
    let tape = seed.map_or_else(Tape::new, Tape::with_seed);
    let parts = objective.compute(&tape, student, images, targets, teacher_out.as_ref())?;
    let loss = scalar(&tape.to_tensor(&parts.total));
    let grads = parameter_gradients(&tape, &parts.total, student)?;
    Ok((loss, grads))
}

/// Clips `grads` as `settings` ask and takes one optimiser step with them.
pub fn apply_gradients<M: Trainable>(
    student: &mut M,
    optimizer: &mut AdamW,
    mut grads: BTreeMap<String, Tensor>,
    settings: &StepSettings,
) -> Result<()> {
    if let Some(max_norm) = settings.clip_grad {
        clip_grad_norm(&mut grads, max_norm);
    }
    optimizer.step(student, &grads, settings.lr)
}

/// Backpropagates `total` and returns the gradient of every parameter of `model`, by name,
/// in the parameter's own (compute) shape.
pub fn parameter_gradients<M: Trainable>(
    tape: &Tape,
    total: &<Tape as Backend>::Value,
    model: &M,
) -> Result<BTreeMap<String, Tensor>> {
    let gradients = tape.backward(total)?;
    let mut grads = BTreeMap::new();
    model.visit_params(&mut |p| {
        let grad = gradients.get(p.name()).cloned();
        grads.insert(p.name().to_string(), grad.unwrap_or_else(|| zeros_like(p)));
    });
    Ok(grads)
}

/// A zero gradient for `param` (what a parameter the loss does not reach receives).
pub(crate) fn zeros_like(param: &Param) -> Tensor {
    Tensor::zeros(param.value().shape()).unwrap_or_else(|_| Tensor::scalar(0.0))
}

/// The value of a one-element tensor (NaN when it is empty).
pub(crate) fn scalar(t: &Tensor) -> f32 {
    t.to_vec().first().copied().unwrap_or(f32::NAN)
}
