//! The optional bf16 inference path: a weight's packed bf16 copy, and the eager product on it.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;
use std::sync::Arc;

use idlevit_kernels::{PackedBf16, linear_bf16_columns};
use idlevit_tensor::Tensor;

use crate::{NnError, Result};

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
    type Err = NnError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(NnError::Config(format!(
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
            return Err(NnError::shape("bf16 weight", "(out, in)", value.shape()));
        };
        let value = value.contiguous();
        let packed = PackedBf16::pack(value.as_slice().unwrap_or_default(), out, input)?;
        Ok(Self(Some(Arc::new(packed))))
    }
}

/// `x W[cols]^T + b` over the last axis of `x`, with `W` the packed weight and `b` already
/// restricted to `cols`.
pub(crate) fn linear_bf16_tensor(
    x: &Tensor,
    w: &PackedBf16,
    cols: Range<usize>,
    b: Option<&Tensor>,
) -> Result<Tensor> {
    let input = w.in_features();
    if x.shape().last() != Some(&input) {
        return Err(NnError::shape(
            "linear input",
            format!("last axis of size {input}"),
            x.shape(),
        ));
    }
    let x = x.contiguous();
    let rows = x.numel() / input.max(1);
    let b = b.map(Tensor::contiguous);
    let mut out = vec![0.0; rows * cols.len()];
    let mut shape = x.shape().to_vec();
    if let Some(last) = shape.last_mut() {
        *last = cols.len();
    }
    linear_bf16_columns(
        &mut out,
        x.as_slice().unwrap_or_default(),
        w,
        cols,
        b.as_ref().and_then(|b| b.as_slice()),
        rows,
    )?;
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
