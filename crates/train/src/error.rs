use thiserror::Error;

/// Everything that can go wrong in a training step.
#[derive(Debug, Error)]
pub enum TrainError {
    /// The loss is not a finite number: training must stop, the last good weights kept.
    #[error("the loss became {0} (not finite); stopping before the weights are damaged")]
    NonFinite(f32),
    /// A gradient holds NaN or infinity: the step is refused before it touches the weights.
    #[error("the gradient of {0} is not finite; stopping before the weights are damaged")]
    NonFiniteGradient(String),
    /// An update made a weight NaN or infinite (a learning rate far too large): training must
    /// stop and the damaged weights must never be saved.
    #[error(
        "an update made the weights of {0} non-finite (is the learning rate far too large?); \
         stopping, and nothing damaged is written"
    )]
    NonFiniteWeights(String),
    /// Inputs that do not fit together.
    #[error("{0}")]
    Invalid(String),
    /// The model failed (boxed: model errors carry whole checkpoint diagnostics).
    #[error(transparent)]
    Zoo(Box<idlevit_zoo::ZooError>),
    /// A layer operation failed.
    #[error(transparent)]
    Nn(#[from] idlevit_nn::NnError),
    /// The cut loss failed.
    #[error(transparent)]
    CutLoss(#[from] idlevit_cutloss::CutLossError),
    /// An operation failed.
    #[error(transparent)]
    Ops(#[from] idlevit_nn::OpsError),
    /// Backpropagation failed.
    #[error(transparent)]
    Autodiff(#[from] idlevit_autodiff::AutodiffError),
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] idlevit_tensor::TensorError),
    /// Reading images or weights, or writing a checkpoint, failed.
    #[error(transparent)]
    Data(#[from] idlevit_data::DataError),
    /// Checkpoint bytes did not parse.
    #[error(transparent)]
    Checkpoint(#[from] idlevit_checkpoint::CheckpointError),
    /// A step failed: what it was doing (naming the file where there is one), and why.
    #[error("{0}: {1}")]
    Context(String, Box<TrainError>),
}

/// Adds what was being done to an error, as [`TrainError::Context`].
pub(crate) trait Context<T> {
    /// The error, if any, under the context `f` makes.
    fn context(self, f: impl FnOnce() -> String) -> Result<T, TrainError>;
}

impl<T, E: Into<TrainError>> Context<T> for Result<T, E> {
    fn context(self, f: impl FnOnce() -> String) -> Result<T, TrainError> {
        self.map_err(|e| TrainError::Context(f(), Box::new(e.into())))
    }
}

impl From<idlevit_zoo::ZooError> for TrainError {
    fn from(err: idlevit_zoo::ZooError) -> Self {
        Self::Zoo(Box::new(err))
    }
}

/// Returns `Err(TrainError::Invalid(..))`, formatted like `format!`.
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::TrainError::Invalid(format!($($arg)*)))
    };
}
pub(crate) use bail;
