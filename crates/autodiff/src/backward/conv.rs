//! Gradient of the 2-D convolution: per batch item and group, `dW += dY col^T`,
//! `dx = col2im(W^T dY)`, `db += sums of dY`; the depthwise loop is differentiated directly.

use idlevit_kernels::{self as kernels, MatMut, MatRef};
use idlevit_tensor::Tensor;

use crate::Result;
use crate::gradients::GradStore;
use crate::ops::{ConvGeometry, col2im, im2col};
use crate::tape::NodeId;

/// What the convolution's backward pass receives: its operands (with the saved values their
/// partners' gradients need) and its geometry.
pub(crate) struct ConvOperands<'a> {
    pub x: Option<(NodeId, &'a Tensor)>,
    pub w: Option<(NodeId, &'a Tensor)>,
    pub b: Option<NodeId>,
    pub geo: &'a ConvGeometry,
}

/// Adds the gradients of `x` (needs the saved weight), `w` (needs the saved input) and `b`.
/// `ops.x` carries the saved weight, `ops.w` the saved input.
pub(super) fn conv2d(g: &Tensor, ops: ConvOperands<'_>, store: &mut GradStore<'_>) -> Result<()> {
    let geo = ops.geo;
    let g = g.contiguous();
    let gs = &g.contiguous_values();
    let (out_len, plane) = (geo.out_len(), geo.height * geo.width);
    let out_item = geo.out_channels * out_len;
    if let Some(b) = ops.b {
        let db = store.buffer(b)?;
        for item in gs.chunks_exact(out_item.max(1)) {
            for (d, row) in db.iter_mut().zip(item.chunks_exact(out_len.max(1))) {
                *d += row.iter().map(|&v| f64::from(v)).sum::<f64>() as f32;
            }
        }
    }
    let (k, cog, cig) = (geo.patch_len(), geo.group_out(), geo.group_in());
    let taps = geo.kh * geo.kw;
    if let Some((x, w_value)) = ops.x {
        let w = w_value.contiguous();
        let ws = &w.contiguous_values();
        let mut dx = vec![0.0; geo.batch * geo.image_len()];
        let mut dcol = vec![0.0; k * out_len];
        for (item, dimage) in gs
            .chunks_exact(out_item.max(1))
            .zip(dx.chunks_exact_mut(geo.image_len().max(1)))
        {
            if geo.is_depthwise() {
                for (c, dy) in item.chunks_exact(out_len).enumerate() {
                    let kernel = &ws[c * taps..(c + 1) * taps];
                    let dst = &mut dimage[c * plane..(c + 1) * plane];
                    for_taps(geo, |o, tap, s| dst[s] += kernel[tap] * dy[o]);
                }
                continue;
            }
            for grp in 0..geo.spec.groups {
                let dy = &item[grp * cog * out_len..(grp + 1) * cog * out_len];
                kernels::matmul(
                    MatMut::row_major(&mut dcol, k, out_len),
                    MatRef::row_major(&ws[grp * cog * k..(grp + 1) * cog * k], cog, k).t(),
                    MatRef::row_major(dy, cog, out_len),
                    1.0,
                    0.0,
                )?;
                col2im(
                    geo,
                    &dcol,
                    &mut dimage[grp * cig * plane..(grp + 1) * cig * plane],
                );
            }
        }
        store.add(x, Tensor::from_vec(store.shape(x).to_vec(), dx)?)?;
    }
    if let Some((w, x_value)) = ops.w {
        let x = x_value.contiguous();
        let xs = &x.contiguous_values();
        let dw = store.buffer(w)?;
        let mut col = vec![0.0; k * out_len];
        for (item, image) in gs
            .chunks_exact(out_item.max(1))
            .zip(xs.chunks_exact(geo.image_len().max(1)))
        {
            if geo.is_depthwise() {
                for (c, dy) in item.chunks_exact(out_len).enumerate() {
                    let src = &image[c * plane..(c + 1) * plane];
                    let dk = &mut dw[c * taps..(c + 1) * taps];
                    for_taps(geo, |o, tap, s| dk[tap] += dy[o] * src[s]);
                }
                continue;
            }
            for grp in 0..geo.spec.groups {
                im2col(
                    geo,
                    &image[grp * cig * plane..(grp + 1) * cig * plane],
                    &mut col,
                );
                kernels::matmul(
                    MatMut::row_major(&mut dw[grp * cog * k..(grp + 1) * cog * k], cog, k),
                    MatRef::row_major(
                        &item[grp * cog * out_len..(grp + 1) * cog * out_len],
                        cog,
                        out_len,
                    ),
                    MatRef::row_major(&col, k, out_len).t(),
                    1.0,
                    1.0,
                )?;
            }
        }
    }
    Ok(())
}

/// Calls `f(output index, tap index, source pixel)` for every in-image tap of every output
/// position of one channel.
fn for_taps(geo: &ConvGeometry, mut f: impl FnMut(usize, usize, usize)) {
    for oy in 0..geo.out_h {
        for ox in 0..geo.out_w {
            for i in 0..geo.kh {
                for j in 0..geo.kw {
                    if let Some(s) = geo.source(oy, ox, i, j) {
                        f(oy * geo.out_w + ox, i * geo.kw + j, s);
                    }
                }
            }
        }
    }
}
