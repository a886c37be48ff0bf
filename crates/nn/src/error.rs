use thiserror::Error;

/// Everything that can go wrong while building or running a layer.
#[derive(Debug, Error)]
pub enum NnError {
    /// A tensor shape that does not fit the layer.
    #[error("{what}: expected {expected}, found {found:?}")]
    Shape {
        /// What was being checked.
        what: String,
        /// A description of the expected shape.
        expected: String,
        /// The shape found.
        found: Vec<usize>,
    },
    /// A layer hyper-parameter that cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A weight could not be loaded.
    #[error(transparent)]
    Checkpoint(#[from] idlevit_checkpoint::CheckpointError),
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] idlevit_tensor::TensorError),
    /// A kernel refused its arguments.
    #[error(transparent)]
    Kernel(#[from] idlevit_kernels::KernelError),
    /// A token selection failed.
    #[error(transparent)]
    Selector(#[from] idlevit_selector::SelectorError),
    /// An operation failed.
    #[error(transparent)]
    Ops(#[from] idlevit_ops::OpsError),
}

impl NnError {
    /// A shape error for `what`, expecting `expected`.
    pub fn shape(what: impl Into<String>, expected: impl Into<String>, found: &[usize]) -> Self {
        Self::Shape {
            what: what.into(),
            expected: expected.into(),
            found: found.to_vec(),
        }
    }
}
