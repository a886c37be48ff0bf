//! Gradients: the accumulator the backward pass writes into, and what it hands back.

use std::collections::BTreeMap;

use idlevit_kernels as kernels;
use idlevit_tensor::Tensor;
use ndarray::{ArrayViewMutD, IxDyn};

use crate::tape::{Node, NodeId};
use crate::{AutodiffError, Result};

/// The gradients of one backward pass, by parameter name: each has its parameter's shape and
/// is contiguous.
#[derive(Clone, Debug, Default)]
pub struct Gradients {
    by_name: BTreeMap<String, Tensor>,
}

impl Gradients {
    /// The gradient of the parameter registered as `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.by_name.get(name)
    }

    /// Every `(name, gradient)`, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.by_name.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The number of parameters.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether no parameter was registered.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The gradients as a map from name to tensor.
    pub fn into_map(self) -> BTreeMap<String, Tensor> {
        self.by_name
    }

    pub(crate) fn insert(&mut self, name: String, grad: Tensor) {
        self.by_name.insert(name, grad);
    }
}

/// The gradient of every node during a backward pass. A node's entry is complete once every
/// node recorded after it has been processed, since operations only consume earlier nodes.
pub(crate) struct GradStore<'g> {
    nodes: &'g [Node],
    grads: Vec<Option<Tensor>>,
}

impl<'g> GradStore<'g> {
    /// An empty store for the nodes of a graph.
    pub(crate) fn new(nodes: &'g [Node]) -> Self {
        Self {
            nodes,
            grads: vec![None; nodes.len()],
        }
    }

    /// The shape of node `id`'s value (and gradient).
    pub(crate) fn shape(&self, id: NodeId) -> &'g [usize] {
        &self.nodes[id].shape
    }

    /// Takes node `id`'s gradient out, leaving nothing behind.
    pub(crate) fn take(&mut self, id: NodeId) -> Option<Tensor> {
        self.grads[id].take()
    }

    /// Sets the gradient of node `id` (the seed of the pass).
    pub(crate) fn set(&mut self, id: NodeId, g: Tensor) {
        self.grads[id] = Some(g);
    }

    /// Adds `g` (any layout) to node `id`'s gradient.
    pub(crate) fn add(&mut self, id: NodeId, g: Tensor) -> Result<()> {
        let shape = self.shape(id);
        if g.shape() != shape {
            return Err(AutodiffError::shape(
                "gradient",
                format!("the operand's shape {shape:?}"),
                g.shape(),
            ));
        }
        match &mut self.grads[id] {
            slot @ None => *slot = Some(g),
            Some(acc) => add_into(acc.as_mut_slice(), shape, &g)?,
        }
        Ok(())
    }

    /// Node `id`'s gradient as a contiguous buffer to add into (zeros if it has none yet).
    pub(crate) fn buffer(&mut self, id: NodeId) -> Result<&mut [f32]> {
        let grad = match self.grads[id].take() {
            Some(g) => g,
            None => Tensor::zeros(self.shape(id))?,
        };
        Ok(self.grads[id].insert(grad).as_mut_slice())
    }
}

/// `dst += src`, where `dst` is the contiguous buffer of a tensor of `shape` and `src` a
/// tensor of that shape in any layout.
pub(crate) fn add_into(dst: &mut [f32], shape: &[usize], src: &Tensor) -> Result<()> {
    if let Some(values) = src.as_slice() {
        kernels::add_assign(dst, values);
        return Ok(());
    }
    let mut view = ArrayViewMutD::from_shape(IxDyn(shape), dst)
        .map_err(|_| AutodiffError::shape("gradient buffer", format!("{shape:?}"), src.shape()))?;
    view.zip_mut_with(&src.view(), |d, &s| *d += s);
    Ok(())
}
