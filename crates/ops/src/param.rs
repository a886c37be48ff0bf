//! A learnable tensor and the name it carries in checkpoints.

use idlevit_tensor::Tensor;

use crate::precision::{PackedCopy, PackedF32Copy};
use crate::{Fused, Precision, Result};
use idlevit_kernels::{PackedBf16, PackedF32, PackedWeight};

/// A learnable tensor together with its checkpoint (timm) name, so that gradients and
/// saved weights can be reported under the names users know.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    name: String,
    value: Tensor,
    stored_shape: Option<Vec<usize>>,
    bf16: PackedCopy,
    f32_packed: PackedF32Copy,
}

/// A visitor over a layer's parameters, for optimisers and exports.
pub type ParamVisitor<'a> = dyn FnMut(&Param) + 'a;

/// A visitor that may change a layer's parameters (an optimiser step).
pub type ParamVisitorMut<'a> = dyn FnMut(&mut Param) + 'a;

impl Param {
    /// A parameter called `name` holding `value`.
    pub fn new(name: impl Into<String>, value: Tensor) -> Self {
        Self {
            name: name.into(),
            value,
            stored_shape: None,
            bf16: PackedCopy::default(),
            f32_packed: PackedF32Copy::default(),
        }
    }

    /// Records that checkpoints hold this parameter under another shape with the same
    /// elements (a conv weight used as a matrix, say).
    pub fn with_stored_shape(mut self, shape: Vec<usize>) -> Self {
        self.stored_shape = Some(shape);
        self
    }

    /// The value in the shape checkpoints store it in.
    pub fn stored_value(&self) -> Result<Tensor> {
        match &self.stored_shape {
            Some(shape) => Ok(self.value.reshape(shape)?),
            None => Ok(self.value.clone()),
        }
    }

    /// Reshapes a tensor shaped like the value (a gradient, say) to the stored shape.
    pub fn to_stored_shape(&self, t: &Tensor) -> Result<Tensor> {
        match &self.stored_shape {
            Some(shape) => Ok(t.reshape(shape)?),
            None => Ok(t.clone()),
        }
    }

    /// The checkpoint name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current value.
    pub fn value(&self) -> &Tensor {
        &self.value
    }

    /// The value, for an optimiser step; drops the packed copies, which would go stale.
    pub fn value_mut(&mut self) -> &mut Tensor {
        self.bf16 = PackedCopy::default();
        self.f32_packed = PackedF32Copy::default();
        &mut self.value
    }

    /// Keeps a packed bf16 copy of this `(out, in)` weight for inference ([`Precision::Bf16`]),
    /// or drops it ([`Precision::F32`]).
    pub fn set_precision(&mut self, precision: Precision) -> Result<()> {
        self.bf16 = match precision {
            Precision::F32 => PackedCopy::default(),
            Precision::Bf16 => PackedCopy::pack(&self.value)?,
        };
        Ok(())
    }

    /// The f32 copy of this `(out, in)` weight packed for the packed GEMM kernel, made on
    /// the first call (inference backends ask for it; training never does); `None` when the
    /// CPU lacks both AVX-512F and AVX2 with FMA or the value is not a matrix.
    pub fn packed_f32(&self) -> Option<&PackedF32> {
        self.f32_packed.get(&self.value)
    }

    /// Whether [`packed_f32`](Self::packed_f32) has run for the current value, so the next
    /// inference call finds its packed copy ready.
    pub fn is_packed_f32(&self) -> bool {
        self.f32_packed.is_made()
    }

    /// The packed bf16 copy, if [`set_precision`](Self::set_precision) made one.
    pub fn packed_bf16(&self) -> Option<&PackedBf16> {
        self.bf16.0.as_deref()
    }

    /// The copy `bk` runs this weight's product on: the bf16 copy when the model runs in
    /// bf16, else the packed f32 copy when `bk` [packs weights](Fused::packs_weights).
    pub fn packed_for<B: Fused + ?Sized>(&self, bk: &B) -> Option<PackedWeight<'_>> {
        self.packed_bf16().map(PackedWeight::Bf16).or_else(|| {
            let f32 = bk.packs_weights().then(|| self.packed_f32());
            f32.flatten().map(PackedWeight::F32)
        })
    }
}
