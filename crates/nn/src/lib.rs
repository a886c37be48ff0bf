//! Vision Transformer layers, written once over a [`Backend`].
//!
//! Each layer is a small struct that takes its own weights by timm name from a
//! [`WeightSource`] (a checkpoint's [`WeightReader`](idlevit_checkpoint::WeightReader), or a
//! [`SeededInit`] drawing them), lists its parameters once for visiting ([`params!`], the
//! [`Params`] trait), and has a `forward` generic over the [`Backend`] that runs its maths.
//! [`Eager`] computes directly on [`Tensor`]s (inference, no bookkeeping); the autodiff
//! crate's tape runs the very same `forward` and records it, and its `backward` returns gradients
//! under the parameters' checkpoint names. Both compute every operation with the one set of
//! functions in `idlevit_ops::math`.
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

#![forbid(unsafe_code)]

mod attention;
mod block;
mod conv;
mod error;
mod linear;
mod mlp;
mod norm;
mod patch_embed;
mod selectable;
mod source;
mod visit;

pub use attention::{Attention, QkvPart};
pub use block::{Block, BlockConfig};
pub use conv::{BatchNormMode, Conv2d, ConvBatchNorm, ConvShape};
pub use error::NnError;
pub use idlevit_ops::OpsError;
pub use idlevit_ops::{
    AttentionHalf, Backend, Conv2dSpec, Eager, Fused, Heads, MlpHalf, Norm, PackedWeight, Param,
    ParamVisitor, ParamVisitorMut, Precision, Proj, Tensor, set_linear_precision,
};
pub use linear::Linear;
pub use mlp::Mlp;
pub use norm::LayerNorm;
pub use patch_embed::PatchEmbed;
pub use source::{Init, SeededInit, WeightSource};
pub use visit::Params;

/// Result type of this crate.
pub type Result<T, E = NnError> = std::result::Result<T, E>;
