//! Straightforward scalar versions of every kernel, accumulating in f64: the ground truth the
//! tests compare the fast kernels against. Slow; never use them in a model.

use crate::matrix::check_product;
use crate::{KernelError, MatMut, MatRef};
use std::cmp::Ordering;

/// `c = alpha * a·b + beta * c` by the textbook triple loop; with `beta == 0` the old `c` is
/// ignored (even NaN), as in BLAS.
pub fn matmul(
    c: MatMut<'_>,
    a: MatRef<'_>,
    b: MatRef<'_>,
    alpha: f32,
    beta: f32,
) -> Result<(), KernelError> {
    check_product("reference::matmul", &c, &a, &b)?;
    for i in 0..c.rows {
        for j in 0..c.cols {
            let mut acc = 0.0f64;
            for p in 0..a.cols {
                let av = a.data[i * a.row_stride + p * a.col_stride] as f64;
                let bv = b.data[p * b.row_stride + j * b.col_stride] as f64;
                acc += av * bv;
            }
            let slot = &mut c.data[i * c.row_stride + j * c.col_stride];
            let old = if beta == 0.0 {
                0.0
            } else {
                beta as f64 * *slot as f64
            };
            *slot = (alpha as f64 * acc + old) as f32;
        }
    }
    Ok(())
}

/// Softmax of each whole row in f64; partial rows and `row_len == 0` are left untouched.
pub fn softmax_rows(x: &mut [f32], row_len: usize) {
    if row_len == 0 {
        return;
    }
    for row in x.chunks_exact_mut(row_len) {
        let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        let exps: Vec<f64> = row.iter().map(|&v| (v as f64 - max).exp()).collect();
        let sum: f64 = exps.iter().sum();
        for (v, e) in row.iter_mut().zip(&exps) {
            *v = (e / sum) as f32;
        }
    }
}

/// Layer norm of each whole row in f64 with the biased variance; same contract as
/// [`crate::layer_norm_rows`].
pub fn layer_norm_rows(
    out: &mut [f32],
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    row_len: usize,
) {
    if row_len == 0 || gamma.len() < row_len || beta.len() < row_len {
        return;
    }
    for (o, row) in out.chunks_exact_mut(row_len).zip(x.chunks_exact(row_len)) {
        let n = row_len as f64;
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        let rstd = 1.0 / (var + eps as f64).sqrt();
        for i in 0..row_len {
            o[i] = ((row[i] as f64 - mean) * rstd * gamma[i] as f64 + beta[i] as f64) as f32;
        }
    }
}

/// Exact GELU through libm's f64 erf.
pub fn gelu(x: &mut [f32]) {
    for v in x.iter_mut() {
        let xd = *v as f64;
        *v = (0.5 * xd * (1.0 + libm::erf(xd / std::f64::consts::SQRT_2))) as f32;
    }
}

/// Top-k by a full stable sort: descending value, NaN last, ties keep index order.
pub fn top_k(values: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| {
        let (va, vb) = (values[a], values[b]);
        match (va.is_nan(), vb.is_nan()) {
            (false, false) => vb.partial_cmp(&va).unwrap_or(Ordering::Equal),
            (a_nan, b_nan) => a_nan.cmp(&b_nan),
        }
    });
    order.truncate(k);
    order
}

/// `nn.Linear` on bf16-rounded operands, `y[M,N] = bf16(x) · bf16(w)^T + bias` with `w`
/// stored `(N, K)`, summed in f64: what [`crate::linear_bf16`] approximates.
pub fn linear_bf16(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    m: usize,
    k: usize,
    n: usize,
) -> Vec<f32> {
    let round = |v: f32| crate::from_bf16(crate::to_bf16(v)) as f64;
    let mut y = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let dot: f64 = (0..k)
                .map(|p| round(x[i * k + p]) * round(w[j * k + p]))
                .sum();
            y[i * n + j] = (dot + bias.map_or(0.0, |b| b[j] as f64)) as f32;
        }
    }
    y
}
