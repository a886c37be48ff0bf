//! Reverse-mode automatic differentiation for idlevit, written for its tensors and kernels.
//!
//! [`ops`] holds the forward maths of every operation a Vision Transformer and its losses
//! use, as plain functions on [`Tensor`]s; inference runs them directly. A [`Tape`] runs the
//! same functions on [`Var`]s and records, per operation, only what its backward pass needs;
//! [`Tape::backward`] then walks the records in reverse and returns the [`Gradients`] of
//! every parameter registered with [`Tape::leaf`], by name. Values computed only from
//! constants are not recorded at all, and hard choices (top-k token selection) are made on
//! detached values, so they carry no gradient.
//!
//! ```
//! use idlevit_autodiff::{Backend, Tape};
//! use idlevit_tensor::Tensor;
//!
//! let tape = Tape::new();
//! let w = tape.leaf("w", Tensor::from_vec(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0])?);
//! let x = tape.constant(Tensor::from_vec(vec![1, 2], vec![1.0, -1.0])?);
//! // loss = sum((x W^T)^2), with x W^T = [-1, -1].
//! let y = tape.linear(&x, &w, None)?;
//! let loss = tape.sum_all(&tape.square(&y)?)?;
//! assert_eq!(loss.value().to_vec(), vec![2.0]);
//!
//! // d loss / d W[i, j] = 2 y[i] x[j].
//! let grads = tape.backward(&loss)?;
//! let dw = grads.get("w").expect("w is a parameter");
//! assert_eq!(dw.to_vec(), vec![-2.0, 2.0, -2.0, 2.0]);
//! # Ok::<(), idlevit_autodiff::AutodiffError>(())
//! ```

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
