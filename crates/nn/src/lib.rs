#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
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
