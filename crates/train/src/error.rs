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
}

impl From<idlevit_zoo::ZooError> for TrainError {
    fn from(err: idlevit_zoo::ZooError) -> Self {
        Self::Zoo(Box::new(err))
    }
}
