//! The inference backend: each operation computes its result at once on plain tensors.

use idlevit_kernels as kernels;
use idlevit_tensor::Tensor;
use rayon::prelude::*;

use crate::{Backend, NnError, Param, Result};

/// Runs layer maths directly on [`Tensor`]s with the CPU kernels; records nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct Eager;

/// Splits `x` into `(rows, row_len)` over its last axis, as a contiguous slice.
fn rows_of(x: &Tensor, op: &str) -> Result<(Tensor, usize, usize)> {
    let row_len = *x
        .shape()
        .last()
        .ok_or_else(|| NnError::shape(op, "at least one axis", x.shape()))?;
    let x = x.contiguous();
    let rows = x.numel().checked_div(row_len).unwrap_or(0);
    Ok((x, rows, row_len))
}

/// Storage offsets of every matrix in a stack of matrices with leading axes `lead`.
fn matrix_offsets(base: usize, lead: &[usize], strides: &[usize]) -> Vec<usize> {
    let mut offsets = vec![base];
    for (&size, &stride) in lead.iter().zip(strides) {
        offsets = offsets
            .iter()
            .flat_map(|&o| (0..size).map(move |i| o + i * stride))
            .collect();
    }
    offsets
}

/// Elementwise combination of `a` and `b` broadcast to `a`'s shape.
fn zip_broadcast(
    a: &Tensor,
    b: &Tensor,
    op: &str,
    f: impl Fn(f32, f32) -> f32 + Sync,
) -> Result<Tensor> {
    let b = b.broadcast_to(a.shape()).map_err(|_| {
        NnError::shape(
            op,
            format!("a shape that broadcasts to {:?}", a.shape()),
            b.shape(),
        )
    })?;
    if let (Some(x), Some(y)) = (a.as_slice(), b.as_slice()) {
        let out = x.iter().zip(y).map(|(&x, &y)| f(x, y)).collect();
        return Ok(Tensor::from_vec(a.shape().to_vec(), out)?);
    }
    let out = ndarray::Zip::from(&a.view())
        .and(&b.view())
        .map_collect(|&x, &y| f(x, y));
    Ok(Tensor::from_array(out))
}

impl Backend for Eager {
    type Value = Tensor;

    fn shape<'a>(&self, x: &'a Tensor) -> &'a [usize] {
        x.shape()
    }

    fn constant(&self, t: Tensor) -> Tensor {
        t
    }

    fn param(&self, p: &Param) -> Tensor {
        p.value().clone()
    }

    fn to_tensor(&self, x: &Tensor) -> Tensor {
        x.clone()
    }

    fn linear(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        let (x, rows, in_features) = rows_of(x, "linear input")?;
        let [out_features, w_in] = *w.shape() else {
            return Err(NnError::shape("linear weight", "(out, in)", w.shape()));
        };
        if w_in != in_features {
            return Err(NnError::shape(
                "linear input",
                format!("last axis of size {w_in}"),
                x.shape(),
            ));
        }
        let w = w.contiguous();
        let b = b.map(Tensor::contiguous);
        let mut out = vec![0.0; rows * out_features];
        kernels::linear(
            &mut out,
            x.as_slice().unwrap_or_default(),
            w.as_slice().unwrap_or_default(),
            b.as_ref().and_then(|b| b.as_slice()),
            rows,
            in_features,
            out_features,
        )?;
        let mut shape = x.shape().to_vec();
        if let Some(last) = shape.last_mut() {
            *last = out_features;
        }
        Ok(Tensor::from_vec(shape, out)?)
    }

    fn layer_norm(&self, x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<Tensor> {
        let (x, _, row_len) = rows_of(x, "layer norm input")?;
        if gamma.shape() != [row_len] || beta.shape() != [row_len] {
            return Err(NnError::shape(
                "layer norm scale and shift",
                format!("[{row_len}]"),
                gamma.shape(),
            ));
        }
        let (gamma, beta) = (gamma.contiguous(), beta.contiguous());
        let mut out = vec![0.0; x.numel()];
        kernels::layer_norm_rows(
            &mut out,
            x.as_slice().unwrap_or_default(),
            gamma.as_slice().unwrap_or_default(),
            beta.as_slice().unwrap_or_default(),
            eps,
            row_len,
        );
        Ok(Tensor::from_vec(x.shape().to_vec(), out)?)
    }

    fn gelu(&self, x: &Tensor) -> Result<Tensor> {
        let mut y = x.contiguous();
        kernels::gelu(y.as_mut_slice());
        Ok(y)
    }

    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        if a.shape() == b.shape()
            && let (Some(_), Some(y)) = (a.as_slice(), b.as_slice())
        {
            let mut out = a.clone();
            kernels::add_assign(out.as_mut_slice(), y);
            return Ok(out);
        }
        zip_broadcast(a, b, "add", |x, y| x + y)
    }

    fn mul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        zip_broadcast(a, b, "mul", |x, y| x * y)
    }

    fn scale(&self, x: &Tensor, factor: f32) -> Result<Tensor> {
        let mut y = x.contiguous();
        kernels::scale(y.as_mut_slice(), factor);
        Ok(y)
    }

    fn matmul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let (ra, rb) = (a.ndim(), b.ndim());
        if ra < 2
            || ra != rb
            || a.shape()[..ra - 2] != b.shape()[..rb - 2]
            || a.shape()[ra - 1] != b.shape()[rb - 2]
        {
            return Err(NnError::shape(
                "matmul",
                format!("(..., k, n) matching the left operand {:?}", a.shape()),
                b.shape(),
            ));
        }
        let lead = &a.shape()[..ra - 2];
        let (m, k, n) = (a.shape()[ra - 2], a.shape()[ra - 1], b.shape()[rb - 1]);
        let (a_data, a_base) = a.storage();
        let (b_data, b_base) = b.storage();
        let a_offsets = matrix_offsets(a_base, lead, &a.strides()[..ra - 2]);
        let b_offsets = matrix_offsets(b_base, lead, &b.strides()[..rb - 2]);
        let (ars, acs) = (a.strides()[ra - 2], a.strides()[ra - 1]);
        let (brs, bcs) = (b.strides()[rb - 2], b.strides()[rb - 1]);
        let mut out = vec![0.0; a_offsets.len() * m * n];
        if m * n > 0 {
            out.par_chunks_mut(m * n)
                .zip(a_offsets.par_iter().zip(&b_offsets))
                .try_for_each(|(c, (&ao, &bo))| {
                    kernels::matmul(
                        kernels::MatMut {
                            data: c,
                            rows: m,
                            cols: n,
                            row_stride: n,
                            col_stride: 1,
                        },
                        kernels::MatRef {
                            data: &a_data[ao..],
                            rows: m,
                            cols: k,
                            row_stride: ars,
                            col_stride: acs,
                        },
                        kernels::MatRef {
                            data: &b_data[bo..],
                            rows: k,
                            cols: n,
                            row_stride: brs,
                            col_stride: bcs,
                        },
                        1.0,
                        0.0,
                    )
                })?;
        }
        let mut shape = lead.to_vec();
        shape.extend([m, n]);
        Ok(Tensor::from_vec(shape, out)?)
    }

    fn softmax(&self, x: &Tensor) -> Result<Tensor> {
        let (mut y, _, row_len) = rows_of(x, "softmax input")?;
        if row_len > 0 {
            kernels::softmax_rows(y.as_mut_slice(), row_len);
        }
        Ok(y)
    }

    fn reshape(&self, x: &Tensor, shape: &[usize]) -> Result<Tensor> {
        Ok(x.reshape(shape)?)
    }

    fn permute(&self, x: &Tensor, axes: &[usize]) -> Result<Tensor> {
        Ok(x.permute(axes)?)
    }

    fn slice(&self, x: &Tensor, axis: usize, start: usize, end: usize) -> Result<Tensor> {
        Ok(x.slice_axis(axis, start, end)?)
    }

    fn select(&self, x: &Tensor, axis: usize, index: usize) -> Result<Tensor> {
        Ok(x.select(axis, index)?)
    }

    fn broadcast_to(&self, x: &Tensor, shape: &[usize]) -> Result<Tensor> {
        Ok(x.broadcast_to(shape)?)
    }

    fn concat(&self, xs: &[Tensor], axis: usize) -> Result<Tensor> {
        let views: Vec<_> = xs.iter().map(Tensor::view).collect();
        let joined = ndarray::concatenate(ndarray::Axis(axis), &views).map_err(|_| {
            NnError::shape(
                "concat",
                format!("tensors agreeing on every axis but {axis}"),
                xs.first().map_or(&[][..], Tensor::shape),
            )
        })?;
        Ok(Tensor::from_array(joined))
    }

    fn gather_rows(&self, x: &Tensor, indices: &[Vec<usize>]) -> Result<Tensor> {
        Ok(x.gather_rows(indices)?)
    }

    fn scatter_rows(&self, x: &Tensor, indices: &[Vec<usize>], rows: &Tensor) -> Result<Tensor> {
        let mut out = x.clone();
        out.scatter_rows(indices, rows)?;
        Ok(out)
    }
}
