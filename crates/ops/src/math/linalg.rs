//! Matrix products: `linear` over the last axis and the batched, strided `matmul`.

use idlevit_kernels::{self as kernels, MatMut, MatRef};
use idlevit_tensor::Tensor;
use rayon::prelude::*;

use super::rows_of;
use crate::{OpsError, Result};

/// `x W^T + b` over the last axis of `x`, with `W` of shape `(out, in)` and `b` of `(out)`.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let (x, rows, in_features) = rows_of(x, "linear input")?;
    let [out_features, w_in] = *w.shape() else {
        return Err(OpsError::shape("linear weight", "(out, in)", w.shape()));
    };
    if w_in != in_features {
        return Err(OpsError::shape(
            "linear input",
            format!("last axis of size {w_in}"),
            x.shape(),
        ));
    }
    if let Some(b) = b
        && b.shape() != [out_features]
    {
        return Err(OpsError::shape(
            "linear bias",
            format!("[{out_features}]"),
            b.shape(),
        ));
    }
    let w = w.contiguous();
    let b = b.map(Tensor::contiguous);
    let mut out = vec![0.0; rows * out_features];
    kernels::linear(
        &mut out,
        &x.contiguous_values(),
        &w.contiguous_values(),
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

/// Batched matrix product `(..., m, k) x (..., k, n) -> (..., m, n)`; the leading axes must
/// agree. Operands may be strided views (a permuted key tensor, a head of a fused qkv): their
/// strides go to the GEMM as they are, nothing is copied.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (ra, rb) = (a.ndim(), b.ndim());
    if ra < 2
        || ra != rb
        || a.shape()[..ra - 2] != b.shape()[..rb - 2]
        || a.shape()[ra - 1] != b.shape()[rb - 2]
    {
        return Err(OpsError::shape(
            "matmul",
            format!("(..., k, n) matching the left operand {:?}", a.shape()),
            b.shape(),
        ));
    }
    let lead = &a.shape()[..ra - 2];
    let (m, n) = (a.shape()[ra - 2], b.shape()[rb - 1]);
    let a_offsets = stack_offsets(a);
    let b_offsets = stack_offsets(b);
    let mut out = vec![0.0; a_offsets.len() * m * n];
    batched_matmul(
        &mut out,
        MatStack::of(a, &a_offsets),
        MatStack::of(b, &b_offsets),
    )?;
    let mut shape = lead.to_vec();
    shape.extend([m, n]);
    Ok(Tensor::from_vec(shape, out)?)
}

/// A stack of equally shaped strided matrices in one buffer, one storage offset per matrix.
#[derive(Clone, Copy, Debug)]
pub struct MatStack<'a> {
    /// The shared storage.
    pub data: &'a [f32],
    /// Storage offset of each matrix's element (0, 0).
    pub offsets: &'a [usize],
    /// Rows of each matrix.
    pub rows: usize,
    /// Columns of each matrix.
    pub cols: usize,
    /// Distance between rows.
    pub row_stride: usize,
    /// Distance between columns.
    pub col_stride: usize,
}

impl<'a> MatStack<'a> {
    /// The matrices over the last two axes of `t`, at `offsets` (from [`stack_offsets`]).
    /// `t` must have at least two axes.
    pub fn of(t: &'a Tensor, offsets: &'a [usize]) -> Self {
        let r = t.ndim();
        Self {
            data: t.storage().0,
            offsets,
            rows: t.shape()[r - 2],
            cols: t.shape()[r - 1],
            row_stride: t.strides()[r - 2],
            col_stride: t.strides()[r - 1],
        }
    }

    /// A contiguous row-major stack of `rows x cols` matrices.
    pub fn row_major(data: &'a [f32], offsets: &'a [usize], rows: usize, cols: usize) -> Self {
        Self {
            data,
            offsets,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// Every matrix transposed (a view).
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// The matrix at storage offset `offset`.
    fn at(&self, offset: usize) -> MatRef<'a> {
        MatRef {
            data: self.data.get(offset..).unwrap_or_default(),
            rows: self.rows,
            cols: self.cols,
            row_stride: self.row_stride,
            col_stride: self.col_stride,
        }
    }
}

/// Storage offsets of every matrix over the last two axes of `t` (which has at least two).
pub fn stack_offsets(t: &Tensor) -> Vec<usize> {
    let r = t.ndim().saturating_sub(2);
    let mut offsets = vec![t.storage().1];
    for (&size, &stride) in t.shape()[..r].iter().zip(&t.strides()[..r]) {
        offsets = offsets
            .iter()
            .flat_map(|&o| (0..size).map(move |i| o + i * stride))
            .collect();
    }
    offsets
}

/// Multiply-adds below which a stack of products runs on the calling thread (about 20 µs).
const SERIAL_STACK_WORK: usize = 1 << 20;

/// `out[i] = a[i] · b[i]` for every matrix of the stacks, written row-major into `out`; the
/// matrices run in parallel on rayon's current pool.
pub fn batched_matmul(out: &mut [f32], a: MatStack<'_>, b: MatStack<'_>) -> Result<()> {
    let (m, n) = (a.rows, b.cols);
    if m * n == 0 {
        return Ok(());
    }
    let product = |(c, (&ao, &bo)): (&mut [f32], (&usize, &usize))| {
        kernels::matmul(MatMut::row_major(c, m, n), a.at(ao), b.at(bo), 1.0, 0.0)
    };
    // A stack of tiny products (the CLS query against every key, per head, at batch 1) is
    // done before a second worker would have woken up.
    let work = m * n * a.cols * a.offsets.len();
    if work < SERIAL_STACK_WORK {
        out.chunks_mut(m * n)
            .zip(a.offsets.iter().zip(b.offsets))
            .try_for_each(product)?;
    } else {
        out.par_chunks_mut(m * n)
            .zip(a.offsets.par_iter().zip(b.offsets))
            .try_for_each(product)?;
    }
    Ok(())
}
