//! What each operation records, and its backward pass: given the gradient of the result,
//! add the gradient of every recorded operand to the store.

mod conv;
mod linalg;
mod movement;
mod pointwise;
mod rows;

use idlevit_tensor::Tensor;

use crate::Result;
use crate::gradients::GradStore;
use crate::ops::{self, ConvGeometry, reduce_to_shape};
use crate::tape::NodeId;

/// A recorded operation. Operand ids are `None` for constants (no gradient is computed for
/// them), and a saved value is kept only when some operand's gradient needs it.
pub(crate) enum Op {
    /// A parameter.
    Leaf,
    /// `x W^T + b`: the weight gradient needs `x`, the input gradient needs `W`.
    Linear {
        x: Option<NodeId>,
        w: Option<NodeId>,
        b: Option<NodeId>,
        x_value: Option<Tensor>,
        w_value: Option<Tensor>,
    },
    /// Layer norm; the row statistics are recomputed from `x` rather than stored.
    LayerNorm {
        x: Option<NodeId>,
        gamma: Option<NodeId>,
        beta: Option<NodeId>,
        x_value: Tensor,
        gamma_value: Tensor,
        eps: f32,
    },
    Gelu {
        x: NodeId,
        x_value: Tensor,
    },
    Add {
        a: Option<NodeId>,
        b: Option<NodeId>,
    },
    Sub {
        a: Option<NodeId>,
        b: Option<NodeId>,
    },
    /// `a * b`: each operand's gradient needs the other operand.
    Mul {
        a: Option<NodeId>,
        b: Option<NodeId>,
        a_value: Option<Tensor>,
        b_value: Option<Tensor>,
    },
    Scale {
        x: NodeId,
        factor: f32,
    },
    /// Batched product; the operands are kept as the (strided) views they were.
    Matmul {
        a: Option<NodeId>,
        b: Option<NodeId>,
        a_value: Option<Tensor>,
        b_value: Option<Tensor>,
    },
    /// Softmax; its backward needs only the output.
    Softmax {
        x: NodeId,
        y: Tensor,
    },
    /// Log-softmax; its backward needs only the output.
    LogSoftmax {
        x: NodeId,
        y: Tensor,
    },
    Reshape {
        x: NodeId,
    },
    Permute {
        x: NodeId,
        axes: Vec<usize>,
    },
    Slice {
        x: NodeId,
        axis: usize,
        start: usize,
        end: usize,
    },
    Select {
        x: NodeId,
        axis: usize,
        index: usize,
    },
    BroadcastTo {
        x: NodeId,
    },
    Concat {
        xs: Vec<Option<NodeId>>,
        axis: usize,
        sizes: Vec<usize>,
    },
    GatherRows {
        x: NodeId,
        indices: Vec<Vec<usize>>,
    },
    ScatterRows {
        x: Option<NodeId>,
        rows: Option<NodeId>,
        indices: Vec<Vec<usize>>,
    },
    SumAxis {
        x: NodeId,
        axis: usize,
    },
    SumAll {
        x: NodeId,
    },
    Abs {
        x: NodeId,
        x_value: Tensor,
    },
    Square {
        x: NodeId,
        x_value: Tensor,
    },
    L2Normalize {
        x: NodeId,
        x_value: Tensor,
        eps: f32,
    },
    /// Convolution: the weight gradient needs `x`, the input gradient needs `W`.
    Conv2d {
        x: Option<NodeId>,
        w: Option<NodeId>,
        b: Option<NodeId>,
        x_value: Option<Tensor>,
        w_value: Option<Tensor>,
        geo: ConvGeometry,
    },
    /// ReLU; its backward needs only the sign of the output.
    Relu {
        x: NodeId,
        y: Tensor,
    },
    /// Maximum over an axis: the gradient goes to the (first) maximum of each slice.
    MaxAxis {
        x: NodeId,
        axis: usize,
        index: Vec<usize>,
    },
}

impl Op {
    /// Adds the gradients of this operation's operands, given `g`, the gradient of its
    /// result (any layout).
    pub(crate) fn backward(&self, g: Tensor, store: &mut GradStore<'_>) -> Result<()> {
        match self {
            Op::Leaf => Ok(()),
            Op::Linear {
                x,
                w,
                b,
                x_value,
                w_value,
            } => linalg::linear(
                &g,
                (*x).zip(w_value.as_ref()),
                (*w).zip(x_value.as_ref()),
                *b,
                store,
            ),
            Op::LayerNorm {
                x,
                gamma,
                beta,
                x_value,
                gamma_value,
                eps,
            } => rows::layer_norm(&g, x_value, gamma_value, *eps, [*x, *gamma, *beta], store),
            Op::Gelu { x, x_value } => store.add(*x, pointwise::gelu(x_value, &g)?),
            Op::Add { a, b } => {
                if let Some(b) = *b {
                    store.add(b, reduce_to_shape(&g, store.shape(b))?)?;
                }
                match a {
                    Some(a) => store.add(*a, g),
                    None => Ok(()),
                }
            }
            Op::Sub { a, b } => {
                if let Some(b) = *b {
                    let gb = reduce_to_shape(&g, store.shape(b))?;
                    store.add(b, ops::scale(&gb, -1.0)?)?;
                }
                match a {
                    Some(a) => store.add(*a, g),
                    None => Ok(()),
                }
            }
            Op::Mul {
                a,
                b,
                a_value,
                b_value,
            } => {
                if let (Some(b), Some(a_value)) = (*b, a_value) {
                    let gb = reduce_to_shape(&ops::mul(&g, a_value)?, store.shape(b))?;
                    store.add(b, gb)?;
                }
                if let (Some(a), Some(b_value)) = (*a, b_value) {
                    store.add(a, ops::mul(&g, b_value)?)?;
                }
                Ok(())
            }
            Op::Scale { x, factor } => store.add(*x, ops::scale(&g, *factor)?),
            Op::Matmul {
                a,
                b,
                a_value,
                b_value,
            } => linalg::matmul(
                &g,
                (*a).zip(b_value.as_ref()),
                (*b).zip(a_value.as_ref()),
                store,
            ),
            Op::Softmax { x, y } => store.add(*x, rows::softmax(y, &g)?),
            Op::LogSoftmax { x, y } => store.add(*x, rows::log_softmax(y, &g)?),
            Op::Reshape { x } => store.add(*x, g.reshape(store.shape(*x))?),
            Op::Permute { x, axes } => {
                let mut inverse = vec![0; axes.len()];
                for (i, &a) in axes.iter().enumerate() {
                    inverse[a] = i;
                }
                store.add(*x, g.permute(&inverse)?)
            }
            Op::Slice {
                x,
                axis,
                start,
                end,
            } => movement::add_to_slice(store, *x, *axis, *start, *end, &g),
            Op::Select { x, axis, index } => movement::add_to_select(store, *x, *axis, *index, &g),
            Op::BroadcastTo { x } => store.add(*x, reduce_to_shape(&g, store.shape(*x))?),
            Op::Concat { xs, axis, sizes } => {
                let mut start = 0;
                for (x, &size) in xs.iter().zip(sizes) {
                    if let Some(x) = *x {
                        store.add(x, g.slice_axis(*axis, start, start + size)?)?;
                    }
                    start += size;
                }
                Ok(())
            }
            Op::GatherRows { x, indices } => movement::gather_rows(store, *x, indices, &g),
            Op::ScatterRows { x, rows, indices } => {
                movement::scatter_rows(store, *x, *rows, indices, &g)
            }
            Op::SumAxis { x, axis } => {
                // Every summed element receives the gradient of its sum: a broadcast view.
                let shape = store.shape(*x);
                let mut kept = shape.to_vec();
                kept[*axis] = 1;
                store.add(*x, g.reshape(&kept)?.broadcast_to(shape)?)
            }
            Op::SumAll { x } => store.add(*x, g.broadcast_to(store.shape(*x))?),
            Op::Abs { x, x_value } => store.add(*x, pointwise::abs(x_value, &g)?),
            Op::Square { x, x_value } => store.add(*x, pointwise::square(x_value, &g)?),
            Op::L2Normalize { x, x_value, eps } => {
                store.add(*x, rows::l2_normalize(x_value, &g, *eps)?)
            }
            Op::Conv2d {
                x,
                w,
                b,
                x_value,
                w_value,
                geo,
            } => conv::conv2d(
                &g,
                conv::ConvOperands {
                    x: (*x).zip(w_value.as_ref()),
                    w: (*w).zip(x_value.as_ref()),
                    b: *b,
                    geo,
                },
                store,
            ),
            Op::Relu { x, y } => store.add(*x, pointwise::relu(y, &g)?),
            Op::MaxAxis { x, axis, index } => movement::add_to_max(store, *x, *axis, index, &g),
        }
    }
}
