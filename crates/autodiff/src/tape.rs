//! The tape: a graph of recorded operations, and the values that point into it.
//!
//! One file on purpose: the tape's [`Backend`] impl records every primitive op, one short
//! method each, next to the bookkeeping they share.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use idlevit_tensor::Tensor;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::backward::Op;
use crate::gradients::GradStore;
use idlevit_ops::{Backend, Conv2dSpec, Fused, OpsError, Param, Result};

use crate::{AutodiffError, Gradients, ops};

/// Index of a node in its tape's graph; every operation's operands have smaller indices.
pub(crate) type NodeId = usize;

/// Distinguishes tapes, so that a value from one is never read as a node of another.
static NEXT_TAPE: AtomicU64 = AtomicU64::new(0);

/// One recorded value: the operation that made it (with what its backward needs) and its
/// shape.
pub(crate) struct Node {
    pub(crate) op: Op,
    pub(crate) shape: Vec<usize>,
}

#[derive(Default)]
struct Graph {
    nodes: Vec<Node>,
    /// Every parameter leaf, in registration order.
    leaves: Vec<(String, NodeId)>,
    by_name: HashMap<String, NodeId>,
    /// A name registered again with another shape (name, first shape, second shape);
    /// reported by `backward`, since registering cannot fail.
    conflict: Option<(String, Vec<usize>, Vec<usize>)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct NodeRef {
    tape: u64,
    id: NodeId,
}

/// A value computed on a [`Tape`]: its tensor, and the node that recorded it. Constants, and
/// anything computed from constants only, have no node and cost the tape nothing. Cloning is
/// cheap (the tensor's storage is shared).
#[derive(Clone, Debug)]
pub struct Var {
    value: Tensor,
    node: Option<NodeRef>,
}

impl Var {
    /// The value.
    pub fn value(&self) -> &Tensor {
        &self.value
    }

    /// The shape of the value.
    pub fn shape(&self) -> &[usize] {
        self.value.shape()
    }

    /// Whether a gradient flows back through this value (it depends on a parameter).
    pub fn requires_grad(&self) -> bool {
        self.node.is_some()
    }
}

/// Records operations on [`Var`]s for reverse-mode differentiation.
///
/// Each operation computes its result with [`ops`] (the same functions inference uses) and,
/// when an operand depends on a parameter, records the operation with only what its backward
/// pass needs. [`backward`](Self::backward) then walks the records in reverse, accumulating
/// each node's gradient. Methods take `&self` (the graph sits in a `RefCell`) so that layers
/// can share one tape while they run; a tape is meant for one thread.
pub struct Tape {
    id: u64,
    graph: RefCell<Graph>,
    /// The random stream of stochastic layers (drop path); `None` makes them the identity,
    /// so an unseeded tape computes exactly what inference computes.
    random: RefCell<Option<StdRng>>,
}

impl Default for Tape {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Tape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tape")
            .field("nodes", &self.num_nodes())
            .finish()
    }
}

impl Tape {
    /// An empty tape.
    pub fn new() -> Self {
        Self {
            id: NEXT_TAPE.fetch_add(1, Ordering::Relaxed),
            graph: RefCell::default(),
            random: RefCell::new(None),
        }
    }

    /// An empty tape for a training step whose stochastic layers (drop path) draw from a
    /// random stream seeded with `seed`, so that a step can be replayed exactly.
    pub fn with_seed(seed: u64) -> Self {
        let tape = Self::new();
        *tape.random.borrow_mut() = Some(StdRng::seed_from_u64(seed));
        tape
    }

    /// `count` draws uniform in [0, 1) from the tape's random stream, or `None` for a tape
    /// made without a seed (stochastic layers are then the identity).
    pub fn uniform(&self, count: usize) -> Option<Vec<f32>> {
        let mut random = self.random.borrow_mut();
        let rng = random.as_mut()?;
        Some((0..count).map(|_| rng.random::<f32>()).collect())
    }

    /// The number of recorded nodes (parameters and operations that depend on them).
    pub fn num_nodes(&self) -> usize {
        self.graph.borrow().nodes.len()
    }

    /// A learnable parameter called `name`; its gradient is reported under that name.
    /// Registering a name again (with the same shape) returns another handle on the same
    /// node, so the gradients of every use accumulate into one.
    pub fn leaf(&self, name: &str, value: Tensor) -> Var {
        let mut graph = self.graph.borrow_mut();
        if let Some(&id) = graph.by_name.get(name) {
            let first = &graph.nodes[id].shape;
            if first == value.shape() {
                return self.var(value, id);
            }
            if graph.conflict.is_none() {
                graph.conflict = Some((name.to_string(), first.clone(), value.shape().to_vec()));
            }
        }
        let id = graph.nodes.len();
        graph.nodes.push(Node {
            op: Op::Leaf,
            shape: value.shape().to_vec(),
        });
        if !graph.by_name.contains_key(name) {
            graph.by_name.insert(name.to_string(), id);
            graph.leaves.push((name.to_string(), id));
        }
        self.var(value, id)
    }

    /// Differentiates `loss` (a value with one element, of any rank) with respect to every
    /// parameter registered with [`leaf`](Self::leaf). A parameter the loss does not depend
    /// on gets a zero gradient.
    pub fn backward(&self, loss: &Var) -> crate::Result<Gradients> {
        if loss.value.numel() != 1 {
            return Err(AutodiffError::NotScalar(loss.shape().to_vec()));
        }
        let root = self.id_of(loss, "backward")?;
        let graph = self.graph.borrow();
        if let Some((name, first, second)) = &graph.conflict {
            return Err(AutodiffError::LeafShape {
                name: name.clone(),
                first: first.clone(),
                second: second.clone(),
            });
        }
        let mut store = GradStore::new(&graph.nodes);
        if let Some(root) = root {
            store.set(root, Tensor::full(loss.shape(), 1.0)?);
            for id in (0..=root).rev() {
                let node = &graph.nodes[id];
                if matches!(node.op, Op::Leaf) {
                    continue;
                }
                if let Some(g) = store.take(id) {
                    node.op.backward(g, &mut store)?;
                }
            }
        }
        let mut grads = Gradients::default();
        for (name, id) in &graph.leaves {
            let grad = match store.take(*id) {
                Some(g) => g.contiguous(),
                None => Tensor::zeros(store.shape(*id))?,
            };
            grads.insert(name.clone(), grad);
        }
        Ok(grads)
    }
}

/// [`Backend`] methods for operations of one operand: `fn op(x, args) = forward => record`
/// computes `forward` and, when `x` is on the tape, records the [`Op`] that `record` builds
/// from `x`'s node and the result.
macro_rules! unary_ops {
    ($($(#[$doc:meta])* fn $op:ident($x:ident $(, $arg:ident: $ty:ty)*) = $forward:expr
        => $record:expr;)*) => {
        $($(#[$doc])* fn $op(&self, $x: &Var $(, $arg: $ty)*) -> Result<Var> {
            let [id] = self.ids(stringify!($op), [Some($x)])?;
            let y = $forward?;
            self.record_unary(y, id, $record)
        })*
    };
}

/// Values are [`Var`]s. Each operation computes its result with [`ops`] (the same function
/// [`Eager`](idlevit_ops::Eager) runs) and, when an operand depends on a parameter, records
/// what its backward pass needs. Parameters become leaves under their checkpoint names, so
/// [`Tape::backward`] reports gradients under timm's names.
impl Backend for Tape {
    type Value = Var;

    fn shape<'a>(&self, x: &'a Var) -> &'a [usize] {
        x.shape()
    }

    fn constant(&self, value: Tensor) -> Var {
        Var { value, node: None }
    }

    fn param(&self, p: &Param) -> Var {
        self.leaf(p.name(), p.value().clone())
    }

    fn to_tensor(&self, x: &Var) -> Tensor {
        x.value.clone()
    }

    fn linear(&self, x: &Var, w: &Var, b: Option<&Var>) -> Result<Var> {
        let [xi, wi, bi] = self.ids("linear", [Some(x), Some(w), b])?;
        let y = ops::linear(&x.value, &w.value, b.map(|b| &b.value))?;
        self.record(y, [xi, wi, bi], || Op::Linear {
            x: xi,
            w: wi,
            b: bi,
            x_value: wi.map(|_| x.value.clone()),
            w_value: xi.map(|_| w.value.clone()),
        })
    }

    fn layer_norm(&self, x: &Var, gamma: &Var, beta: &Var, eps: f32) -> Result<Var> {
        let ids = self.ids("layer_norm", [Some(x), Some(gamma), Some(beta)])?;
        let y = ops::layer_norm(&x.value, &gamma.value, &beta.value, eps)?;
        self.record(y, ids, || Op::LayerNorm {
            x: ids[0],
            gamma: ids[1],
            beta: ids[2],
            x_value: x.value.clone(),
            gamma_value: gamma.value.clone(),
            eps,
        })
    }

    unary_ops! {
        fn gelu(x) = ops::gelu(&x.value)
            => |id, _| Op::Gelu { x: id, x_value: x.value.clone() };
        fn scale(x, factor: f32) = ops::scale(&x.value, factor) => |x, _| Op::Scale { x, factor };
        fn softmax(x) = ops::softmax(&x.value) => |x, y| Op::Softmax { x, y: y.clone() };
        fn log_softmax(x) = ops::log_softmax(&x.value)
            => |x, y| Op::LogSoftmax { x, y: y.clone() };
        fn reshape(x, shape: &[usize]) = ops::reshape(&x.value, shape) => |x, _| Op::Reshape { x };
        fn permute(x, axes: &[usize]) = ops::permute(&x.value, axes)
            => |x, _| Op::Permute { x, axes: axes.to_vec() };
        fn slice(x, axis: usize, start: usize, end: usize) = ops::slice(&x.value, axis, start, end)
            => |x, _| Op::Slice { x, axis, start, end };
        fn select(x, axis: usize, index: usize) = ops::select(&x.value, axis, index)
            => |x, _| Op::Select { x, axis, index };
        fn broadcast_to(x, shape: &[usize]) = ops::broadcast_to(&x.value, shape)
            => |x, _| Op::BroadcastTo { x };
        fn gather_rows(x, indices: &[Vec<usize>]) = ops::gather_rows(&x.value, indices)
            => |x, _| Op::GatherRows { x, indices: indices.to_vec() };
        fn sum_axis(x, axis: usize, keepdim: bool) = ops::sum_axis(&x.value, axis, keepdim)
            => |x, _| Op::SumAxis { x, axis };
        fn sum_all(x) = ops::sum_all(&x.value) => |x, _| Op::SumAll { x };
        /// `|x|` (its gradient at 0 is taken as 0).
        fn abs(x) = ops::abs(&x.value) => |id, _| Op::Abs { x: id, x_value: x.value.clone() };
        fn square(x) = ops::square(&x.value)
            => |id, _| Op::Square { x: id, x_value: x.value.clone() };
        fn l2_normalize(x, eps: f32) = ops::l2_normalize(&x.value, eps)
            => |id, _| Op::L2Normalize { x: id, x_value: x.value.clone(), eps };
        /// `max(x, 0)` (its gradient at 0 is taken as 0).
        fn relu(x) = ops::relu(&x.value) => |x, y| Op::Relu { x, y: y.clone() };
    }

    fn add(&self, a: &Var, b: &Var) -> Result<Var> {
        let [ai, bi] = self.ids("add", [Some(a), Some(b)])?;
        let y = ops::add(&a.value, &b.value)?;
        self.record(y, [ai, bi], || Op::Add { a: ai, b: bi })
    }

    fn sub(&self, a: &Var, b: &Var) -> Result<Var> {
        let [ai, bi] = self.ids("sub", [Some(a), Some(b)])?;
        let y = ops::sub(&a.value, &b.value)?;
        self.record(y, [ai, bi], || Op::Sub { a: ai, b: bi })
    }

    fn mul(&self, a: &Var, b: &Var) -> Result<Var> {
        let [ai, bi] = self.ids("mul", [Some(a), Some(b)])?;
        let y = ops::mul(&a.value, &b.value)?;
        self.record(y, [ai, bi], || Op::Mul {
            a: ai,
            b: bi,
            a_value: bi.map(|_| a.value.clone()),
            b_value: ai.map(|_| b.value.clone()),
        })
    }

    fn matmul(&self, a: &Var, b: &Var) -> Result<Var> {
        let [ai, bi] = self.ids("matmul", [Some(a), Some(b)])?;
        let y = ops::matmul(&a.value, &b.value)?;
        self.record(y, [ai, bi], || Op::Matmul {
            a: ai,
            b: bi,
            a_value: bi.map(|_| a.value.clone()),
            b_value: ai.map(|_| b.value.clone()),
        })
    }

    fn concat(&self, xs: &[Var], axis: usize) -> Result<Var> {
        let ids = xs
            .iter()
            .map(|x| self.id_of(x, "concat"))
            .collect::<Result<Vec<_>>>()?;
        let values: Vec<Tensor> = xs.iter().map(|x| x.value.clone()).collect();
        let y = ops::concat(&values, axis)?;
        if ids.iter().all(Option::is_none) {
            return Ok(self.constant(y));
        }
        let sizes = values.iter().map(|v| v.shape()[axis]).collect();
        Ok(self.push(
            y,
            Op::Concat {
                xs: ids,
                axis,
                sizes,
            },
        ))
    }

    fn scatter_rows(&self, x: &Var, indices: &[Vec<usize>], rows: &Var) -> Result<Var> {
        let [xi, ri] = self.ids("scatter_rows", [Some(x), Some(rows)])?;
        let y = ops::scatter_rows(&x.value, indices, &rows.value)?;
        self.record(y, [xi, ri], || Op::ScatterRows {
            x: xi,
            rows: ri,
            indices: indices.to_vec(),
        })
    }

    /// 2-D convolution of `x` `(batch, in, H, W)` with `w` `(out, in / groups, kh, kw)` and
    /// an optional bias `(out)`.
    fn conv2d(&self, x: &Var, w: &Var, b: Option<&Var>, spec: Conv2dSpec) -> Result<Var> {
        let [xi, wi, bi] = self.ids("conv2d", [Some(x), Some(w), b])?;
        let y = ops::conv2d(&x.value, &w.value, b.map(|b| &b.value), spec)?;
        let geo = ops::ConvGeometry::of(x.shape(), w.shape(), spec)?;
        self.record(y, [xi, wi, bi], || Op::Conv2d {
            x: xi,
            w: wi,
            b: bi,
            x_value: wi.map(|_| x.value.clone()),
            w_value: xi.map(|_| w.value.clone()),
            geo,
        })
    }

    /// Maximum over `axis`, which is removed; the gradient goes to the first maximum.
    fn max_axis(&self, x: &Var, axis: usize) -> Result<Var> {
        let [xi] = self.ids("max_axis", [Some(x)])?;
        let (y, index) = ops::max_axis_with_index(&x.value, axis)?;
        self.record_unary(y, xi, |x, _| Op::MaxAxis { x, axis, index })
    }

    fn drop_path(&self, branch: &Var, rate: f32) -> Result<Var> {
        if rate <= 0.0 {
            return Ok(branch.clone());
        }
        let shape = branch.shape();
        let batch = shape.first().copied().unwrap_or(1);
        let Some(draws) = self.uniform(batch) else {
            return Ok(branch.clone());
        };
        let keep = 1.0 - rate;
        let factors = draws
            .into_iter()
            .map(|u| if u < keep { 1.0 / keep } else { 0.0 })
            .collect();
        let mut factor_shape = vec![1; shape.len()];
        if let Some(first) = factor_shape.first_mut() {
            *first = batch;
        }
        let factors = Tensor::from_vec(factor_shape, factors)?;
        self.mul(branch, &self.constant(factors))
    }
}

/// The tape leaves every fused operation to its default: the composition of the primitives
/// it records.
impl Fused for Tape {}

impl Tape {
    /// The node of `x` on this tape (`None` for a constant).
    fn id_of(&self, x: &Var, op: &'static str) -> Result<Option<NodeId>> {
        match x.node {
            None => Ok(None),
            Some(NodeRef { tape, id }) if tape == self.id => Ok(Some(id)),
            Some(_) => Err(OpsError::ForeignValue { op }),
        }
    }

    /// The nodes of several (optional) operands.
    fn ids<const N: usize>(
        &self,
        op: &'static str,
        vars: [Option<&Var>; N],
    ) -> Result<[Option<NodeId>; N]> {
        let mut ids = [None; N];
        for (slot, var) in ids.iter_mut().zip(vars) {
            if let Some(var) = var {
                *slot = self.id_of(var, op)?;
            }
        }
        Ok(ids)
    }

    /// `value` as a recorded node made by `op()`, or as a constant when no operand is on
    /// the tape (then `op` is never built and nothing is saved).
    fn record<const N: usize>(
        &self,
        value: Tensor,
        ids: [Option<NodeId>; N],
        op: impl FnOnce() -> Op,
    ) -> Result<Var> {
        if ids.iter().all(Option::is_none) {
            return Ok(self.constant(value));
        }
        Ok(self.push(value, op()))
    }

    /// [`record`](Self::record) for an operation of one operand; `op` also sees the result.
    fn record_unary(
        &self,
        value: Tensor,
        id: Option<NodeId>,
        op: impl FnOnce(NodeId, &Tensor) -> Op,
    ) -> Result<Var> {
        Ok(match id {
            None => self.constant(value),
            Some(id) => {
                let op = op(id, &value);
                self.push(value, op)
            }
        })
    }

    fn push(&self, value: Tensor, op: Op) -> Var {
        let mut graph = self.graph.borrow_mut();
        let id = graph.nodes.len();
        graph.nodes.push(Node {
            op,
            shape: value.shape().to_vec(),
        });
        self.var(value, id)
    }

    fn var(&self, value: Tensor, id: NodeId) -> Var {
        Var {
            value,
            node: Some(NodeRef { tape: self.id, id }),
        }
    }
}
