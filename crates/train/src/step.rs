//! One optimisation step on the tape, and gradient collection by parameter name.

use std::collections::BTreeMap;

use idlevit_autodiff::Tape;
use idlevit_nn::Backend;
use idlevit_tensor::Tensor;
use idlevit_zoo::DeiT;

use crate::{AdamW, Objective, Result, Teacher, TrainError, clip_grad_norm};

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
pub fn train_step(
    student: &mut DeiT,
    teacher: Option<&DeiT>,
    optimizer: &mut AdamW,
    objective: &Objective,
    images: &Tensor,
    targets: &Tensor,
    settings: &StepSettings,
) -> Result<f32> {
    let teacher_out = match teacher {
        Some(t) if objective.distill_weight != 0.0 => Some(Teacher::run(t, images)?),
        _ => None,
    };
    let tape = settings.seed.map_or_else(Tape::new, Tape::with_seed);
    let parts = objective.compute(&tape, student, images, targets, teacher_out.as_ref())?;
    let loss = tape
        .to_tensor(&parts.total)
        .to_vec()
        .first()
        .copied()
        .unwrap_or(f32::NAN);
    if !loss.is_finite() {
        return Err(TrainError::NonFinite(loss));
    }
    let mut grads = parameter_gradients(&tape, &parts.total, student)?;
    if let Some(max_norm) = settings.clip_grad {
        clip_grad_norm(&mut grads, max_norm);
    }
    optimizer.step(student, &grads, settings.lr)?;
    Ok(loss)
}

/// Backpropagates `total` and returns the gradient of every parameter of `model`, by name,
/// in the parameter's own (compute) shape.
pub fn parameter_gradients(
    tape: &Tape,
    total: &<Tape as Backend>::Value,
    model: &DeiT,
) -> Result<BTreeMap<String, Tensor>> {
    let gradients = tape.backward(total)?;
    let mut grads = BTreeMap::new();
    model.visit_params(&mut |p| {
        let grad = gradients.get(p.name()).cloned();
        let grad = grad.unwrap_or_else(|| {
            Tensor::zeros(p.value().shape()).unwrap_or_else(|_| Tensor::scalar(0.0))
        });
        grads.insert(p.name().to_string(), grad);
    });
    Ok(grads)
}
