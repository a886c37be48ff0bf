use thiserror::Error;

use crate::names::{NameList, clip};

/// Everything that can go wrong while reading, writing or consuming a checkpoint.
#[derive(Debug, Error)]
pub enum CheckpointError {
    /// A file could not be written.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: String,
        /// The operating-system error.
        error: std::io::Error,
    },
    /// A file could not be read: missing, not a regular file, too large, or unreadable.
    #[error("cannot read {what} {path}: {error}")]
    Read {
        /// What the file is for ("weights", "safetensors file").
        what: String,
        /// The file.
        path: String,
        /// Why, as the operating system or the size check says it.
        error: std::io::Error,
    },
    /// A file was read but its contents were refused.
    #[error("{path}: {error}")]
    File {
        /// The file.
        path: String,
        /// What was wrong with its contents.
        error: Box<CheckpointError>,
    },
    /// The bytes are not a valid safetensors file.
    #[error("not a valid safetensors file: {}", clip(.0))]
    Safetensors(String),
    /// A tensor stored with an element type we cannot turn into f32 weights.
    #[error(
        "{}: unsupported element type {dtype} (expected F32, F16, BF16 or F64)",
        clip(name)
    )]
    Dtype {
        /// The tensor.
        name: String,
        /// Its stored element type.
        dtype: String,
    },
    /// A tensor the model needs is not in the checkpoint.
    #[error(
        "{}: missing from the checkpoint (it holds {available} tensors{hint})",
        clip(name)
    )]
    Missing {
        /// The tensor.
        name: String,
        /// How many tensors the checkpoint has.
        available: usize,
        /// A near miss, if one exists.
        hint: String,
    },
    /// A tensor with another shape than the model needs.
    #[error("{}: expected {expected:?}, found {}", clip(name), clip(&format!("{found:?}")))]
    Shape {
        /// The tensor.
        name: String,
        /// The shape the model needs.
        expected: Vec<usize>,
        /// The shape in the checkpoint.
        found: Vec<usize>,
    },
    /// Tensors in the checkpoint that the model does not use.
    #[error("unexpected tensors the model does not use: {0}")]
    Unexpected(NameList),
    /// The `.pth` reader refused the file.
    #[error(transparent)]
    Pth(#[from] crate::pth::PthError),
    /// A tensor could not be built.
    #[error(transparent)]
    Tensor(#[from] idlevit_tensor::TensorError),
}

impl CheckpointError {
    /// The error itself, without the file it was found in.
    pub fn inner(&self) -> &CheckpointError {
        match self {
            CheckpointError::File { error, .. } => error.inner(),
            other => other,
        }
    }
}
