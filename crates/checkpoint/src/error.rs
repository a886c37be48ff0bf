use thiserror::Error;

/// Everything that can go wrong while reading, writing or consuming a checkpoint.
#[derive(Debug, Error)]
pub enum CheckpointError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The operating-system error.
        source: std::io::Error,
    },
    /// The bytes are not a valid safetensors file.
    #[error("not a valid safetensors file: {0}")]
    Safetensors(String),
    /// A tensor stored with an element type we cannot turn into f32 weights.
    #[error("{name}: unsupported element type {dtype} (expected F32, F16, BF16 or F64)")]
    Dtype {
        /// The tensor.
        name: String,
        /// Its stored element type.
        dtype: String,
    },
    /// A tensor the model needs is not in the checkpoint.
    #[error("{name}: missing from the checkpoint (it holds {available} tensors{hint})")]
    Missing {
        /// The tensor.
        name: String,
        /// How many tensors the checkpoint has.
        available: usize,
        /// A near miss, if one exists.
        hint: String,
    },
    /// A tensor with another shape than the model needs.
    #[error("{name}: expected {expected:?}, found {found:?}")]
    Shape {
        /// The tensor.
        name: String,
        /// The shape the model needs.
        expected: Vec<usize>,
        /// The shape in the checkpoint.
        found: Vec<usize>,
    },
    /// Tensors in the checkpoint that the model does not use.
    #[error("unexpected tensors the model does not use: {}", .0.join(", "))]
    Unexpected(Vec<String>),
    /// The `.pth` reader refused the file.
    #[error(transparent)]
    Pth(#[from] crate::pth::PthError),
    /// A tensor could not be built.
    #[error(transparent)]
    Tensor(#[from] idlevit_tensor::TensorError),
}
