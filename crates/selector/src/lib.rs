#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod block;
mod error;
mod layers;
mod policy;
mod schedule;
mod scoring;
mod selection;
mod stack;

pub use block::{AttentionParts, TokenBlock};
pub use error::SelectorError;
pub use layers::{MaskedLayer, evit_fused, idle_gathered, idle_masked, prune_gathered};
pub use policy::{PolicyKind, TokenPolicy};
pub use schedule::{Schedule, evit_keep_count, keep_count};
pub use scoring::{KeyScoring, class_key_scores};
pub use selection::{KEY_MASK_VALUE, TokenSelection, class_row_scores, cls_scores};
pub use stack::{LayerSelection, masked_form_refusal, run_layers, run_layers_masked};

/// Result type of this crate.
pub type Result<T, E = SelectorError> = std::result::Result<T, E>;
