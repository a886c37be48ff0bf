use std::path::PathBuf;

use thiserror::Error;

/// Everything that can go wrong reading images, data sets and weight files, or writing
/// outputs; each error names the file it concerns, and quotes its cause.
#[derive(Debug, Error)]
pub enum DataError {
    /// A value or a file's content is not what was expected.
    #[error("{0}")]
    Invalid(String),
    /// An image batch would hold too many values.
    #[error(
        "a batch of {batch} images of {side}x{side} is too large (at most {max} values)",
        max = crate::preprocess::MAX_BATCH_VALUES
    )]
    BatchTooLarge {
        /// Images asked for.
        batch: usize,
        /// Side of each image.
        side: usize,
    },
    /// The image format could not be recognised.
    #[error("cannot read the image header: {0}")]
    ImageHeader(std::io::Error),
    /// A JPEG cut short, which the decoder would fill with grey.
    #[error("the JPEG data is cut short (no end-of-image marker after its last scan)")]
    TruncatedJpeg,
    /// The decoder refused the image (its message quotes its own cause).
    #[error("{0}")]
    Decode(image::ImageError),
    /// An image file that does not decode.
    #[error("{} is not a decodable image: {cause}", .path.display())]
    NotAnImage {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: Box<DataError>,
    },
    /// A decoded image that cannot be preprocessed.
    #[error("cannot preprocess {}: {cause}", .path.display())]
    Preprocess {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: Box<DataError>,
    },
    /// An image that the training augmentation refused.
    #[error("cannot augment {}: {cause}", .path.display())]
    Augment {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: Box<DataError>,
    },
    /// A file or folder operation failed; `doing` says what, e.g. "cannot create".
    #[error("{doing} {}: {cause}", .path.display())]
    Io {
        /// What was being done.
        doing: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// An image could not be encoded.
    #[error("cannot encode {}: {cause}", .path.display())]
    Encode {
        /// The file it was for.
        path: PathBuf,
        /// Why.
        cause: image::ImageError,
    },
    /// A weight file that does not parse.
    #[error(
        "cannot read {role} {}{}: {cause}",
        .path.display(),
        if *.pth { " (a PyTorch checkpoint)" } else { "" }
    )]
    Weights {
        /// What the file is for ("weights", "input").
        role: String,
        /// The file.
        path: PathBuf,
        /// Whether it was read as a PyTorch checkpoint.
        pth: bool,
        /// Why.
        cause: Box<idlevit_checkpoint::CheckpointError>,
    },
    /// Reading a file, or parsing checkpoint bytes, failed (boxed: checkpoint errors carry
    /// whole diagnostics).
    #[error(transparent)]
    Checkpoint(Box<idlevit_checkpoint::CheckpointError>),
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] idlevit_tensor::TensorError),
}

impl From<idlevit_checkpoint::CheckpointError> for DataError {
    fn from(err: idlevit_checkpoint::CheckpointError) -> Self {
        Self::Checkpoint(Box::new(err))
    }
}

impl DataError {
    /// A [`DataError::Io`] error: `doing` to `path` failed with `source`.
    pub fn io(doing: &'static str, path: &std::path::Path, cause: std::io::Error) -> Self {
        Self::Io {
            doing,
            path: path.to_path_buf(),
            cause,
        }
    }
}

/// `Err(DataError::Invalid(..))` formatted like `format!`.
macro_rules! invalid {
    ($($arg:tt)*) => {
        Err($crate::DataError::Invalid(format!($($arg)*)))
    };
}
pub(crate) use invalid;
