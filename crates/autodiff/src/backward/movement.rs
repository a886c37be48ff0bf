//! Gradients of the data-movement operations: each adds the result's gradient into the
//! region of the operand's gradient it came from.

use idlevit_kernels as kernels;
use idlevit_tensor::Tensor;
use ndarray::{ArrayViewMutD, Axis, IxDyn, Slice};

use crate::gradients::GradStore;
use crate::tape::NodeId;
use crate::{AutodiffError, Result};

/// Node `x`'s gradient buffer viewed with its shape.
fn buffer_view<'s>(store: &'s mut GradStore<'_>, x: NodeId) -> Result<ArrayViewMutD<'s, f32>> {
    let shape = store.shape(x);
    ArrayViewMutD::from_shape(IxDyn(shape), store.buffer(x)?)
        .map_err(|_| AutodiffError::shape("gradient buffer", format!("{shape:?}"), shape))
}

/// `y = x[.., start..end, ..]` along `axis`: `dx[.., start..end, ..] += dy`.
pub(super) fn add_to_slice(
    store: &mut GradStore<'_>,
    x: NodeId,
    axis: usize,
    start: usize,
    end: usize,
    g: &Tensor,
) -> Result<()> {
    let mut view = buffer_view(store, x)?;
    let mut region = view.slice_axis_mut(Axis(axis), Slice::from(start..end));
    region.zip_mut_with(&g.view(), |d, &s| *d += s);
    Ok(())
}

/// `y = x[.., index, ..]` along `axis`: `dx[.., index, ..] += dy`.
pub(super) fn add_to_select(
    store: &mut GradStore<'_>,
    x: NodeId,
    axis: usize,
    index: usize,
    g: &Tensor,
) -> Result<()> {
    let mut view = buffer_view(store, x)?;
    let mut region = view.index_axis_mut(Axis(axis), index);
    region.zip_mut_with(&g.view(), |d, &s| *d += s);
    Ok(())
}

/// The sizes of a `(batch, rows, width)` shape.
fn rows_dims(shape: &[usize], what: &str) -> Result<(usize, usize, usize)> {
    match *shape {
        [b, n, c] => Ok((b, n, c)),
        _ => Err(AutodiffError::shape(what, "(batch, rows, width)", shape)),
    }
}

/// `y[b, i] = x[b, indices[b][i]]`: `dx[b, indices[b][i]] += dy[b, i]` (a row picked twice
/// receives both gradients).
pub(super) fn gather_rows(
    store: &mut GradStore<'_>,
    x: NodeId,
    indices: &[Vec<usize>],
    g: &Tensor,
) -> Result<()> {
    let (_, rows, width) = rows_dims(store.shape(x), "gather_rows input")?;
    let (_, picked, _) = rows_dims(g.shape(), "gather_rows gradient")?;
    let g = g.contiguous();
    let gs = &g.contiguous_values();
    let dx = store.buffer(x)?;
    for (b, item) in indices.iter().enumerate() {
        for (i, &r) in item.iter().enumerate() {
            let from = (b * picked + i) * width;
            let to = (b * rows + r) * width;
            match (dx.get_mut(to..to + width), gs.get(from..from + width)) {
                (Some(dst), Some(src)) => kernels::add_assign(dst, src),
                _ => return Err(index_error(r, rows)),
            }
        }
    }
    Ok(())
}

/// `y = x` with `y[b, indices[b][i]] = rows[b, i]`: `dx = dy` except on the replaced rows
/// (zero there), `drows[b, i] = dy[b, indices[b][i]]` for the write that won (the last one to
/// each row), zero for writes overwritten by a later one.
pub(super) fn scatter_rows(
    store: &mut GradStore<'_>,
    x: Option<NodeId>,
    rows_id: Option<NodeId>,
    indices: &[Vec<usize>],
    g: &Tensor,
) -> Result<()> {
    let (batch, rows, width) = rows_dims(g.shape(), "scatter_rows gradient")?;
    let picked = indices.first().map_or(0, Vec::len);
    // The write that each replaced row keeps: writer[b * rows + r] = i.
    let mut writer = vec![None; batch * rows];
    for (b, item) in indices.iter().enumerate() {
        for (i, &r) in item.iter().enumerate() {
            let slot = writer
                .get_mut(b * rows + r)
                .ok_or_else(|| index_error(r, rows))?;
            *slot = Some(i);
        }
    }
    let g = g.contiguous();
    let gs = &g.contiguous_values();
    if let Some(rows_id) = rows_id {
        let mut drows = vec![0.0; batch * picked * width];
        for (slot, &i) in writer.iter().enumerate() {
            if let Some(i) = i {
                let b = slot / rows;
                let to = (b * picked + i) * width;
                drows[to..to + width].copy_from_slice(&gs[slot * width..(slot + 1) * width]);
            }
        }
        store.add(
            rows_id,
            Tensor::from_vec(vec![batch, picked, width], drows)?,
        )?;
    }
    if let Some(x) = x {
        let mut dx = g.clone();
        let values = dx.as_mut_slice();
        for (slot, i) in writer.iter().enumerate() {
            if i.is_some() {
                values[slot * width..(slot + 1) * width].fill(0.0);
            }
        }
        store.add(x, dx)?;
    }
    Ok(())
}

fn index_error(index: usize, rows: usize) -> AutodiffError {
    idlevit_tensor::TensorError::OutOfRange {
        what: "row index",
        index,
        size: rows,
    }
    .into()
}

/// `y = max over axis of x`: each `dy` goes to the position `index` recorded for it.
pub(super) fn add_to_max(
    store: &mut GradStore<'_>,
    x: NodeId,
    axis: usize,
    index: &[usize],
    g: &Tensor,
) -> Result<()> {
    let shape = store.shape(x);
    let size = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    let g = g.contiguous();
    let dx = store.buffer(x)?;
    for (flat, (&best, &dy)) in index.iter().zip(g.contiguous_values().iter()).enumerate() {
        let (o, i) = (flat / inner.max(1), flat % inner.max(1));
        dx[(o * size + best) * inner + i] += dy;
    }
    Ok(())
}
