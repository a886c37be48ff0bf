//! The one error type of this crate.

use idlevit_kernels::KernelError;
use idlevit_tensor::TensorError;
use thiserror::Error;

/// Everything that can go wrong when computing an operation or its gradients.
#[derive(Debug, Error)]
pub enum AutodiffError {
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
    /// `backward` was asked to differentiate a value with more than one element.
    #[error("backward: the loss must hold exactly one element, found shape {0:?}")]
    NotScalar(Vec<usize>),
    /// One parameter name was registered with two different shapes.
    #[error("parameter `{name}` was registered with shapes {first:?} and {second:?}")]
    LeafShape {
        /// The parameter name.
        name: String,
        /// The shape it was first registered with.
        first: Vec<usize>,
        /// The conflicting shape.
        second: Vec<usize>,
    },
    /// An operation failed.
    #[error(transparent)]
    Ops(#[from] idlevit_ops::OpsError),
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] TensorError),
    /// A kernel refused its arguments.
    #[error(transparent)]
    Kernel(#[from] KernelError),
}

impl AutodiffError {
    /// A shape error for `what`, expecting `expected`.
    pub fn shape(what: impl Into<String>, expected: impl Into<String>, found: &[usize]) -> Self {
        Self::Shape {
            what: what.into(),
            expected: expected.into(),
            found: found.to_vec(),
        }
    }
}
