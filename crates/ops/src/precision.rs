//! The optional bf16 inference path: a weight's packed bf16 copy, and the eager product on it.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use idlevit_kernels::{KernelError, PackedBf16, PackedF32, linear_bf16_columns, linear_packed_f32};
use idlevit_tensor::Tensor;

use crate::{OpsError, Result};

/// The arithmetic an inference forward pass uses for its linear layers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// f32 weights and activations (the reference; what training always uses).
    #[default]
    F32,
    /// Linear layers in bfloat16 with f32 accumulation; everything else stays f32.
    Bf16,
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
    }
}

impl FromStr for Precision {
    type Err = OpsError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(OpsError::Config(format!(
                "precision must be f32 or bf16, found {other:?}"
            ))),
        }
    }
}

/// A parameter's bf16 copy, packed for [`linear_bf16_columns`], shared between clones.
///
/// It is derived from the parameter's value, so it takes no part in comparisons.
#[derive(Clone, Debug, Default)]
pub(crate) struct PackedCopy(pub(crate) Option<Arc<PackedBf16>>);

impl PartialEq for PackedCopy {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl PackedCopy {
    /// Packs a `(out, in)` weight.
    pub(crate) fn pack(value: &Tensor) -> Result<Self> {
        let &[out, input] = value.shape() else {
            return Err(OpsError::shape("bf16 weight", "(out, in)", value.shape()));
        };
        let value = value.contiguous();
        let packed = PackedBf16::pack(&value.contiguous_values(), out, input)?;
        Ok(Self(Some(Arc::new(packed))))
    }
}

/// A parameter's f32 copy packed for [`linear_packed_f32`], made on first use by an inference
/// backend; `None` inside when the CPU lacks the kernel or the value is not a matrix.
///
/// Clones share the cell itself, so models cloned before their first forward pass (a dense
/// model and its idle twin) pack each weight once between them; changing the value
/// ([`Param::value_mut`](crate::Param::value_mut)) gives that parameter a cell of its own.
/// It is derived from the parameter's value, so it takes no part in comparisons.
#[derive(Clone, Debug, Default)]
pub(crate) struct PackedF32Copy(pub(crate) Arc<OnceLock<Option<Arc<PackedF32>>>>);

impl PartialEq for PackedF32Copy {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl PackedF32Copy {
    /// The packed copy of `value`, packing it on the first call.
    pub(crate) fn get(&self, value: &Tensor) -> Option<&PackedF32> {
        self.0
            .get_or_init(|| {
                let &[out, input] = value.shape() else {
                    return None;
                };
                if !idlevit_kernels::packed_f32_available() {
                    return None;
                }
                let value = value.contiguous();
                PackedF32::pack(value.as_slice()?, out, input)
                    .ok()
                    .map(Arc::new)
            })
            .as_deref()
    }

    /// Whether the copy has been made (or found impossible) already.
    pub(crate) fn is_made(&self) -> bool {
        self.0.get().is_some()
    }
}

/// `x W[cols]^T + b` over the last axis of `x`, with `W` the packed f32 weight and `b` already
/// restricted to `cols`.
pub(crate) fn linear_packed_f32_tensor(
    x: &Tensor,
    w: &PackedF32,
    cols: Range<usize>,
    b: Option<&Tensor>,
) -> Result<Tensor> {
    packed_product(x, w.in_features(), cols.len(), b, |out, x, bias, rows| {
        linear_packed_f32(out, x, w, cols.clone(), bias, rows, false)
    })
}

/// `x W[cols]^T + b` over the last axis of `x`, with `W` the packed weight and `b` already
/// restricted to `cols`.
pub(crate) fn linear_bf16_tensor(
    x: &Tensor,
    w: &PackedBf16,
    cols: Range<usize>,
    b: Option<&Tensor>,
) -> Result<Tensor> {
    packed_product(x, w.in_features(), cols.len(), b, |out, x, bias, rows| {
        linear_bf16_columns(out, x, w, cols.clone(), bias, rows)
    })
}

/// The tensor plumbing of a product on a packed weight: checks `x`'s last axis against
/// `input`, then calls `kernel(out, x, bias, rows)` on contiguous slices for `outputs` features.
fn packed_product(
    x: &Tensor,
    input: usize,
    outputs: usize,
    b: Option<&Tensor>,
    kernel: impl Fn(&mut [f32], &[f32], Option<&[f32]>, usize) -> Result<(), KernelError>,
) -> Result<Tensor> {
    if x.shape().last() != Some(&input) {
        return Err(OpsError::shape(
            "linear input",
            format!("last axis of size {input}"),
            x.shape(),
        ));
    }
    let x = x.contiguous();
    let rows = x.numel() / input.max(1);
    let b = b.map(Tensor::contiguous);
    let mut out = vec![0.0; rows * outputs];
    let mut shape = x.shape().to_vec();
    if let Some(last) = shape.last_mut() {
        *last = outputs;
    }
    let bias = b.as_ref().and_then(|b| b.as_slice());
    kernel(&mut out, &x.contiguous_values(), bias, rows)?;
    Ok(Tensor::from_vec(shape, out)?)
}

/// Sets `precision` on every two-dimensional parameter that `visit` reaches: a model passes
/// its `visit_params_mut`, and its linear weights (its only matrices) get or drop their bf16
/// copies.
pub fn set_linear_precision(
    precision: Precision,
    visit: impl FnOnce(&mut crate::ParamVisitorMut<'_>),
) -> Result<()> {
    let mut failure = None;
    visit(&mut |p| {
        if p.value().ndim() == 2
            && failure.is_none()
            && let Err(e) = p.set_precision(precision)
        {
            failure = Some(e);
        }
    });
    failure.map_or(Ok(()), Err)
}
