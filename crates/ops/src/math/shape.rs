//! Operations that move data without arithmetic: views, concatenation, row gather/scatter.

use idlevit_tensor::Tensor;

use crate::{OpsError, Result};

/// The same values under another shape (a view when the layout allows).
pub fn reshape(x: &Tensor, shape: &[usize]) -> Result<Tensor> {
    Ok(x.reshape(shape)?)
}

/// Axes reordered: axis `i` of the result is axis `axes[i]` of `x` (a view).
pub fn permute(x: &Tensor, axes: &[usize]) -> Result<Tensor> {
    Ok(x.permute(axes)?)
}

/// The range `start..end` of `axis` (a view).
pub fn slice(x: &Tensor, axis: usize, start: usize, end: usize) -> Result<Tensor> {
    Ok(x.slice_axis(axis, start, end)?)
}

/// Index `index` of `axis`, with that axis removed (a view).
pub fn select(x: &Tensor, axis: usize, index: usize) -> Result<Tensor> {
    Ok(x.select(axis, index)?)
}

/// Repeats size-1 axes and adds leading axes to reach `shape` (a view).
pub fn broadcast_to(x: &Tensor, shape: &[usize]) -> Result<Tensor> {
    Ok(x.broadcast_to(shape)?)
}

/// Joins tensors along `axis`; every other axis must agree.
///
/// Each input is made contiguous once and copied as whole runs (one per index of the axes
/// before `axis`), which is what the patch embedding's CLS concat needs at batch 32.
pub fn concat(xs: &[Tensor], axis: usize) -> Result<Tensor> {
    let mismatch = || {
        OpsError::shape(
            "concat",
            format!("tensors agreeing on every axis but {axis}"),
            xs.first().map_or(&[][..], Tensor::shape),
        )
    };
    let first = xs.first().ok_or_else(mismatch)?.shape();
    if axis >= first.len() {
        return Err(mismatch());
    }
    let agrees = |shape: &[usize]| {
        shape.len() == first.len()
            && shape
                .iter()
                .zip(first)
                .enumerate()
                .all(|(i, (a, b))| i == axis || a == b)
    };
    if !xs.iter().all(|x| agrees(x.shape())) {
        return Err(mismatch());
    }
    let outer: usize = first[..axis].iter().product();
    let parts: Vec<Tensor> = xs.iter().map(Tensor::contiguous).collect();
    let total: usize = parts.iter().map(Tensor::numel).sum();
    let mut out = Vec::with_capacity(total);
    for o in 0..outer {
        for part in &parts {
            let run = part.numel() / outer.max(1);
            let data = &part.contiguous_values();
            out.extend_from_slice(&data[o * run..(o + 1) * run]);
        }
    }
    let mut shape = first.to_vec();
    shape[axis] = xs.iter().map(|x| x.shape()[axis]).sum();
    Ok(Tensor::from_vec(shape, out)?)
}

/// Rows of a `(batch, rows, width)` tensor picked per batch item:
/// `out[b, i] = x[b, indices[b][i]]`.
pub fn gather_rows(x: &Tensor, indices: &[Vec<usize>]) -> Result<Tensor> {
    Ok(x.gather_rows(indices)?)
}

/// `x` with rows replaced per batch item, `out[b, indices[b][i]] = rows[b, i]`, every other
/// row unchanged; when an index repeats, the last row written wins.
pub fn scatter_rows(x: &Tensor, indices: &[Vec<usize>], rows: &Tensor) -> Result<Tensor> {
    let mut out = x.clone();
    out.scatter_rows(indices, rows)?;
    Ok(out)
}
