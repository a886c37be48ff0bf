use std::path::PathBuf;

use idlevit_checkpoint::CheckpointError;
use thiserror::Error;

/// Everything that can go wrong reading images, data sets and weight files, or writing
/// outputs; each error names the file it concerns, and quotes its cause.
#[derive(Debug, Error)]
pub enum DataError {
    /// A value or a file's content is not what was expected.
    #[error("{0}")]
    Invalid(String),
    /// A batch of `.0` images of side `.1` would hold too many values.
    #[error(
        "a batch of {0} images of {1}x{1} is too large (at most {max} values)",
        max = crate::preprocess::MAX_BATCH_VALUES
    )]
    BatchTooLarge(usize, usize),
    /// The image format could not be recognised.
    #[error("cannot read the image header: {0}")]
    ImageHeader(std::io::Error),
    /// The decoder refused the image (its message quotes its own cause).
    #[error("{0}")]
    Decode(image::ImageError),
    /// Image file `.0` does not decode, for reason `.1`.
    #[error("{path} is not a decodable image: {1}", path = .0.display())]
    NotAnImage(PathBuf, Box<DataError>),
    /// Work on an image file failed: what was done (e.g. "cannot preprocess"), the file, why.
    #[error("{0} {path}: {2}", path = .1.display())]
    Image(&'static str, PathBuf, Box<DataError>),
    /// A file or folder operation failed: what was done (e.g. "cannot create"), the path, why.
    #[error("{0} {path}: {2}", path = .1.display())]
    Io(&'static str, PathBuf, std::io::Error),
    /// An image for file `.0` could not be encoded.
    #[error("cannot encode {path}: {1}", path = .0.display())]
    Encode(PathBuf, image::ImageError),
    /// A weight file did not parse: what it is for, the file, whether it was read as a
    /// PyTorch checkpoint, and why.
    #[error(
        "cannot read {0} {path}{kind}: {3}",
        path = .1.display(),
        kind = if *.2 { " (a PyTorch checkpoint)" } else { "" }
    )]
    Weights(String, PathBuf, bool, Box<CheckpointError>),
    /// Reading a file, or parsing checkpoint bytes, failed (boxed: checkpoint errors carry
    /// whole diagnostics).
    #[error(transparent)]
    Checkpoint(Box<CheckpointError>),
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] idlevit_tensor::TensorError),
}

impl From<CheckpointError> for DataError {
    fn from(err: CheckpointError) -> Self {
        Self::Checkpoint(Box::new(err))
    }
}

/// Returns `Err(DataError::Invalid(..))`, formatted like `format!`, unless `$cond` holds.
macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            return Err($crate::DataError::Invalid(format!($($arg)*)));
        }
    };
}
pub(crate) use ensure;
