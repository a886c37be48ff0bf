//! The f32 tensor at the bottom of idlevit.
//!
//! A [`Tensor`] is an n-dimensional array of `f32` with a shape and strides. Cloning is cheap
//! (the storage is shared, copy-on-write), `permute` and `slice_axis` are views that copy
//! nothing, and `reshape` copies only when the layout forces it. Row gather and scatter work on
//! the token axis of a `(batch, tokens, width)` tensor, the operation token idling is built on.
//!
//! ```
//! use idlevit_tensor::Tensor;
//!
//! let x = Tensor::from_vec(vec![2, 3, 2], (0..12).map(|v| v as f32).collect())?;
//! // Keep tokens 2 and 0 of each batch item, in that order.
//! let picked = x.gather_rows(&[vec![2, 0], vec![2, 0]])?;
//! assert_eq!(picked.shape(), &[2, 2, 2]);
//! assert_eq!(picked.to_vec(), vec![4.0, 5.0, 0.0, 1.0, 10.0, 11.0, 6.0, 7.0]);
//! # Ok::<(), idlevit_tensor::TensorError>(())
//! ```

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
