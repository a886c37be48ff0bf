#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod backward;
mod error;
mod gradients;
mod tape;

pub use error::AutodiffError;
pub use gradients::Gradients;
pub use idlevit_ops::math as ops;
pub use idlevit_ops::{Backend, Fused, OpsError};
pub use idlevit_tensor::Tensor;
pub use tape::{Tape, Var};

pub(crate) use idlevit_ops::parallel;

/// Result type of this crate.
pub type Result<T, E = AutodiffError> = std::result::Result<T, E>;
