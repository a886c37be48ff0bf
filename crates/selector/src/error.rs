//! The one error type of this crate.

use thiserror::Error;

/// Everything that can go wrong while choosing or computing selected tokens.
#[derive(Debug, Error)]
pub enum SelectorError {
    /// A keep ratio outside (0, 1].
    #[error("keep ratio {0} is outside (0, 1]")]
    KeepRatio(f64),
    /// A keep ratio so small that a layer would keep no token.
    #[error(
        "keep ratio {ratio} keeps no token of {tokens} (floor({tokens} x {ratio}) = 0); raise the ratio"
    )]
    NothingKept {
        /// The ratio.
        ratio: f64,
        /// The image tokens it applies to.
        tokens: usize,
    },
    /// A schedule that does not fit the model.
    #[error("invalid idle schedule: {0}")]
    Schedule(String),
    /// A form the policy or the block does not have.
    #[error("{0}")]
    Unsupported(String),
    /// An operation refused its inputs.
    #[error(transparent)]
    Ops(#[from] idlevit_ops::OpsError),
    /// A kernel refused its buffers.
    #[error(transparent)]
    Kernel(#[from] idlevit_kernels::KernelError),
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] idlevit_tensor::TensorError),
}
