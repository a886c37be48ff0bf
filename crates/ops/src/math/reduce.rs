//! Sums over axes, and the reduction that undoes a broadcast.

use idlevit_tensor::{Tensor, TensorError};

use crate::parallel::for_row_blocks;
use crate::{OpsError, Result};

/// Sum over `axis`; the axis stays with size 1 when `keepdim`, else it is removed. Sums
/// accumulate in f64.
pub fn sum_axis(x: &Tensor, axis: usize, keepdim: bool) -> Result<Tensor> {
    let Some(&size) = x.shape().get(axis) else {
        return Err(TensorError::OutOfRange {
            what: "sum_axis axis",
            index: axis,
            size: x.ndim(),
        }
        .into());
    };
    let inner: usize = x.shape()[axis + 1..].iter().product();
    let outer: usize = x.shape()[..axis].iter().product();
    let mut shape = x.shape().to_vec();
    if keepdim {
        shape[axis] = 1;
    } else {
        shape.remove(axis);
    }
    let mut out = vec![0.0f32; outer * inner];
    if inner > 0 {
        let x = x.contiguous();
        let src = &x.contiguous_values();
        for_row_blocks(&mut out, inner, |start, block| {
            let mut acc = vec![0.0f64; inner];
            for (o, row) in block.chunks_exact_mut(inner).enumerate() {
                let base = (start / inner + o) * size * inner;
                acc.iter_mut().for_each(|a| *a = 0.0);
                for s in 0..size {
                    let from = base + s * inner;
                    for (a, &v) in acc.iter_mut().zip(&src[from..from + inner]) {
                        *a += f64::from(v);
                    }
                }
                for (r, &a) in row.iter_mut().zip(&acc) {
                    *r = a as f32;
                }
            }
        });
    }
    Ok(Tensor::from_vec(shape, out)?)
}

/// Maximum over `axis`, which is removed (as `torch.max(x, dim)[0]`); NaN propagates.
pub fn max_axis(x: &Tensor, axis: usize) -> Result<Tensor> {
    Ok(max_axis_with_index(x, axis)?.0)
}

/// [`max_axis`] and, per output element, the index along `axis` of its (first) maximum.
pub fn max_axis_with_index(x: &Tensor, axis: usize) -> Result<(Tensor, Vec<usize>)> {
    let size = match x.shape().get(axis) {
        Some(&size) if size > 0 => size,
        _ => {
            return Err(OpsError::shape(
                "max_axis",
                format!("a non-empty axis {axis}"),
                x.shape(),
            ));
        }
    };
    let inner: usize = x.shape()[axis + 1..].iter().product();
    let outer: usize = x.shape()[..axis].iter().product();
    let x = x.contiguous();
    let src = &x.contiguous_values();
    let mut values = Vec::with_capacity(outer * inner);
    let mut index = Vec::with_capacity(outer * inner);
    for o in 0..outer {
        for i in 0..inner {
            let at = |s: usize| src[(o * size + s) * inner + i];
            let best = (1..size).fold(0, |best, s| {
                // A NaN, once found, stays the maximum, so that it propagates as in torch.
                let (cand, cur) = (at(s), at(best));
                if !cur.is_nan() && (cand.is_nan() || cand > cur) {
                    s
                } else {
                    best
                }
            });
            values.push(at(best));
            index.push(best);
        }
    }
    let mut shape = x.shape().to_vec();
    shape.remove(axis);
    Ok((Tensor::from_vec(shape, values)?, index))
}

/// Sum of every element, as a rank-0 tensor; accumulated in f64.
pub fn sum_all(x: &Tensor) -> Result<Tensor> {
    let total: f64 = match x.as_slice() {
        Some(values) => values.iter().map(|&v| f64::from(v)).sum(),
        None => x.view().iter().map(|&v| f64::from(v)).sum(),
    };
    Ok(Tensor::scalar(total as f32))
}

/// Sums `g` over the axes a broadcast from `shape` repeated (missing leading axes and size-1
/// axes), giving a tensor of `shape`: the gradient of a broadcast operand.
pub fn reduce_to_shape(g: &Tensor, shape: &[usize]) -> Result<Tensor> {
    if g.shape() == shape {
        return Ok(g.clone());
    }
    let mismatch = || {
        OpsError::shape(
            "gradient of a broadcast operand",
            format!("a shape that {shape:?} broadcasts to"),
            g.shape(),
        )
    };
    let lead = g.ndim().checked_sub(shape.len()).ok_or_else(mismatch)?;
    let mut t = if lead > 0 {
        let mut folded = vec![g.shape()[..lead].iter().product()];
        folded.extend_from_slice(&g.shape()[lead..]);
        sum_axis(&g.reshape(&folded)?, 0, false)?
    } else {
        g.clone()
    };
    for (axis, &want) in shape.iter().enumerate() {
        if want == 1 && t.shape()[axis] != 1 {
            t = sum_axis(&t, axis, true)?;
        }
    }
    if t.shape() != shape {
        return Err(mismatch());
    }
    Ok(t)
}
