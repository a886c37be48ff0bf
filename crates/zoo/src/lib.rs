#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
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
