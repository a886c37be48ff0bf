//! The one error type of this crate.

use thiserror::Error;

/// Why a GEMM call was refused; every message names the operation and what it expected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KernelError {
    /// The inner dimensions of the two factors differ.
    #[error("{op}: inner dimensions differ: a is {a_rows}x{a_cols}, b is {b_rows}x{b_cols}")]
    InnerDimMismatch {
        /// Operation that failed.
        op: &'static str,
        /// Rows of the left factor.
        a_rows: usize,
        /// Columns of the left factor.
        a_cols: usize,
        /// Rows of the right factor.
        b_rows: usize,
        /// Columns of the right factor.
        b_cols: usize,
    },
    /// The output's shape is not rows-of-a by columns-of-b.
    #[error("{op}: output must be {expected_rows}x{expected_cols}, found {rows}x{cols}")]
    OutputShape {
        /// Operation that failed.
        op: &'static str,
        /// Rows the product has.
        expected_rows: usize,
        /// Columns the product has.
        expected_cols: usize,
        /// Rows of the output given.
        rows: usize,
        /// Columns of the output given.
        cols: usize,
    },
    /// A strided matrix reaches past the end of its slice (or its extent overflows `usize`).
    #[error(
        "{op}: {operand} is {rows}x{cols} with strides ({row_stride}, {col_stride}), \
         which needs {needed} elements, but its slice has {found}"
    )]
    OutOfBounds {
        /// Operation that failed.
        op: &'static str,
        /// Which operand: "a", "b", "c", "x", "w", "y".
        operand: &'static str,
        /// Rows of that operand.
        rows: usize,
        /// Columns of that operand.
        cols: usize,
        /// Its row stride.
        row_stride: usize,
        /// Its column stride.
        col_stride: usize,
        /// Elements the layout needs (`usize::MAX` when the extent overflows).
        needed: usize,
        /// Length of the slice given.
        found: usize,
    },
    /// The output's strides would make two elements share memory or interleave rows and columns.
    #[error(
        "{op}: output {rows}x{cols} with strides ({row_stride}, {col_stride}) must lay its rows \
         (or columns) out one after another without overlap"
    )]
    OverlappingOutput {
        /// Operation that failed.
        op: &'static str,
        /// Rows of the output.
        rows: usize,
        /// Columns of the output.
        cols: usize,
        /// Its row stride.
        row_stride: usize,
        /// Its column stride.
        col_stride: usize,
    },
    /// A contiguous buffer has the wrong length for the sizes given.
    #[error("{op}: {operand} must have {expected} elements, found {found}")]
    BufferLength {
        /// Operation that failed.
        op: &'static str,
        /// Which buffer.
        operand: &'static str,
        /// Length the sizes imply.
        expected: usize,
        /// Length given.
        found: usize,
    },
    /// The kernel needs an instruction set this CPU lacks.
    #[error("{op} needs {needs}, which this CPU lacks")]
    Unsupported {
        /// Operation that failed.
        op: &'static str,
        /// The instruction set it needs.
        needs: &'static str,
    },
}

/// Checks `(operand, expected, found)` lengths in order; the first mismatch is a
/// [`KernelError::BufferLength`] of `op`.
pub(crate) fn check_lengths(
    op: &'static str,
    checks: impl IntoIterator<Item = (&'static str, usize, usize)>,
) -> Result<(), KernelError> {
    for (operand, expected, found) in checks {
        if expected != found {
            return Err(KernelError::BufferLength {
                op,
                operand,
                expected,
                found,
            });
        }
    }
    Ok(())
}
