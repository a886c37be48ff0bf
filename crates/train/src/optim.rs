//! AdamW with decoupled weight decay, and global gradient-norm clipping.

use std::collections::BTreeMap;

use idlevit_nn::Param;
use idlevit_tensor::Tensor;

use crate::error::bail;
use crate::{Result, TrainError, Trainable};

/// Whether `param` gets weight decay: matrices and convs do; biases, norms, the position
/// embedding and the CLS token do not (timm's parameter groups).
pub fn decays(param: &Param) -> bool {
    let name = param.name();
    param.value().ndim() >= 2 && !name.ends_with("pos_embed") && !name.ends_with("cls_token")
}

/// Scales `grads` in place so their global L2 norm is at most `max_norm`; returns the norm
/// before clipping.
pub fn clip_grad_norm(grads: &mut BTreeMap<String, Tensor>, max_norm: f64) -> f64 {
    let total: f64 = grads
        .values()
        .map(|g| {
            g.view()
                .iter()
                .map(|&v| f64::from(v) * f64::from(v))
                .sum::<f64>()
        })
        .sum::<f64>()
        .sqrt();
    if total > max_norm && total > 0.0 {
        let factor = (max_norm / (total + 1e-6)) as f32;
        for g in grads.values_mut() {
            g.as_mut_slice().iter_mut().for_each(|v| *v *= factor);
        }
    }
    total
}

/// Whether every element of `tensor` is finite.
pub fn all_finite(tensor: &Tensor) -> bool {
    tensor.view().iter().all(|v| v.is_finite())
}

/// The value of a one-element tensor when it is a whole number from 0 to 2^24 (every count
/// an `f32` holds exactly), as checkpoints store step and epoch counts.
pub fn whole_count(tensor: &Tensor) -> Option<u64> {
    let [value] = tensor.to_vec()[..] else {
        return None;
    };
    let exact = value.is_finite() && value >= 0.0 && value.fract() == 0.0;
    (exact && value <= (1u32 << 24) as f32).then_some(value as u64)
}

/// A short description of a tensor's values for an error message: the value of a scalar,
/// else the element count.
pub fn describe_values(tensor: &Tensor) -> String {
    match tensor.to_vec()[..] {
        [value] => value.to_string(),
        ref values => format!("{} values", values.len()),
    }
}

/// First and second moment estimates of one parameter.
#[derive(Clone, Debug)]
struct Moments {
    first: Vec<f32>,
    second: Vec<f32>,
}

/// AdamW (Loshchilov & Hutter): Adam on the gradient, weight decay applied to the weights
/// directly, `p -= lr * (m_hat / (sqrt(v_hat) + eps) + wd * p)` (decay only where [`decays`]).
#[derive(Clone, Debug)]
pub struct AdamW {
    /// Exponential decay of the first moment.
    pub beta1: f64,
    /// Exponential decay of the second moment.
    pub beta2: f64,
    /// Denominator guard.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    step: u64,
    moments: BTreeMap<String, Moments>,
}

impl AdamW {
    /// An optimiser with PyTorch's defaults for the betas and eps.
    pub fn new(weight_decay: f64) -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            step: 0,
            moments: BTreeMap::new(),
        }
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// The optimiser state as named tensors (`adamw.step`, `adamw.m.<param>`,
    /// `adamw.v.<param>`), for checkpoints that can resume.
    pub fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let vector = |values: &Vec<f32>| Tensor::from_vec(vec![values.len()], values.clone());
        let mut out = vec![("adamw.step".to_string(), Tensor::scalar(self.step as f32))];
        for (name, m) in &self.moments {
            out.push((format!("adamw.m.{name}"), vector(&m.first)?));
            out.push((format!("adamw.v.{name}"), vector(&m.second)?));
        }
        Ok(out)
    }

    /// Takes the optimiser state written by [`state_tensors`](Self::state_tensors) out of
    /// `ckpt` (removing it, so the rest holds only weights).
    pub fn load_state_tensors(&mut self, ckpt: &mut idlevit_checkpoint::Checkpoint) -> Result<()> {
        let step = ckpt.remove("adamw.step").ok_or_else(|| {
            TrainError::Invalid("checkpoint has no optimiser state (adamw.step)".into())
        })?;
        self.step = whole_count(&step).ok_or_else(|| {
            TrainError::Invalid(format!(
                "the optimiser's step count (adamw.step) must be one whole number >= 0, found {}",
                describe_values(&step)
            ))
        })?;
        let names: Vec<String> = ckpt
            .iter()
            .filter_map(|(n, _)| n.strip_prefix("adamw.m.").map(str::to_string))
            .collect();
        self.moments.clear();
        for name in names {
            let first = ckpt
                .remove(&format!("adamw.m.{name}"))
                .map(Tensor::into_vec)
                .unwrap_or_default();
            let second = ckpt
                .remove(&format!("adamw.v.{name}"))
                .map(Tensor::into_vec)
                .ok_or_else(|| {
                    TrainError::Invalid(format!(
                        "optimiser state for {name} lacks its second moment"
                    ))
                })?;
            if first.len() != second.len() {
                bail!("optimiser moments of {name} differ in length");
            }
            // Adam divides by sqrt(v): a negative or non-finite moment would poison the
            // weights at the first step after the resume.
            if !first.iter().all(|m| m.is_finite())
                || !second.iter().all(|v| v.is_finite() && *v >= 0.0)
            {
                bail!(
                    "the optimiser state of {name} holds non-finite values (or a negative \
                     second moment)"
                );
            }
            self.moments.insert(name, Moments { first, second });
        }
        Ok(())
    }

    /// Applies one update with learning rate `lr` to every parameter of `model` that has a
    /// gradient in `grads` (keyed by parameter name).
    pub fn step<M: Trainable>(
        &mut self,
        model: &mut M,
        grads: &BTreeMap<String, Tensor>,
        lr: f64,
    ) -> Result<()> {
        if !lr.is_finite() || lr < 0.0 {
            bail!("the learning rate must be a finite number >= 0, found {lr}");
        }
        if let Some((name, _)) = grads.iter().find(|(_, g)| !all_finite(g)) {
            return Err(TrainError::NonFiniteGradient(name.clone()));
        }
        self.step += 1;
        let t = self.step as i32;
        let (b1, b2) = (self.beta1, self.beta2);
        let (bias1, bias2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        let mut failure = None;
        model.visit_params_mut(&mut |param| {
            let Some(grad) = grads.get(param.name()) else {
                return;
            };
            if grad.shape() != param.value().shape() {
                failure = Some(TrainError::Invalid(format!(
                    "gradient of {} has shape {:?}, the parameter {:?}",
                    param.name(),
                    grad.shape(),
                    param.value().shape()
                )));
                return;
            }
            let decay = if decays(param) {
                self.weight_decay
            } else {
                0.0
            };
            let grad = grad.contiguous();
            let grad = grad.view();
            let moments = self
                .moments
                .entry(param.name().to_string())
                .or_insert_with(|| Moments {
                    first: vec![0.0; grad.len()],
                    second: vec![0.0; grad.len()],
                });
            // A resumed state of another length would make the zip below skip weights.
            if moments.first.len() != grad.len() || moments.second.len() != grad.len() {
                failure = Some(TrainError::Invalid(format!(
                    "the optimiser state of {} holds {} values, the parameter {}",
                    param.name(),
                    moments.first.len(),
                    grad.len()
                )));
                return;
            }
            let values = param.value_mut().as_mut_slice();
            for (((p, &g), m), v) in values
                .iter_mut()
                .zip(grad)
                .zip(&mut moments.first)
                .zip(&mut moments.second)
            {
                let g = f64::from(g);
                let m_new = b1 * f64::from(*m) + (1.0 - b1) * g;
                let v_new = b2 * f64::from(*v) + (1.0 - b2) * g * g;
                *m = m_new as f32;
                *v = v_new as f32;
                let update = (m_new / bias1) / ((v_new / bias2).sqrt() + self.eps);
                let p64 = f64::from(*p);
                *p = (p64 * (1.0 - lr * decay) - lr * update) as f32;
            }
            if failure.is_none() && !values.iter().all(|v| v.is_finite()) {
                failure = Some(TrainError::NonFiniteWeights(param.name().to_string()));
            }
        });
        failure.map_or(Ok(()), Err)
    }
}
