use thiserror::Error;

/// Everything that can go wrong in the front door: the lower crates' errors (each naming
/// the file or tensor it concerns), and what the front door itself checks.
#[derive(Debug, Error)]
pub enum Error {
    /// An argument or a combination of them that cannot work.
    #[error("{0}")]
    Invalid(String),
    /// Reading a model, finetuning or evaluating failed (boxed: these errors carry whole
    /// checkpoint diagnostics).
    #[error(transparent)]
    Train(Box<idlevit_train::TrainError>),
    /// A model could not be built or run.
    #[error(transparent)]
    Zoo(Box<idlevit_zoo::ZooError>),
    /// Reading an image or a weight file failed.
    #[error(transparent)]
    Data(Box<idlevit_data::DataError>),
    /// A token schedule or selection is not valid.
    #[error(transparent)]
    Selector(#[from] idlevit_selector::SelectorError),
    /// An operation on tensors failed.
    #[error(transparent)]
    Ops(#[from] idlevit_ops::OpsError),
    /// A tensor could not be made or reshaped.
    #[error(transparent)]
    Tensor(#[from] idlevit_tensor::TensorError),
    /// What was being done (naming the file where there is one), and why it failed.
    #[error("{0}: {1}")]
    Context(String, Box<Error>),
}

impl From<idlevit_train::TrainError> for Error {
    fn from(err: idlevit_train::TrainError) -> Self {
        Self::Train(Box::new(err))
    }
}

impl From<idlevit_zoo::ZooError> for Error {
    fn from(err: idlevit_zoo::ZooError) -> Self {
        Self::Zoo(Box::new(err))
    }
}

impl From<idlevit_data::DataError> for Error {
    fn from(err: idlevit_data::DataError) -> Self {
        Self::Data(Box::new(err))
    }
}

/// Adds what was being done to an error, as [`Error::Context`].
pub(crate) trait Context<T> {
    /// The error, if any, under the context `f` makes.
    fn context(self, f: impl FnOnce() -> String) -> Result<T, Error>;
}

impl<T, E: Into<Error>> Context<T> for Result<T, E> {
    fn context(self, f: impl FnOnce() -> String) -> Result<T, Error> {
        self.map_err(|e| Error::Context(f(), Box::new(e.into())))
    }
}
