//! Operations on each row of the last axis: normalisations and softmaxes.

use idlevit_kernels as kernels;
use idlevit_tensor::Tensor;

use super::rows_of;
use crate::parallel::for_row_blocks;
use crate::{OpsError, Result};

/// Layer normalisation over the last axis, `(x - mean) / sqrt(var + eps) * gamma + beta`,
/// with the biased variance as torch computes it.
pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<Tensor> {
    let (x, _, row_len) = rows_of(x, "layer norm input")?;
    for (what, p) in [("layer norm scale", gamma), ("layer norm shift", beta)] {
        if p.shape() != [row_len] {
            return Err(OpsError::shape(what, format!("[{row_len}]"), p.shape()));
        }
    }
    let (gamma, beta) = (gamma.contiguous(), beta.contiguous());
    let mut out = vec![0.0; x.numel()];
    kernels::layer_norm_rows(
        &mut out,
        &x.contiguous_values(),
        &gamma.contiguous_values(),
        &beta.contiguous_values(),
        eps,
        row_len,
    );
    Ok(Tensor::from_vec(x.shape().to_vec(), out)?)
}

/// Softmax over the last axis.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    let (mut y, _, row_len) = rows_of(x, "softmax input")?;
    if row_len > 0 {
        kernels::softmax_rows(y.as_mut_slice(), row_len);
    }
    Ok(y)
}

/// Log of the softmax over the last axis, `x - max - ln(sum(exp(x - max)))`; the sum runs in
/// f64 so that losses built on it keep full f32 precision.
pub fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let (mut y, _, row_len) = rows_of(x, "log_softmax input")?;
    if row_len > 0 {
        for_row_blocks(y.as_mut_slice(), row_len, |_, block| {
            for row in block.chunks_exact_mut(row_len) {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let sum: f64 = row.iter().map(|&v| f64::from(v - max).exp()).sum();
                let log_sum = sum.ln();
                for v in row.iter_mut() {
                    *v = (f64::from(*v - max) - log_sum) as f32;
                }
            }
        });
    }
    Ok(y)
}

/// Each row of the last axis divided by `max(||row||_2, eps)`, as
/// `torch.nn.functional.normalize`.
pub fn l2_normalize(x: &Tensor, eps: f32) -> Result<Tensor> {
    let (mut y, _, row_len) = rows_of(x, "l2_normalize input")?;
    if row_len > 0 {
        for_row_blocks(y.as_mut_slice(), row_len, |_, block| {
            for row in block.chunks_exact_mut(row_len) {
                let inv = 1.0 / row_norm(row).max(f64::from(eps));
                for v in row.iter_mut() {
                    *v = (f64::from(*v) * inv) as f32;
                }
            }
        });
    }
    Ok(y)
}

/// The L2 norm of `row`, accumulated in f64.
pub fn row_norm(row: &[f32]) -> f64 {
    row.iter()
        .map(|&v| f64::from(v) * f64::from(v))
        .sum::<f64>()
        .sqrt()
}
