//! Gradients of the row-wise operations, one row at a time (rows in parallel when large).

use idlevit_kernels as kernels;
use idlevit_tensor::Tensor;

use crate::gradients::GradStore;
use crate::ops::{row_norm, rows_of};
use crate::parallel::{for_row_blocks, map_row_blocks};
use crate::tape::NodeId;
use crate::{AutodiffError, Result};

/// The rows of `y` and `g` (same shape), contiguous, and a zeroed output of their shape.
fn rows_pair(y: &Tensor, g: &Tensor, what: &str) -> Result<(Tensor, Tensor, usize)> {
    if y.shape() != g.shape() {
        return Err(AutodiffError::shape(
            format!("{what} gradient"),
            format!("{:?}", y.shape()),
            g.shape(),
        ));
    }
    let (y, _, row_len) = rows_of(y, what)?;
    Ok((y, g.contiguous(), row_len))
}

/// Applies `f(y_row, g_row, out_row)` to every row, into a fresh tensor.
fn map_rows(
    y: &Tensor,
    g: &Tensor,
    what: &str,
    f: impl Fn(&[f32], &[f32], &mut [f32]) + Sync + Send,
) -> Result<Tensor> {
    let (y, g, n) = rows_pair(y, g, what)?;
    let mut out = vec![0.0; y.numel()];
    if n > 0 {
        let (ys, gs) = (&y.contiguous_values(), &g.contiguous_values());
        for_row_blocks(&mut out, n, |start, block| {
            for (r, out) in block.chunks_exact_mut(n).enumerate() {
                let at = start + r * n;
                f(&ys[at..at + n], &gs[at..at + n], out);
            }
        });
    }
    Ok(Tensor::from_vec(y.shape().to_vec(), out)?)
}

/// `y = softmax(x)`: `dx = y * (dy - <dy, y>)`.
pub(super) fn softmax(y: &Tensor, g: &Tensor) -> Result<Tensor> {
    map_rows(y, g, "softmax", |y, g, out| {
        let dot: f32 = y.iter().zip(g).map(|(y, g)| y * g).sum();
        for ((o, &y), &g) in out.iter_mut().zip(y).zip(g) {
            *o = y * (g - dot);
        }
    })
}

/// `y = log_softmax(x)`: `dx = dy - exp(y) * sum(dy)`.
pub(super) fn log_softmax(y: &Tensor, g: &Tensor) -> Result<Tensor> {
    map_rows(y, g, "log_softmax", |y, g, out| {
        let total: f32 = g.iter().sum();
        for ((o, &y), &g) in out.iter_mut().zip(y).zip(g) {
            *o = g - y.exp() * total;
        }
    })
}

/// `y = x / max(||x||, eps)`: with `n = ||x|| > eps`, `dx = (dy - y <dy, y>) / n`; when the
/// norm is clamped to `eps`, `dx = dy / eps`.
pub(super) fn l2_normalize(x: &Tensor, g: &Tensor, eps: f32) -> Result<Tensor> {
    let eps = f64::from(eps);
    map_rows(x, g, "l2_normalize", |x, g, out| {
        let norm = row_norm(x);
        if norm > eps {
            let dot: f64 = x
                .iter()
                .zip(g)
                .map(|(&x, &g)| f64::from(x) * f64::from(g))
                .sum::<f64>()
                / norm;
            for ((o, &x), &g) in out.iter_mut().zip(x).zip(g) {
                let y = f64::from(x) / norm;
                *o = ((f64::from(g) - y * dot) / norm) as f32;
            }
        } else {
            for (o, &g) in out.iter_mut().zip(g) {
                *o = (f64::from(g) / eps) as f32;
            }
        }
    })
}

/// Layer norm, `y = xhat * gamma + beta` with `xhat = (x - mean) * rstd`:
/// `dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))` with `dxhat = dy * gamma`,
/// `dgamma = sum over rows of dy * xhat`, `dbeta = sum over rows of dy`. The row statistics
/// are recomputed (in f64) instead of stored. `ids` are those of x, gamma and beta.
pub(super) fn layer_norm(
    g: &Tensor,
    x: &Tensor,
    gamma: &Tensor,
    eps: f32,
    ids: [Option<NodeId>; 3],
    store: &mut GradStore<'_>,
) -> Result<()> {
    let (x, g, n) = rows_pair(x, g, "layer_norm")?;
    if n == 0 {
        return Ok(());
    }
    let gamma = gamma.contiguous();
    let (xs, gs, gammas) = (
        &x.contiguous_values(),
        &g.contiguous_values(),
        &gamma.contiguous_values(),
    );
    if gammas.len() != n {
        return Err(AutodiffError::shape(
            "layer norm scale",
            format!("[{n}]"),
            gamma.shape(),
        ));
    }
    let eps = f64::from(eps);
    let mut dx = vec![0.0f32; xs.len()];
    let partials = map_row_blocks(&mut dx, n, |start, block| {
        let mut dgamma = vec![0.0f32; n];
        let mut dbeta = vec![0.0f32; n];
        let mut xhat = vec![0.0f64; n];
        for (r, out) in block.chunks_exact_mut(n).enumerate() {
            let at = start + r * n;
            let (xr, gr) = (&xs[at..at + n], &gs[at..at + n]);
            let mean = xr.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
            let var = xr
                .iter()
                .map(|&v| (f64::from(v) - mean).powi(2))
                .sum::<f64>()
                / n as f64;
            let rstd = 1.0 / (var + eps).sqrt();
            let (mut sum_d, mut sum_dx) = (0.0f64, 0.0f64);
            for j in 0..n {
                xhat[j] = (f64::from(xr[j]) - mean) * rstd;
                let d = f64::from(gr[j]) * f64::from(gammas[j]);
                sum_d += d;
                sum_dx += d * xhat[j];
                dgamma[j] += gr[j] * xhat[j] as f32;
                dbeta[j] += gr[j];
            }
            let (mean_d, mean_dx) = (sum_d / n as f64, sum_dx / n as f64);
            for j in 0..n {
                let d = f64::from(gr[j]) * f64::from(gammas[j]);
                out[j] = (rstd * (d - mean_d - xhat[j] * mean_dx)) as f32;
            }
        }
        (dgamma, dbeta)
    });
    let [x_id, gamma_id, beta_id] = ids;
    if let Some(id) = gamma_id {
        let buf = store.buffer(id)?;
        for (dgamma, _) in &partials {
            kernels::add_assign(buf, dgamma);
        }
    }
    if let Some(id) = beta_id {
        let buf = store.buffer(id)?;
        for (_, dbeta) in &partials {
            kernels::add_assign(buf, dbeta);
        }
    }
    if let Some(id) = x_id {
        store.add(id, Tensor::from_vec(x.shape().to_vec(), dx)?)?;
    }
    Ok(())
}
