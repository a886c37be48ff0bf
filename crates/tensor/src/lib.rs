#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod error;
mod rows;
mod tensor;

pub use error::TensorError;
/// The `ndarray` version the conversions are written for, so that a caller's arrays are of
/// the same type: `idlevit_tensor::ndarray::ArrayD`.
pub use ndarray;
pub use tensor::Tensor;

/// Result type of this crate.
pub type Result<T, E = TensorError> = std::result::Result<T, E>;
