//! The one error type of this crate.

use idlevit_kernels::KernelError;
use idlevit_tensor::TensorError;
use thiserror::Error;

/// Everything that can go wrong when an operation runs.
#[derive(Debug, Error)]
pub enum OpsError {
    /// Operand shapes that do not fit the operation.
    #[error("{what}: expected {expected}, found {found:?}")]
    Shape {
        /// What was being checked.
        what: String,
        /// A description of the expected shape.
        expected: String,
        /// The shape found.
        found: Vec<usize>,
    },
    /// A value made by one backend instance (a tape) was used on another.
    #[error("{op}: an operand was recorded on a different tape")]
    ForeignValue {
        /// The operation that received it.
        op: &'static str,
    },
    /// A setting that cannot work (a precision name, say).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] TensorError),
    /// A kernel refused its arguments.
    #[error(transparent)]
    Kernel(#[from] KernelError),
}

impl OpsError {
    /// A shape error for `what`, expecting `expected`.
    pub fn shape(what: impl Into<String>, expected: impl Into<String>, found: &[usize]) -> Self {
        Self::Shape {
            what: what.into(),
            expected: expected.into(),
            found: found.to_vec(),
        }
    }
}
