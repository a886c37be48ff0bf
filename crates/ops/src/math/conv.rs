//! 2-D convolution over `(batch, channels, height, width)` images, as im2col and one GEMM
//! per batch item and group; depthwise convolutions (one input channel per group) run as a
//! direct loop instead, since their GEMMs would be a single row.

use idlevit_kernels::{self as kernels, MatMut, MatRef};
use idlevit_tensor::Tensor;
use rayon::prelude::*;

use crate::{OpsError, Result};

/// Stride, zero padding and channel groups of a convolution (square kernels and strides).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dSpec {
    /// Step between output positions, in input pixels.
    pub stride: usize,
    /// Zero rows and columns added on every side of the input.
    pub padding: usize,
    /// Channel groups: input and output channels split into this many independent parts
    /// (`groups == in_channels` is a depthwise convolution).
    pub groups: usize,
}

impl Conv2dSpec {
    /// A convolution of `stride` and `padding`, one group.
    pub fn new(stride: usize, padding: usize) -> Self {
        Self {
            stride,
            padding,
            groups: 1,
        }
    }

    /// The same convolution with `groups` channel groups.
    pub fn with_groups(self, groups: usize) -> Self {
        Self { groups, ..self }
    }
}

/// The sizes of one convolution, checked once and shared by its forward and backward passes.
#[derive(Clone, Copy, Debug)]
pub struct ConvGeometry {
    /// Images in the batch.
    pub batch: usize,
    /// Input channels.
    pub in_channels: usize,
    /// Input height.
    pub height: usize,
    /// Input width.
    pub width: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Output height.
    pub out_h: usize,
    /// Output width.
    pub out_w: usize,
    /// Stride, padding and groups.
    pub spec: Conv2dSpec,
}

impl ConvGeometry {
    /// Checks `x` `(batch, in, H, W)`, `w` `(out, in / groups, kh, kw)` and the spec.
    pub fn of(x: &[usize], w: &[usize], spec: Conv2dSpec) -> Result<Self> {
        let &[batch, in_channels, height, width] = x else {
            return Err(OpsError::shape(
                "conv2d input",
                "(batch, channels, height, width)",
                x,
            ));
        };
        let &[out_channels, group_in, kh, kw] = w else {
            return Err(OpsError::shape(
                "conv2d weight",
                "(out, in / groups, kh, kw)",
                w,
            ));
        };
        let g = spec.groups;
        if spec.stride == 0
            || g == 0
            || !in_channels.is_multiple_of(g)
            || !out_channels.is_multiple_of(g)
            || group_in != in_channels / g
        {
            return Err(OpsError::shape(
                "conv2d weight",
                format!(
                    "(out divisible by {g} groups, {}, kh, kw) for {in_channels} input channels \
                     at stride {} (stride and groups >= 1)",
                    in_channels.checked_div(g).unwrap_or(0),
                    spec.stride
                ),
                w,
            ));
        }
        let (ph, pw) = (height + 2 * spec.padding, width + 2 * spec.padding);
        if kh == 0 || kw == 0 || kh > ph || kw > pw {
            return Err(OpsError::shape(
                "conv2d kernel",
                format!("at most the padded input, {ph}x{pw}"),
                w,
            ));
        }
        Ok(Self {
            batch,
            in_channels,
            height,
            width,
            out_channels,
            kh,
            kw,
            out_h: (ph - kh) / spec.stride + 1,
            out_w: (pw - kw) / spec.stride + 1,
            spec,
        })
    }

    /// Input channels per group.
    pub fn group_in(&self) -> usize {
        self.in_channels / self.spec.groups
    }

    /// Output channels per group.
    pub fn group_out(&self) -> usize {
        self.out_channels / self.spec.groups
    }

    /// Rows of a group's im2col matrix: `in / groups * kh * kw`.
    pub fn patch_len(&self) -> usize {
        self.group_in() * self.kh * self.kw
    }

    /// Pixels of one output channel: `out_h * out_w`.
    pub fn out_len(&self) -> usize {
        self.out_h * self.out_w
    }

    /// Values of one input image: `in * H * W`.
    pub fn image_len(&self) -> usize {
        self.in_channels * self.height * self.width
    }

    /// Whether each group maps one input channel to one output channel.
    pub fn is_depthwise(&self) -> bool {
        self.group_in() == 1 && self.group_out() == 1
    }

    /// The input pixel under output `(oy, ox)` and kernel tap `(i, j)`, if inside the image.
    #[inline]
    pub fn source(&self, oy: usize, ox: usize, i: usize, j: usize) -> Option<usize> {
        let y = (oy * self.spec.stride + i).checked_sub(self.spec.padding)?;
        let x = (ox * self.spec.stride + j).checked_sub(self.spec.padding)?;
        (y < self.height && x < self.width).then_some(y * self.width + x)
    }

    /// The output columns `lo..hi` whose kernel column `j` falls inside the image (the
    /// others read padding).
    pub fn inside_columns(&self, j: usize) -> (usize, usize) {
        let (s, p) = (self.spec.stride, self.spec.padding);
        // ox * s + j >= p, and ox * s + j - p < width.
        let lo = p.saturating_sub(j).div_ceil(s).min(self.out_w);
        let hi = (self.width + p)
            .checked_sub(j)
            .map_or(0, |limit| limit.div_ceil(s))
            .clamp(lo, self.out_w);
        (lo, hi)
    }

    /// The output's shape, `(batch, out, out_h, out_w)`.
    pub fn output_shape(&self) -> Vec<usize> {
        vec![self.batch, self.out_channels, self.out_h, self.out_w]
    }
}

/// The im2col matrix of `channels` (`group_in` planes of `H x W`): row `(c, i, j)`, column
/// `(oy, ox)` holds `x[c, oy s - p + i, ox s - p + j]`, zero outside the image. Each output row
/// is a strided run of one input row, found once per `(i, j, oy)` rather than per element.
pub fn im2col(geo: &ConvGeometry, channels: &[f32], col: &mut [f32]) {
    let plane = geo.height * geo.width;
    let out_len = geo.out_len();
    let (stride, pad) = (geo.spec.stride, geo.spec.padding);
    for c in 0..geo.group_in() {
        let src = &channels[c * plane..(c + 1) * plane];
        for i in 0..geo.kh {
            for j in 0..geo.kw {
                let row = ((c * geo.kh + i) * geo.kw + j) * out_len;
                let (lo, hi) = geo.inside_columns(j);
                for (oy, dst) in col[row..row + out_len]
                    .chunks_exact_mut(geo.out_w)
                    .enumerate()
                {
                    let Some(y) = (oy * stride + i)
                        .checked_sub(pad)
                        .filter(|&y| y < geo.height)
                    else {
                        dst.fill(0.0);
                        continue;
                    };
                    let line = &src[y * geo.width..(y + 1) * geo.width];
                    dst[..lo].fill(0.0);
                    dst[hi..].fill(0.0);
                    let first = lo * stride + j - pad;
                    if stride == 1 {
                        dst[lo..hi].copy_from_slice(&line[first..first + (hi - lo)]);
                    } else {
                        for (d, &v) in dst[lo..hi]
                            .iter_mut()
                            .zip(line[first..].iter().step_by(stride))
                        {
                            *d = v;
                        }
                    }
                }
            }
        }
    }
}

/// One channel of a depthwise convolution: `out = b + sum over taps of w[tap] x[shifted]`,
/// each tap a scaled, strided run of input rows added onto output rows.
fn depthwise_plane(geo: &ConvGeometry, src: &[f32], kernel: &[f32], b: f32, out: &mut [f32]) {
    let (stride, pad) = (geo.spec.stride, geo.spec.padding);
    out.fill(b);
    for i in 0..geo.kh {
        for j in 0..geo.kw {
            let wv = kernel[i * geo.kw + j];
            let (lo, hi) = geo.inside_columns(j);
            for (oy, dst) in out.chunks_exact_mut(geo.out_w).enumerate() {
                let Some(y) = (oy * stride + i)
                    .checked_sub(pad)
                    .filter(|&y| y < geo.height)
                else {
                    continue;
                };
                let line = &src[y * geo.width..(y + 1) * geo.width];
                let first = lo * stride + j - pad;
                if stride == 1 {
                    let run = &line[first..first + (hi - lo)];
                    for (d, &v) in dst[lo..hi].iter_mut().zip(run) {
                        *d += wv * v;
                    }
                } else {
                    let run = line[first..].iter().step_by(stride);
                    for (d, &v) in dst[lo..hi].iter_mut().zip(run) {
                        *d += wv * v;
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: adds every entry of `col` back onto the pixel it was read from.
pub fn col2im(geo: &ConvGeometry, col: &[f32], channels: &mut [f32]) {
    let plane = geo.height * geo.width;
    let out_len = geo.out_len();
    for c in 0..geo.group_in() {
        let dst = &mut channels[c * plane..(c + 1) * plane];
        for i in 0..geo.kh {
            for j in 0..geo.kw {
                let row = ((c * geo.kh + i) * geo.kw + j) * out_len;
                let src = &col[row..row + out_len];
                for oy in 0..geo.out_h {
                    for ox in 0..geo.out_w {
                        if let Some(s) = geo.source(oy, ox, i, j) {
                            dst[s] += src[oy * geo.out_w + ox];
                        }
                    }
                }
            }
        }
    }
}

/// 2-D convolution as `torch.nn.functional.conv2d`: `x` `(batch, in, H, W)`, `w`
/// `(out, in / groups, kh, kw)`, optional `b` `(out)`; output `(batch, out, H', W')` with
/// `H' = (H + 2 padding - kh) / stride + 1`.
pub fn conv2d(x: &Tensor, w: &Tensor, b: Option<&Tensor>, spec: Conv2dSpec) -> Result<Tensor> {
    let geo = ConvGeometry::of(x.shape(), w.shape(), spec)?;
    if let Some(b) = b
        && b.shape() != [geo.out_channels]
    {
        return Err(OpsError::shape(
            "conv2d bias",
            format!("[{}]", geo.out_channels),
            b.shape(),
        ));
    }
    let (x, w) = (x.contiguous(), w.contiguous());
    let (xs, ws) = (&x.contiguous_values(), &w.contiguous_values());
    let bias = b.map(Tensor::contiguous);
    let bias = bias.as_ref().and_then(|b| b.as_slice());
    let out_item = geo.out_channels * geo.out_len();
    let mut out = vec![0.0; geo.batch * out_item];
    if out_item > 0 {
        out.par_chunks_mut(out_item)
            .zip(xs.par_chunks(geo.image_len().max(1)))
            .try_for_each(|(y, image)| convolve_image(&geo, image, ws, bias, y))?;
    }
    Ok(Tensor::from_vec(geo.output_shape(), out)?)
}

/// One batch item: `y[g] = W[g] im2col(x[g]) + b`, or the direct depthwise loop.
fn convolve_image(
    geo: &ConvGeometry,
    image: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) -> Result<()> {
    let (plane, out_len) = (geo.height * geo.width, geo.out_len());
    let taps = geo.kh * geo.kw;
    if geo.is_depthwise() {
        // Channels in parallel: each is a few 3x3 passes over a plane.
        y.par_chunks_mut(out_len.max(1))
            .enumerate()
            .for_each(|(c, out)| {
                let src = &image[c * plane..(c + 1) * plane];
                let kernel = &w[c * taps..(c + 1) * taps];
                depthwise_plane(geo, src, kernel, bias.map_or(0.0, |b| b[c]), out);
            });
        return Ok(());
    }
    let (k, cog) = (geo.patch_len(), geo.group_out());
    let mut col = vec![0.0; k * out_len];
    for g in 0..geo.spec.groups {
        let channels = &image[g * geo.group_in() * plane..(g + 1) * geo.group_in() * plane];
        im2col(geo, channels, &mut col);
        let out = &mut y[g * cog * out_len..(g + 1) * cog * out_len];
        if let Some(bias) = bias {
            for (row, &b) in out.chunks_exact_mut(out_len).zip(&bias[g * cog..]) {
                row.fill(b);
            }
        }
        kernels::matmul(
            MatMut::row_major(out, cog, out_len),
            MatRef::row_major(&w[g * cog * k..(g + 1) * cog * k], cog, k),
            MatRef::row_major(&col, k, out_len),
            1.0,
            if bias.is_some() { 1.0 } else { 0.0 },
        )?;
    }
    Ok(())
}
