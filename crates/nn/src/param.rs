//! A learnable tensor and the name it carries in checkpoints.

use idlevit_checkpoint::WeightReader;
use idlevit_tensor::Tensor;

use crate::Result;

/// A learnable tensor together with its checkpoint (timm) name, so that gradients and
/// saved weights can be reported under the names users know.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    name: String,
    value: Tensor,
}

impl Param {
    /// A parameter called `name` holding `value`.
    pub fn new(name: impl Into<String>, value: Tensor) -> Self {
        Self {
            name: name.into(),
            value,
        }
    }

    /// Reads the parameter `name` of exactly `shape` from a checkpoint.
    pub fn load(reader: &mut WeightReader, name: &str, shape: &[usize]) -> Result<Self> {
        Ok(Self::new(name, reader.take(name, shape)?))
    }

    /// The checkpoint name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current value.
    pub fn value(&self) -> &Tensor {
        &self.value
    }

    /// The value, for an optimiser step.
    pub fn value_mut(&mut self) -> &mut Tensor {
        &mut self.value
    }
}
