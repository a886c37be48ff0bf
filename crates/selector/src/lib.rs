//! Token selection: which image tokens a layer computes, and the layer forms built on it.
//!
//! IdleViT (arXiv 2310.05654) ranks image tokens by the CLS query's attention logits, computes
//! only the top `K` in each *idle layer*, and passes the rest through unchanged so they can be
//! picked again later. This crate holds the pieces every policy shares — keep counts and
//! schedules ([`Schedule`], [`keep_count`]), scoring ([`cls_scores`]), deterministic top-k
//! ([`TokenSelection`]), token and key masks — and the layer forms over a ViT
//! [`Block`](idlevit_nn::Block): [`idle_gathered`] (inference), [`idle_masked`] (training
//! form), [`prune_gathered`] (top-k pruning) and [`evit_fused`] (EViT).
//!
//! ```
//! use idlevit_selector::{keep_count, Schedule};
//!
//! // DeiT at keep rate 0.7: layers 4..11 keep 137, 96 and 67 of 196 tokens per stage.
//! let schedule = Schedule::deit(0.7)?;
//! let counts: Vec<usize> = schedule
//!     .keep_ratios()
//!     .iter()
//!     .map(|&r| keep_count(196, r))
//!     .collect::<Result<_, _>>()?;
//! assert_eq!(counts, [137, 137, 137, 96, 96, 96, 67, 67]);
//! # Ok::<(), idlevit_selector::SelectorError>(())
//! ```

mod error;
mod layers;
mod policy;
mod schedule;
mod selection;

pub use error::SelectorError;
pub use layers::{MaskedLayer, evit_fused, idle_gathered, idle_masked, prune_gathered};
pub use policy::{PolicyKind, TokenPolicy};
pub use schedule::{Schedule, evit_keep_count, keep_count};
pub use selection::{KEY_MASK_VALUE, TokenSelection, cls_scores};

/// Result type of this crate.
pub type Result<T, E = SelectorError> = std::result::Result<T, E>;
