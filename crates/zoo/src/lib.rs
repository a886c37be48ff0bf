//! The model zoo: Vision Transformer families that load timm-named weights.
//!
//! [`DeiT`] is built from a [`DeiTConfig`] (named constructors for the published sizes, or a
//! free-form config read from JSON) and a checkpoint; [`LvVit`] and [`PvtV2`] likewise from
//! an [`LvVitConfig`] and a [`PvtConfig`]. Each [`Family`] names its weights once, in the
//! build that loads a checkpoint and draws a seeded random model alike. Their `forward` is
//! generic over the [`Backend`](idlevit_nn::Backend), so the same model serves inference and
//! training. [`ZooConfig`] and [`ZooModel`] hold a model of any family, by name;
//! [`ZooConfig::memory_estimate`] says how much memory a run of it needs before anything is
//! built.
//!
//! ```
//! use idlevit_nn::{Backend, Eager};
//! use idlevit_tensor::Tensor;
//! use idlevit_zoo::{DeiT, DeiTConfig};
//!
//! let config = DeiTConfig { img_size: 32, patch_size: 16, embed_dim: 24, depth: 1, num_heads: 2,
//!     mlp_ratio: 4.0, num_classes: 5, qkv_bias: true, idle_layers: None, keep_ratios: None };
//! let model = DeiT::random(&config, 7)?;
//! let images = Tensor::zeros(&[2, 3, 32, 32])?;
//! let logits = model.forward(&Eager, &Eager.constant(images))?;
//! assert_eq!(logits.shape(), &[2, 5]);
//! # Ok::<(), idlevit_zoo::ZooError>(())
//! ```

#![forbid(unsafe_code)]

mod config;
mod cost;
mod deit;
mod error;
mod family;
mod lvvit;
mod memory;
mod model;
mod pvt;
mod schedule;
mod stack;
mod timm;

pub use config::{DeiTConfig, MAX_CONFIG_BYTES, MAX_DEPTH, MAX_PARAMETERS, MAX_PATCHES};
pub use cost::{lvvit_macs, macs, pvt_macs};
pub use deit::{DeiT, MaskedForward, Traced};
pub use error::ZooError;
pub use family::Family;
pub use idlevit_selector::LayerSelection;
pub use idlevit_selector::{PolicyKind, Schedule, TokenPolicy};
pub use lvvit::{LVVIT_MODELS, LvVit, LvVitConfig};
pub use memory::{MemoryEstimate, MemoryUse, available_memory};
pub use model::{FAMILIES, ZooConfig, ZooModel, model_names};
pub use pvt::{PVT_MODELS, PvtConfig, PvtV2};
pub use timm::{ImgSize, TimmArgs};

/// Result type of this crate.
pub type Result<T, E = ZooError> = std::result::Result<T, E>;
