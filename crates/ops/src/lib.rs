#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod backend;
mod eager;
mod error;
pub mod math;
pub mod parallel;
mod param;
mod precision;

pub use backend::{Backend, Fused, Heads, add_branch, attention_half_composed, project, split_qkv};
pub use eager::Eager;
pub use error::OpsError;
pub use idlevit_kernels::{AttentionHalf, MlpHalf, Norm, PackedWeight, Proj};
pub use idlevit_tensor::Tensor;
pub use math::Conv2dSpec;
pub use param::{Param, ParamVisitor, ParamVisitorMut};
pub use precision::{Precision, set_linear_precision};

/// Result type of this crate.
pub type Result<T, E = OpsError> = std::result::Result<T, E>;
