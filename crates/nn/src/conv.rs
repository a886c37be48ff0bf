//! Convolution layers: a plain `Conv2d`, and a bias-free convolution followed by batch norm,
//! folded into one convolution when it normalises with its running statistics.

use std::sync::Mutex;

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

/// How a batch norm normalises: with its running statistics (PyTorch's eval mode, the
/// default everywhere), or with the statistics of the batch it sees (train mode).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BatchNormMode {
    /// Running statistics, unchanged by a forward pass.
    #[default]
    Frozen,
    /// Batch statistics; each forward pass also records them so that
    /// [`ConvBatchNorm::update_running`] can move the running statistics toward them.
    Train,
}

/// A channel's batch mean and unbiased variance, as the running statistics take them.
#[derive(Clone, Debug)]
struct Moments {
    mean: Tensor,
    unbiased_var: Tensor,
}

/// A bias-free convolution followed by `torch.nn.BatchNorm2d`. With running statistics the
/// per-channel `1 / sqrt(var + eps)` and mean are folded at load time; each forward folds the
/// learned scale and shift into the convolution (`W gamma / sqrt(var + eps)`, bias
/// `beta - mean gamma / sqrt(var + eps)`), a few thousand multiplications, so that the
/// convolution runs once and gamma and beta stay trainable. With batch statistics
/// ([`BatchNormMode::Train`]) the convolution runs first and the normalisation follows, so
/// that gradients flow through the batch's mean and variance.
#[derive(Debug)]
pub struct ConvBatchNorm {
    conv: Param,
    gamma: Param,
    beta: Param,
    running_mean: Param,
    running_var: Param,
    inv_std: Tensor,
    spec: Conv2dSpec,
    mode: BatchNormMode,
    /// The last train-mode forward's batch moments: forwards take `&self` (the same model
    /// serves every backend and thread), so the update of the running statistics, which
    /// needs `&mut self`, reads them afterwards.
    observed: Mutex<Option<Moments>>,
}

/// A copy starts with no observed batch: moments belong to the forward that made them.
impl Clone for ConvBatchNorm {
    fn clone(&self) -> Self {
        Self {
            conv: self.conv.clone(),
            gamma: self.gamma.clone(),
            beta: self.beta.clone(),
            running_mean: self.running_mean.clone(),
            running_var: self.running_var.clone(),
            inv_std: self.inv_std.clone(),
            spec: self.spec,
            mode: self.mode,
            observed: Mutex::new(None),
        }
    }
}

/// torch's BatchNorm2d epsilon.
const BATCH_NORM_EPS: f32 = 1e-5;

/// inv_std of running variances: `1 / sqrt(var + eps)` per channel, shaped `(C, 1, 1, 1)`.
fn inverse_std(running_var: &Tensor) -> Result<Tensor> {
    let channels = running_var.numel();
    Ok(running_var
        .map(|v| 1.0 / (v + BATCH_NORM_EPS).sqrt())
        .reshape(&[channels, 1, 1, 1])?)
}

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
        let inv_std = inverse_std(running_var.value())?;
        Ok(Self {
            conv: weight,
            gamma,
            beta,
            running_mean,
            running_var,
            inv_std,
            spec: shape.spec,
            mode: BatchNormMode::Frozen,
            observed: Mutex::new(None),
        })
    }

    /// Which statistics the forward normalises with.
    pub fn mode(&self) -> BatchNormMode {
        self.mode
    }

    /// Normalises with running (`Frozen`) or batch (`Train`) statistics from now on.
    pub fn set_mode(&mut self, mode: BatchNormMode) {
        self.mode = mode;
        *self.observed.get_mut().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Convolves `x` `(batch, in, H, W)` and normalises with the statistics of the layer's
    /// [`mode`](Self::mode).
    pub fn forward<B: Fused>(&self, bk: &B, x: &B::Value) -> Result<B::Value> {
        match self.mode {
            BatchNormMode::Frozen => self.forward_running(bk, x),
            BatchNormMode::Train => self.forward_batch(bk, x),
        }
    }

    /// Moves the running statistics toward the last train-mode forward's batch moments, as
    /// PyTorch does: `running = (1 - momentum) running + momentum batch`, with the batch's
    /// unbiased variance. Returns whether there was a batch to take (none after a frozen
    /// forward, or twice in a row).
    pub fn update_running(&mut self, momentum: f32) -> Result<bool> {
        let observed = self.observed.get_mut().unwrap_or_else(|e| e.into_inner());
        let Some(moments) = observed.take() else {
            return Ok(false);
        };
        let blend = |running: &Tensor, batch: &Tensor| -> Result<Tensor> {
            let values = running
                .to_vec()
                .iter()
                .zip(batch.to_vec())
                .map(|(r, b)| (1.0 - momentum) * r + momentum * b)
                .collect();
            Ok(Tensor::from_vec(running.shape().to_vec(), values)?)
        };
        let mean = blend(self.running_mean.value(), &moments.mean)?;
        let var = blend(self.running_var.value(), &moments.unbiased_var)?;
        self.inv_std = inverse_std(&var)?;
        *self.running_mean.value_mut() = mean;
        *self.running_var.value_mut() = var;
        Ok(true)
    }

    /// The eval-mode forward: running statistics folded into the convolution.
    fn forward_running<B: Fused>(&self, bk: &B, x: &B::Value) -> Result<B::Value> {
        let channels = self.gamma.value().numel();
        let gamma = bk.reshape(&bk.param(&self.gamma), &[channels, 1, 1, 1])?;
        let scale = bk.mul(&gamma, &bk.constant(self.inv_std.clone()))?;
        let weight = bk.mul(&bk.param(&self.conv), &scale)?;
        let mean = bk.constant(self.running_mean.value().clone());
        let shift = bk.mul(&mean, &bk.reshape(&scale, &[channels])?)?;
        let bias = bk.sub(&bk.param(&self.beta), &shift)?;
        Ok(bk.conv2d(x, &weight, Some(&bias), self.spec)?)
    }

    /// The train-mode forward: normalise each channel of the convolution's output by its mean
    /// and biased variance over batch and positions, then scale and shift.
    fn forward_batch<B: Fused>(&self, bk: &B, x: &B::Value) -> Result<B::Value> {
        let y = bk.conv2d(x, &bk.param(&self.conv), None, self.spec)?;
        let shape = bk.shape(&y).to_vec();
        let &[batch, channels, height, width] = shape.as_slice() else {
            return Err(NnError::Config(format!(
                "batch norm: expected (batch, channels, H, W), found {shape:?}"
            )));
        };
        let n = batch * height * width;
        if n < 2 {
            return Err(NnError::Config(format!(
                "batch norm with batch statistics needs more than one value per channel, \
                 found {shape:?}"
            )));
        }
        let by_channel = bk.reshape(&bk.permute(&y, &[1, 0, 2, 3])?, &[channels, n])?;
        let mean = bk.scale(&bk.sum_axis(&by_channel, 1, true)?, 1.0 / n as f32)?;
        let centered = bk.sub(&by_channel, &mean)?;
        // `1 / sqrt(var + eps)` from the one normalisation primitive: appending sqrt(n eps) to
        // each channel's centred row makes its norm sqrt(n (var + eps)) exactly, so
        // normalising the row and multiplying by sqrt(n) divides by sqrt(var + eps).
        let pad = bk.constant(Tensor::full(
            &[channels, 1],
            (n as f32 * BATCH_NORM_EPS).sqrt(),
        )?);
        let padded = bk.l2_normalize(&bk.concat(&[centered.clone(), pad], 1)?, 0.0)?;
        let normalised = bk.scale(&bk.slice(&padded, 1, 0, n)?, (n as f32).sqrt())?;
        let gamma = bk.reshape(&bk.param(&self.gamma), &[channels, 1])?;
        let beta = bk.reshape(&bk.param(&self.beta), &[channels, 1])?;
        let out = bk.add(&bk.mul(&normalised, &gamma)?, &beta)?;
        let out = bk.permute(
            &bk.reshape(&out, &[channels, batch, height, width])?,
            &[1, 0, 2, 3],
        )?;
        self.observe(&bk.to_tensor(&mean), &bk.to_tensor(&centered), n)?;
        Ok(out)
    }

    /// Records a batch's moments for [`update_running`](Self::update_running).
    fn observe(&self, mean: &Tensor, centered: &Tensor, n: usize) -> Result<()> {
        let channels = mean.numel();
        let centered = centered.contiguous();
        let unbiased_var = centered
            .contiguous_values()
            .chunks(n)
            .map(|row| {
                let squares: f64 = row.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
                (squares / (n - 1) as f64) as f32
            })
            .collect();
        let moments = Moments {
            mean: mean.reshape(&[channels])?,
            unbiased_var: Tensor::from_vec(vec![channels], unbiased_var)?,
        };
        *self.observed.lock().unwrap_or_else(|e| e.into_inner()) = Some(moments);
        Ok(())
    }
}
