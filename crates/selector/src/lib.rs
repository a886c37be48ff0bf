#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod block;
mod error;
mod evit;
mod forms;
mod idle;
mod policy;
mod prune;
mod schedule;
mod scoring;
mod selection;
mod stack;

pub use block::{AttentionParts, TokenBlock};
pub use error::SelectorError;
pub use evit::{Evit, evit_fused};
pub use idle::{Idle, MaskedLayer, idle_gathered, idle_masked};
pub use policy::{LayerKeep, PolicyKind, PolicyStep, SelectionPolicy, TokenPolicy};
pub use prune::{Prune, prune_gathered};
pub use schedule::{Schedule, evit_keep_count, keep_count};
pub use scoring::{KeyScoring, class_key_scores};
pub use selection::{KEY_MASK_VALUE, TokenSelection, class_row_scores, cls_scores};
pub use stack::{
    LayerSelection, masked_form_refusal, run_layers, run_layers_masked, run_layers_with,
};

/// Result type of this crate.
pub type Result<T, E = SelectorError> = std::result::Result<T, E>;
