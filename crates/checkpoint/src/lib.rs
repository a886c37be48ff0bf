#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod error;
mod files;
mod names;
pub mod pth;
mod safetensors_io;
mod weights;

pub use error::CheckpointError;
pub use files::{MAX_FILE_BYTES, read_file_capped};
pub use names::{MAX_ECHOED_CHARS, MAX_LISTED_NAMES, NameList, clip};
pub use safetensors_io::{MAX_HEADER_BYTES, MAX_SHAPE_AXES};
pub use weights::{Checkpoint, WeightReader};

/// Result type of this crate.
pub type Result<T, E = CheckpointError> = std::result::Result<T, E>;
