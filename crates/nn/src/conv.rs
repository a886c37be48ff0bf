//! Convolution layers: a plain `Conv2d`, and a bias-free convolution followed by eval-mode
//! batch norm, folded into one convolution.

use idlevit_ops::Conv2dSpec;
use idlevit_tensor::Tensor;

use crate::{Fused, Init, NnError, Param, Params, Result, WeightSource};
use idlevit_ops::{ParamVisitor, ParamVisitorMut};

/// `torch.nn.Conv2d` with square kernels: weight `(out, in / groups, k, k)`, optional bias.
#[derive(Clone, Debug)]
pub struct Conv2d {
    weight: Param,
    bias: Option<Param>,
    spec: Conv2dSpec,
}

/// The shape of a convolution layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Kernel side.
    pub kernel: usize,
    /// Stride, padding and groups.
    pub spec: Conv2dSpec,
}

impl ConvShape {
    fn weight_shape(&self) -> Result<[usize; 4]> {
        let g = self.spec.groups;
        if g == 0
            || self.spec.stride == 0
            || self.kernel == 0
            || !self.in_channels.is_multiple_of(g)
            || !self.out_channels.is_multiple_of(g)
        {
            return Err(NnError::Config(format!(
                "conv {} -> {} channels, kernel {}, stride {}, {g} groups: channels must divide \
                 into the groups, and kernel, stride and groups must be at least 1",
                self.in_channels, self.out_channels, self.kernel, self.spec.stride
            )));
        }
        Ok([
            self.out_channels,
            self.in_channels / g,
            self.kernel,
            self.kernel,
        ])
    }
}

crate::params!(Conv2d: weight, bias);

impl Conv2d {
    /// Reads `{prefix}.weight` and, if `bias`, `{prefix}.bias`.
    pub fn load(
        src: &mut dyn WeightSource,
        prefix: &str,
        shape: ConvShape,
        bias: bool,
    ) -> Result<Self> {
        let weight = src.param(
            &format!("{prefix}.weight"),
            &shape.weight_shape()?,
            Init::FanIn,
        )?;
        let bias = bias
            .then(|| src.param(&format!("{prefix}.bias"), &[shape.out_channels], Init::Bias))
            .transpose()?;
        Ok(Self {
            weight,
            bias,
            spec: shape.spec,
        })
    }

    /// Convolves `x` `(batch, in, H, W)`.
    pub fn forward<B: Fused>(&self, bk: &B, x: &B::Value) -> Result<B::Value> {
        let bias = self.bias.as_ref().map(|b| bk.param(b));
        Ok(bk.conv2d(x, &bk.param(&self.weight), bias.as_ref(), self.spec)?)
    }
}

/// A bias-free convolution followed by `torch.nn.BatchNorm2d` in eval mode. The running
/// statistics are folded at load time into a per-channel `1 / sqrt(var + eps)` and mean; each
/// forward folds the learned scale and shift into the convolution
/// (`W gamma / sqrt(var + eps)`, bias `beta - mean gamma / sqrt(var + eps)`), a few thousand
/// multiplications, so that the convolution runs once and gamma and beta stay trainable.
#[derive(Clone, Debug)]
pub struct ConvBatchNorm {
    conv: Param,
    gamma: Param,
    beta: Param,
    running_mean: Param,
    running_var: Param,
    inv_std: Tensor,
    spec: Conv2dSpec,
}

/// torch's BatchNorm2d epsilon.
const BATCH_NORM_EPS: f32 = 1e-5;

/// The learnable tensors are the convolution weight and the batch norm's scale and shift; the
/// running statistics, which eval mode never changes, are buffers (saved, not trained).
impl Params for ConvBatchNorm {
    fn visit(&self, f: &mut ParamVisitor<'_>) {
        f(&self.conv);
        f(&self.gamma);
        f(&self.beta);
    }

    fn visit_mut(&mut self, f: &mut ParamVisitorMut<'_>) {
        f(&mut self.conv);
        f(&mut self.gamma);
        f(&mut self.beta);
    }

    fn visit_buffers(&self, f: &mut ParamVisitor<'_>) {
        f(&self.running_mean);
        f(&self.running_var);
    }
}

impl ConvBatchNorm {
    /// Reads the convolution `{conv}.weight` and the batch norm `{bn}.weight`, `.bias`,
    /// `.running_mean` and `.running_var`.
    pub fn load(
        src: &mut dyn WeightSource,
        conv: &str,
        bn: &str,
        shape: ConvShape,
    ) -> Result<Self> {
        let c = shape.out_channels;
        let weight = src.param(
            &format!("{conv}.weight"),
            &shape.weight_shape()?,
            Init::FanIn,
        )?;
        let gamma = src.param(&format!("{bn}.weight"), &[c], Init::NORM_SCALE)?;
        let beta = src.param(&format!("{bn}.bias"), &[c], Init::NORM_SHIFT)?;
        let running_mean = src.param(&format!("{bn}.running_mean"), &[c], Init::NORM_SHIFT)?;
        let running_var = src.param(&format!("{bn}.running_var"), &[c], Init::Variance)?;
        if running_var
            .value()
            .to_vec()
            .iter()
            .any(|&v| v.is_nan() || v < 0.0)
        {
            return Err(NnError::Config(format!(
                "{bn}.running_var: expected variances >= 0, found a negative or NaN entry"
            )));
        }
        let inv_std = running_var
            .value()
            .map(|v| 1.0 / (v + BATCH_NORM_EPS).sqrt())
            .reshape(&[c, 1, 1, 1])?;
        Ok(Self {
            conv: weight,
            gamma,
            beta,
            running_mean,
            running_var,
            inv_std,
            spec: shape.spec,
        })
    }

    /// Convolves `x` `(batch, in, H, W)` and normalises with the running statistics.
    pub fn forward<B: Fused>(&self, bk: &B, x: &B::Value) -> Result<B::Value> {
        let channels = self.gamma.value().numel();
        let gamma = bk.reshape(&bk.param(&self.gamma), &[channels, 1, 1, 1])?;
        let scale = bk.mul(&gamma, &bk.constant(self.inv_std.clone()))?;
        let weight = bk.mul(&bk.param(&self.conv), &scale)?;
        let mean = bk.constant(self.running_mean.value().clone());
        let shift = bk.mul(&mean, &bk.reshape(&scale, &[channels])?)?;
        let bias = bk.sub(&bk.param(&self.beta), &shift)?;
        Ok(bk.conv2d(x, &weight, Some(&bias), self.spec)?)
    }
}
