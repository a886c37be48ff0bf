use thiserror::Error;

/// Everything that can go wrong when building or reshaping a tensor.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TensorError {
    /// The data length does not match the number of elements the shape implies.
    #[error("shape {shape:?} holds {expected} elements, but {found} values were given")]
    DataLength {
        /// Requested shape.
        shape: Vec<usize>,
        /// Element count the shape implies.
        expected: usize,
        /// Number of values supplied.
        found: usize,
    },
    /// The element count of a shape overflows `usize`.
    #[error("shape {0:?} has more elements than fit in memory")]
    Overflow(Vec<usize>),
    /// A reshape to a shape with a different element count.
    #[error("cannot reshape {from:?} into {to:?}: element counts differ")]
    Reshape {
        /// Shape of the tensor.
        from: Vec<usize>,
        /// Requested shape.
        to: Vec<usize>,
    },
    /// An axis list that is not a permutation of the tensor's axes.
    #[error("{axes:?} is not a permutation of the {ndim} axes of the tensor")]
    Permutation {
        /// Requested axis order.
        axes: Vec<usize>,
        /// Number of axes of the tensor.
        ndim: usize,
    },
    /// An axis or a range outside the tensor.
    #[error("{what}: index {index} is out of range for a dimension of size {size}")]
    OutOfRange {
        /// What was being indexed.
        what: &'static str,
        /// The offending index.
        index: usize,
        /// The size it had to stay below (or equal, for range ends).
        size: usize,
    },
    /// Tensor shapes that do not fit together for an operation.
    #[error("{op}: shapes {left:?} and {right:?} do not fit together")]
    ShapeMismatch {
        /// The operation.
        op: &'static str,
        /// First operand's shape.
        left: Vec<usize>,
        /// Second operand's shape.
        right: Vec<usize>,
    },
    /// A tensor with the wrong number of axes for an operation.
    #[error("{op}: expected a tensor with {expected} axes, found shape {found:?}")]
    Rank {
        /// The operation.
        op: &'static str,
        /// Number of axes it needs.
        expected: usize,
        /// The shape it got.
        found: Vec<usize>,
    },
}
