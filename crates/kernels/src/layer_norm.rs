//! Row-wise layer normalisation.

use crate::math::{self, LANES};
use crate::parallel;
use crate::simd::{self, Isa, SimdKernel};

/// Layer norm of each row: `out = (x - mean) / sqrt(var + eps) * gamma + beta`, with the biased
/// variance (divided by `row_len`) as torch computes it.
///
/// Works on `min(out.len(), x.len()) / row_len` whole rows; a trailing partial row of `out` is
/// left untouched, and nothing is written if `row_len == 0` or `gamma` or `beta` is shorter
/// than `row_len` (the callers check shapes; this kernel never panics on them). Large buffers
/// are split by rows across rayon's current pool.
pub fn layer_norm_rows(
    out: &mut [f32],
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    row_len: usize,
) {
    layer_norm_rows_with(Isa::detected(), out, x, gamma, beta, eps, row_len);
}

/// [`layer_norm_rows`] compiled for a given instruction set (for tests and benchmarks); falls
/// back to the portable build if the CPU lacks it.
pub fn layer_norm_rows_with(
    isa: Isa,
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
    let whole = out.len().min(x.len()) / row_len * row_len;
    let (gamma, beta) = (&gamma[..row_len], &beta[..row_len]);
    parallel::for_row_blocks2(&mut out[..whole], &x[..whole], row_len, |out, x| {
        simd::dispatch(
            isa,
            LayerNorm {
                out,
                x,
                gamma,
                beta,
                eps,
            },
        );
    });
}

pub(crate) struct LayerNorm<'a> {
    pub(crate) out: &'a mut [f32],
    pub(crate) x: &'a [f32],
    pub(crate) gamma: &'a [f32],
    pub(crate) beta: &'a [f32],
    pub(crate) eps: f32,
}

impl SimdKernel for LayerNorm<'_> {
    type Output = ();

    #[inline(always)]
    fn run<const FMA: bool>(self) {
        let n = self.gamma.len();
        for (out, x) in self.out.chunks_exact_mut(n).zip(self.x.chunks_exact(n)) {
            layer_norm_row::<FMA>(out, x, self.gamma, self.beta, self.eps);
        }
    }
}

#[inline(always)]
fn layer_norm_row<const FMA: bool>(
    out: &mut [f32],
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) {
    let n = x.len() as f32;
    let mean = math::sum(x) / n;
    // Two passes: the variance from deviations does not cancel catastrophically when the mean
    // is large against the spread, as E[x^2] - mean^2 would.
    let var = sum_sq_dev::<FMA>(x, mean) / n;
    let rstd = 1.0 / (var + eps).sqrt();
    for (((o, &v), &g), &b) in out.iter_mut().zip(x).zip(gamma).zip(beta) {
        *o = math::mul_add::<FMA>((v - mean) * rstd, g, b);
    }
}

#[inline(always)]
fn sum_sq_dev<const FMA: bool>(x: &[f32], mean: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            let d = v - mean;
            *a = math::mul_add::<FMA>(d, d, *a);
        }
    }
    let mut total = math::reduce_sum(acc);
    for &v in tail {
        let d = v - mean;
        total = math::mul_add::<FMA>(d, d, total);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference;
    use crate::testutil::{f32_vec, pool};
    use proptest::prelude::*;

    /// Each output may be off by a few ulp of its terms, and the centred value x - mean by the
    /// f32 rounding of the mean (a few ulp of max |x|), amplified by 1/std: relative 1e-6 of
    /// the sum of those magnitudes.
    fn check(
        got: &[f32],
        x: &[f32],
        gamma: &[f32],
        beta: &[f32],
        eps: f32,
        row_len: usize,
    ) -> Result<(), TestCaseError> {
        let mut want = vec![0.0f32; got.len()];
        reference::layer_norm_rows(&mut want, x, gamma, beta, eps, row_len);
        for (r, (g_row, (w_row, x_row))) in got
            .chunks_exact(row_len)
            .zip(want.chunks_exact(row_len).zip(x.chunks_exact(row_len)))
            .enumerate()
        {
            let n = row_len as f64;
            let mean = x_row.iter().map(|&v| v as f64).sum::<f64>() / n;
            let var = x_row
                .iter()
                .map(|&v| (v as f64 - mean).powi(2))
                .sum::<f64>()
                / n;
            let rstd = 1.0 / (var + eps as f64).sqrt();
            let max_abs = x_row.iter().fold(0.0f64, |m, &v| m.max((v as f64).abs()));
            for i in 0..row_len {
                let centred = (x_row[i] as f64 - mean).abs() * rstd;
                let scale = (centred + 1.0 + max_abs * rstd) * (gamma[i] as f64).abs()
                    + (beta[i] as f64).abs();
                let err = (g_row[i] as f64 - w_row[i] as f64).abs();
                prop_assert!(
                    err <= 1e-6 * scale,
                    "row {} col {}: got {} want {} (err {:e}, scale {})",
                    r,
                    i,
                    g_row[i],
                    w_row[i],
                    err,
                    scale
                );
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn matches_reference(
            row_len in 1usize..70,
            rows in 0usize..7,
            seed in any::<u64>(),
            offset in prop_oneof![Just(0.0f32), -5.0f32..5.0],
            spread in prop_oneof![Just(1.0f32), Just(1e-3), 0.1f32..30.0],
            eps in prop_oneof![Just(1e-6f32), Just(1e-5), Just(0.1)],
        ) {
            let x: Vec<f32> = f32_vec(seed, rows * row_len).iter().map(|v| offset + v * spread).collect();
            let gamma = f32_vec(seed ^ 1, row_len);
            let beta = f32_vec(seed ^ 2, row_len);
            for isa in Isa::supported() {
                let mut got = vec![f32::NAN; x.len()];
                layer_norm_rows_with(isa, &mut got, &x, &gamma, &beta, eps, row_len);
                check(&got, &x, &gamma, &beta, eps, row_len)?;
            }
        }
    }

    #[test]
    fn isas_agree_with_portable() {
        let row_len = 67;
        let x = f32_vec(11, row_len * 29);
        let (gamma, beta) = (f32_vec(12, row_len), f32_vec(13, row_len));
        let mut portable = vec![0.0; x.len()];
        layer_norm_rows_with(
            Isa::Portable,
            &mut portable,
            &x,
            &gamma,
            &beta,
            1e-6,
            row_len,
        );
        for isa in Isa::supported() {
            let mut got = vec![0.0; x.len()];
            layer_norm_rows_with(isa, &mut got, &x, &gamma, &beta, 1e-6, row_len);
            for (g, p) in got.iter().zip(&portable) {
                assert!(
                    (g - p).abs() <= 1e-5 * (1.0 + p.abs()),
                    "{isa:?}: {g} vs portable {p}"
                );
            }
        }
    }

    #[test]
    fn partial_rows_and_bad_params_write_nothing() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        let mut out = [9.0f32; 5];
        layer_norm_rows(&mut out, &x, &[1.0, 1.0], &[0.0, 0.0], 0.0, 2);
        assert_eq!(out, [-1.0, 1.0, -1.0, 1.0, 9.0]);
        let mut out = [9.0f32; 4];
        layer_norm_rows(&mut out, &x, &[1.0], &[0.0, 0.0], 0.0, 2);
        assert_eq!(out, [9.0; 4]);
        layer_norm_rows(&mut out, &x, &[1.0], &[0.0], 0.0, 0);
        assert_eq!(out, [9.0; 4]);
        // A row of one element normalises to beta.
        let mut out = [9.0f32; 2];
        layer_norm_rows(&mut out, &[3.0, -7.0], &[2.0], &[0.5], 1e-5, 1);
        assert_eq!(out, [0.5, 0.5]);
    }

    #[test]
    fn large_buffers_split_across_threads_identically() {
        let row_len = 384;
        let x = f32_vec(5, row_len * 700);
        let (gamma, beta) = (f32_vec(6, row_len), f32_vec(7, row_len));
        let mut serial = vec![0.0; x.len()];
        for (o, i) in serial
            .chunks_exact_mut(row_len)
            .zip(x.chunks_exact(row_len))
        {
            layer_norm_rows(o, i, &gamma, &beta, 1e-6, row_len);
        }
        let mut par = vec![0.0; x.len()];
        pool(3).install(|| layer_norm_rows(&mut par, &x, &gamma, &beta, 1e-6, row_len));
        assert_eq!(serial, par);
    }
}
