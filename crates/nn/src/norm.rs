//! Layer normalisation over the feature axis.

use crate::{Backend, Fused, Init, Norm, Param, Result, WeightSource};

/// `torch.nn.LayerNorm` over the last axis, with learned scale and shift.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    weight: Param,
    bias: Param,
    eps: f32,
}

crate::params!(LayerNorm: weight, bias);

impl LayerNorm {
    /// Reads `{prefix}.weight` and `{prefix}.bias`, both `(dim)`.
    pub fn load(src: &mut dyn WeightSource, prefix: &str, dim: usize, eps: f32) -> Result<Self> {
        Ok(Self {
            weight: src.param(&format!("{prefix}.weight"), &[dim], Init::NORM_SCALE)?,
            bias: src.param(&format!("{prefix}.bias"), &[dim], Init::NORM_SHIFT)?,
            eps,
        })
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

    /// The scale, shift and epsilon as values of `bk`, for a fused operation.
    pub fn params<B: Backend + ?Sized>(&self, bk: &B) -> Norm<B::Value> {
        Norm {
            gamma: bk.param(&self.weight),
            beta: bk.param(&self.bias),
            eps: self.eps,
        }
    }

    /// Normalises the last axis of `x`.
    pub fn forward<B: Fused>(&self, bk: &B, x: &B::Value) -> Result<B::Value> {
        let p = self.params(bk);
        Ok(bk.layer_norm(x, &p.gamma, &p.beta, p.eps)?)
    }
}
