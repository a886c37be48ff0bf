//! Operations that move data without arithmetic: views, concatenation, row gather/scatter.

use idlevit_tensor::Tensor;

use crate::{AutodiffError, Result};

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
pub fn concat(xs: &[Tensor], axis: usize) -> Result<Tensor> {
    let views: Vec<_> = xs.iter().map(Tensor::view).collect();
    let joined = ndarray::concatenate(ndarray::Axis(axis), &views).map_err(|_| {
        AutodiffError::shape(
            "concat",
            format!("tensors agreeing on every axis but {axis}"),
            xs.first().map_or(&[][..], Tensor::shape),
        )
    })?;
    Ok(Tensor::from_array(joined))
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
