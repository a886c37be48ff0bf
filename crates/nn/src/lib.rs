//! Vision Transformer layers, written once over a [`Backend`].
//!
//! Each layer is a small struct that loads its own weights by timm name from a
//! [`WeightReader`](idlevit_checkpoint::WeightReader) and has a `forward` generic over the
//! [`Backend`] that runs its maths. [`Eager`] computes directly on [`Tensor`]s with the
//! `idlevit-kernels` kernels (inference, no bookkeeping); a recording backend runs the very
//! same `forward` for training.
//!
//! ```
//! use idlevit_nn::{Backend, Eager, Linear};
//! use idlevit_tensor::Tensor;
//!
//! let layer = Linear::new(
//!     Tensor::from_vec(vec![2, 3], vec![1.0, 0.0, 0.0, 0.0, 1.0, 1.0])?,
//!     Some(Tensor::from_vec(vec![2], vec![0.5, -0.5])?),
//! )?;
//! let x = Tensor::from_vec(vec![1, 3], vec![1.0, 2.0, 3.0])?;
//! let y = layer.forward(&Eager, &Eager.constant(x))?;
//! assert_eq!(y.to_vec(), vec![1.5, 4.5]);
//! # Ok::<(), idlevit_nn::NnError>(())
//! ```

mod attention;
mod backend;
mod block;
mod eager;
mod error;
mod linear;
mod mlp;
mod norm;
mod param;
mod patch_embed;

pub use attention::Attention;
pub use attention::{Heads, QkvPart};
pub use backend::Backend;
pub use block::{Block, BlockConfig};
pub use eager::Eager;
pub use error::NnError;
pub use idlevit_tensor::Tensor;
pub use linear::Linear;
pub use mlp::Mlp;
pub use norm::LayerNorm;
pub use param::{Param, ParamVisitor, ParamVisitorMut};
pub use patch_embed::PatchEmbed;

/// Result type of this crate.
pub type Result<T, E = NnError> = std::result::Result<T, E>;
