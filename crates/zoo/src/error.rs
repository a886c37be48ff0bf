use thiserror::Error;

/// Everything that can go wrong while configuring, loading or running a zoo model.
#[derive(Debug, Error)]
pub enum ZooError {
    /// A configuration that cannot describe a working model.
    #[error("invalid model config: {0}")]
    Config(String),
    /// A model name the zoo does not know.
    #[error("unknown model `{name}`; known models: {known}")]
    UnknownModel {
        /// The name asked for.
        name: String,
        /// The names the zoo knows, comma separated.
        known: String,
    },
    /// A configuration file that is not valid JSON for the config.
    #[error("config {path}: {message}")]
    ConfigFile {
        /// The file.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// A layer refused its weights or inputs.
    #[error(transparent)]
    Nn(#[from] idlevit_nn::NnError),
    /// An operation failed.
    #[error(transparent)]
    Ops(#[from] idlevit_nn::OpsError),
    /// The checkpoint could not supply the weights.
    #[error(transparent)]
    Checkpoint(#[from] idlevit_checkpoint::CheckpointError),
    /// The token policy does not fit the model.
    #[error(transparent)]
    Selector(#[from] idlevit_selector::SelectorError),
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] idlevit_tensor::TensorError),
}

/// Returns `Err(ZooError::Config(..))`, formatted like `format!`.
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::ZooError::Config(format!($($arg)*)))
    };
}
pub(crate) use bail;
