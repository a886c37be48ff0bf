//! Layer normalisation over the feature axis.

use idlevit_checkpoint::WeightReader;

use crate::{Fused, Param, Result, load_param};
use idlevit_ops::{ParamVisitor, ParamVisitorMut};

/// `torch.nn.LayerNorm` over the last axis, with learned scale and shift.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    weight: Param,
    bias: Param,
    eps: f32,
}

impl LayerNorm {
    /// Reads `{prefix}.weight` and `{prefix}.bias`, both `(dim)`.
    pub fn load(reader: &mut WeightReader, prefix: &str, dim: usize, eps: f32) -> Result<Self> {
        Ok(Self {
            weight: load_param(reader, &format!("{prefix}.weight"), &[dim])?,
            bias: load_param(reader, &format!("{prefix}.bias"), &[dim])?,
            eps,
        })
    }

    /// Visits the scale and the shift.
    pub fn visit_params(&self, f: &mut ParamVisitor<'_>) {
        f(&self.weight);
        f(&self.bias);
    }

    /// Visits the scale and the shift mutably.
    pub fn visit_params_mut(&mut self, f: &mut ParamVisitorMut<'_>) {
        f(&mut self.weight);
        f(&mut self.bias);
    }

    /// The learned scale, `(dim)`.
    pub fn weight(&self) -> &Param {
        &self.weight
    }

    /// The learned shift, `(dim)`.
    pub fn bias(&self) -> &Param {
        &self.bias
    }

    /// The epsilon added to the variance.
    pub fn eps(&self) -> f32 {
        self.eps
    }

    /// Normalises the last axis of `x`.
    pub fn forward<B: Fused>(&self, bk: &B, x: &B::Value) -> Result<B::Value> {
        Ok(bk.layer_norm(x, &bk.param(&self.weight), &bk.param(&self.bias), self.eps)?)
    }
}
