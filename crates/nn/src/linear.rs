//! A fully connected layer with timm's `(out, in)` weight layout.

use idlevit_tensor::Tensor;

use crate::{Fused, Init, NnError, Param, Proj, Result, WeightSource};

/// `y = x W^T + b` over the last axis, as `torch.nn.Linear`.
#[derive(Clone, Debug)]
pub struct Linear {
    weight: Param,
    bias: Option<Param>,
}

crate::params!(Linear: weight, bias);

impl Linear {
    /// A layer from a weight of shape `(out, in)` and an optional bias of shape `(out)`.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        Self::from_params(
            Param::new("weight", weight),
            bias.map(|b| Param::new("bias", b)),
        )
    }

    /// A layer from named parameters, checking that their shapes fit together.
    pub fn from_params(weight: Param, bias: Option<Param>) -> Result<Self> {
        let [out, _] = *weight.value().shape() else {
            return Err(NnError::shape(
                weight.name(),
                "(out, in)",
                weight.value().shape(),
            ));
        };
        if let Some(b) = &bias
            && b.value().shape() != [out]
        {
            return Err(NnError::shape(
                b.name(),
                format!("[{out}]"),
                b.value().shape(),
            ));
        }
        Ok(Self { weight, bias })
    }

    /// Reads `{prefix}.weight` `(out, in)` and, when `bias` is set, `{prefix}.bias` `(out)`.
    pub fn load(
        src: &mut dyn WeightSource,
        prefix: &str,
        in_features: usize,
        out_features: usize,
        bias: bool,
    ) -> Result<Self> {
        let shape = [out_features, in_features];
        let weight = src.param(&format!("{prefix}.weight"), &shape, Init::FanIn)?;
        let bias = bias
            .then(|| src.param(&format!("{prefix}.bias"), &[out_features], Init::Bias))
            .transpose()?;
        Self::from_params(weight, bias)
    }

    /// The number of input features.
    pub fn in_features(&self) -> usize {
        self.weight.value().shape()[1]
    }

    /// The number of output features.
    pub fn out_features(&self) -> usize {
        self.weight.value().shape()[0]
    }

    /// The weight, `(out, in)`.
    pub fn weight(&self) -> &Param {
        &self.weight
    }

    /// The bias, if the layer has one.
    pub fn bias(&self) -> Option<&Param> {
        self.bias.as_ref()
    }

    /// The weight and bias as values of `bk`, with the packed copy of the weight that `bk`
    /// runs the product on ([`Param::packed_for`]).
    pub fn params<B: Fused + ?Sized>(&self, bk: &B) -> Proj<'_, B::Value> {
        Proj {
            weight: bk.param(&self.weight),
            bias: self.bias.as_ref().map(|b| bk.param(b)),
            packed: self.weight.packed_for(bk),
        }
    }

    /// Applies only output features `start..end` of the layer (a slice of the weight rows, no
    /// copy): for example the key third of a fused qkv projection.
    pub fn forward_outputs<B: Fused>(
        &self,
        bk: &B,
        x: &B::Value,
        start: usize,
        end: usize,
    ) -> Result<B::Value> {
        let p = self.params(bk);
        let p = Proj {
            weight: bk.slice(&p.weight, 0, start, end)?,
            bias: p.bias.map(|b| bk.slice(&b, 0, start, end)).transpose()?,
            ..p
        };
        Ok(idlevit_ops::project(bk, x, &p, Some(start..end))?)
    }

    /// Applies the layer to the last axis of `x`.
    pub fn forward<B: Fused>(&self, bk: &B, x: &B::Value) -> Result<B::Value> {
        Ok(idlevit_ops::project(bk, x, &self.params(bk), None)?)
    }
}
