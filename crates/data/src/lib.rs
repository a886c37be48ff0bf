#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod augment;
pub mod digits;
mod error;
pub mod files;
pub mod folder;
pub mod labels;
pub mod preprocess;
pub mod set;
pub mod tasks;
pub mod weights;

pub use error::DataError;
pub use folder::ImageFolder;
pub use set::ImageSet;
pub use tasks::{DigitsTask, TaskCanvases, TaskSplit, task_split};

/// Result type of this crate.
pub type Result<T, E = DataError> = std::result::Result<T, E>;
