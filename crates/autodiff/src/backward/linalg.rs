//! Gradients of the matrix products, each one more GEMM per operand on the saved (strided)
//! operands, transposed by swapping strides rather than by copying.

use idlevit_kernels::{self as kernels, MatMut, MatRef};
use idlevit_tensor::Tensor;

use crate::gradients::GradStore;
use crate::ops::{MatStack, batched_matmul, rows_of, stack_offsets};
use crate::parallel::map_blocks;
use crate::tape::NodeId;
use crate::{AutodiffError, Result};

/// `y = x W^T + b`: `dx = dy W`, `dW += dy^T x` (accumulated straight into W's gradient),
/// `db += column sums of dy`. `x` comes with the saved `W`, `w` with the saved `x`.
pub(super) fn linear(
    g: &Tensor,
    x: Option<(NodeId, &Tensor)>,
    w: Option<(NodeId, &Tensor)>,
    b: Option<NodeId>,
    store: &mut GradStore<'_>,
) -> Result<()> {
    let (g, rows, out_features) = rows_of(g, "linear gradient")?;
    let gs = &g.contiguous_values();
    let dy = MatRef::row_major(gs, rows, out_features);
    if let Some((x, w_value)) = x {
        let &[_, in_features] = w_value.shape() else {
            return Err(AutodiffError::shape(
                "linear weight",
                "(out, in)",
                w_value.shape(),
            ));
        };
        let (data, offset) = w_value.storage();
        let weight = MatRef {
            data: data.get(offset..).unwrap_or_default(),
            rows: out_features,
            cols: in_features,
            row_stride: w_value.strides()[0],
            col_stride: w_value.strides()[1],
        };
        let mut dx = vec![0.0; rows * in_features];
        kernels::matmul(
            MatMut::row_major(&mut dx, rows, in_features),
            dy,
            weight,
            1.0,
            0.0,
        )?;
        store.add(x, Tensor::from_vec(store.shape(x).to_vec(), dx)?)?;
    }
    if let Some((w, x_value)) = w {
        let (x_value, _, in_features) = rows_of(x_value, "linear input")?;
        let x_values = x_value.contiguous_values();
        let xs = MatRef::row_major(&x_values, rows, in_features);
        let dw = store.buffer(w)?;
        kernels::matmul(
            MatMut::row_major(dw, out_features, in_features),
            dy.t(),
            xs,
            1.0,
            1.0,
        )?;
    }
    if let Some(b) = b {
        let sums = column_sums(gs, out_features);
        kernels::add_assign(store.buffer(b)?, &sums);
    }
    Ok(())
}

/// Sums of the columns of a row-major matrix with rows of `row_len`, by blocks of rows in
/// parallel when large.
fn column_sums(x: &[f32], row_len: usize) -> Vec<f32> {
    let mut total = vec![0.0f32; row_len];
    if row_len == 0 {
        return total;
    }
    let partials = map_blocks(x, row_len, |block| {
        let mut acc = vec![0.0f32; row_len];
        for row in block.chunks_exact(row_len) {
            kernels::add_assign(&mut acc, row);
        }
        acc
    });
    for partial in &partials {
        kernels::add_assign(&mut total, partial);
    }
    total
}

/// `c[i] = a[i] b[i]`: `da[i] = dc[i] b[i]^T`, `db[i] = a[i]^T dc[i]`. `a` comes with the
/// saved `b`, `b` with the saved `a`.
pub(super) fn matmul(
    g: &Tensor,
    a: Option<(NodeId, &Tensor)>,
    b: Option<(NodeId, &Tensor)>,
    store: &mut GradStore<'_>,
) -> Result<()> {
    let g = g.contiguous();
    let r = g.ndim();
    let &[m, n] = g.shape().get(r.saturating_sub(2)..).unwrap_or_default() else {
        return Err(AutodiffError::shape(
            "matmul gradient",
            "(..., m, n)",
            g.shape(),
        ));
    };
    let count: usize = g.shape()[..r - 2].iter().product();
    let g_offsets: Vec<usize> = (0..count).map(|i| i * m * n).collect();
    let g_values = g.contiguous_values();
    let dc = MatStack::row_major(&g_values, &g_offsets, m, n);
    if let Some((a, b_value)) = with_matrices(a) {
        let offsets = stack_offsets(b_value);
        let b_stack = MatStack::of(b_value, &offsets);
        let mut da = vec![0.0; count * m * b_stack.rows];
        batched_matmul(&mut da, dc, b_stack.t())?;
        store.add(a, Tensor::from_vec(store.shape(a).to_vec(), da)?)?;
    }
    if let Some((b, a_value)) = with_matrices(b) {
        let offsets = stack_offsets(a_value);
        let a_stack = MatStack::of(a_value, &offsets);
        let mut db = vec![0.0; count * a_stack.cols * n];
        batched_matmul(&mut db, a_stack.t(), dc)?;
        store.add(b, Tensor::from_vec(store.shape(b).to_vec(), db)?)?;
    }
    Ok(())
}

/// An operand whose saved partner has the two matrix axes `MatStack::of` reads.
fn with_matrices(op: Option<(NodeId, &Tensor)>) -> Option<(NodeId, &Tensor)> {
    op.filter(|(_, t)| t.ndim() >= 2)
}
