//! The forward maths of every operation, as plain functions on tensors.
//!
//! Inference calls these directly; the autodiff tape (`idlevit_autodiff::Tape`) calls the very
//! same functions and records what their backward passes need, so there is one definition of
//! each computation.
//! Views stay views: `permute`, `slice`, `select` and `broadcast_to` copy nothing, `reshape`
//! copies only when the layout forces it, and [`matmul`] hands strided operands straight to
//! the GEMM. Every other operation writes a fresh contiguous buffer and never touches its
//! inputs.
//!
//! Shapes follow PyTorch: leading axes are batch axes, the last axis is the feature axis, and
//! a binary operation's second operand may broadcast to the first one's shape.

mod conv;
mod elementwise;
mod linalg;
mod reduce;
mod rows;
mod shape;

pub use conv::{Conv2dSpec, conv2d};
pub use elementwise::{abs, add, gelu, mul, relu, scale, square, sub};
pub use linalg::{linear, matmul};
pub use reduce::{max_axis, sum_all, sum_axis};
pub use rows::{l2_normalize, layer_norm, log_softmax, softmax};
pub use shape::{broadcast_to, concat, gather_rows, permute, reshape, scatter_rows, select, slice};

pub use conv::{ConvGeometry, col2im, im2col};
pub use linalg::{MatStack, batched_matmul, stack_offsets};
pub use reduce::{max_axis_with_index, reduce_to_shape};
pub use rows::row_norm;

use idlevit_tensor::Tensor;

use crate::{OpsError, Result};

/// `x` laid out contiguously as rows over its last axis: `(x, rows, row_len)`.
pub fn rows_of(x: &Tensor, what: &str) -> Result<(Tensor, usize, usize)> {
    let row_len = *x
        .shape()
        .last()
        .ok_or_else(|| OpsError::shape(what, "at least one axis", x.shape()))?;
    let x = x.contiguous();
    let rows = x.numel().checked_div(row_len).unwrap_or(0);
    Ok((x, rows, row_len))
}
