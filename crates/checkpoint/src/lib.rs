//! Named-tensor checkpoints: read and write safetensors, read PyTorch `.pth` files.
//!
//! [`Checkpoint`] is an ordered map from timm-style names (`blocks.0.attn.qkv.weight`) to f32
//! [`Tensor`](idlevit_tensor::Tensor)s. [`WeightReader`] hands tensors to a model that asks for them by name and
//! expected shape, and reports anything missing, misshaped or left over with the name and both
//! shapes. `.pth` files are read by [`pth`], a pickle interpreter that executes nothing.
//!
//! ```
//! use idlevit_checkpoint::{Checkpoint, WeightReader};
//! use idlevit_tensor::Tensor;
//!
//! let mut ckpt = Checkpoint::default();
//! ckpt.insert("head.weight", Tensor::zeros(&[10, 64])?);
//! let bytes = ckpt.to_safetensors_bytes()?;
//! let loaded = Checkpoint::from_safetensors_bytes(&bytes)?;
//! let mut reader = WeightReader::new(loaded);
//! assert!(reader.take("head.weight", &[10, 32]).is_err()); // misshaped: names both shapes
//! let head = reader.take("head.weight", &[10, 64])?;
//! reader.finish()?; // nothing left over
//! assert_eq!(head.shape(), &[10, 64]);
//! # Ok::<(), idlevit_checkpoint::CheckpointError>(())
//! ```

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
