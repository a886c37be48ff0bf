//! Layer normalisation over the feature axis.

use idlevit_checkpoint::WeightReader;

use crate::{Backend, Param, Result};

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
            weight: Param::load(reader, &format!("{prefix}.weight"), &[dim])?,
            bias: Param::load(reader, &format!("{prefix}.bias"), &[dim])?,
            eps,
        })
    }

    /// Normalises the last axis of `x`.
    pub fn forward<B: Backend>(&self, bk: &B, x: &B::Value) -> Result<B::Value> {
        bk.layer_norm(x, &bk.param(&self.weight), &bk.param(&self.bias), self.eps)
    }
}
