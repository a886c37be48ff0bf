//! Row-wise layer normalisation.

use crate::KernelError;
use crate::error::check_lengths;
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

/// `out[r] = ((x_r - mean_r) / sqrt(var_r + eps)) · g_r` for every row `r` of `x`
/// (`row_len` values each): a layer-normalised row's dot product with a vector, without
/// writing the normalised row. Rows come in groups of `group_rows` that share one vector of
/// `g` (group `i` uses `g[i * row_len..(i + 1) * row_len]`), such as the tokens of one image
/// and that image's vector.
///
/// Fold layer norm's scale into `g` and its shift into a constant to get
/// `layer_norm(x_r) · u = out[r]` with `g = gamma * u` plus `beta · u`.
///
/// Blocks of rows run in parallel on rayon's current pool, splitting inside a group too: at
/// batch 1 this is the one pass over every token an idle layer makes before its products, so
/// on a many-core CPU it must not stay on one thread while the others wait.
pub fn layer_norm_dot(
    out: &mut [f32],
    x: &[f32],
    g: &[f32],
    eps: f32,
    row_len: usize,
    group_rows: usize,
) -> Result<(), KernelError> {
    let rows = out.len();
    if row_len == 0 || group_rows == 0 || !rows.is_multiple_of(group_rows) {
        return Err(KernelError::BufferLength {
            op: "layer_norm_dot",
            operand: "out (whole groups of rows)",
            expected: rows.div_ceil(group_rows.max(1)) * group_rows,
            found: rows,
        });
    }
    let groups = rows / group_rows;
    check_lengths(
        "layer_norm_dot",
        [
            ("x", rows * row_len, x.len()),
            ("g", groups * row_len, g.len()),
        ],
    )?;
    use rayon::prelude::*;
    let isa = Isa::detected();
    let block = dot_block_rows(rows, row_len);
    out.par_chunks_mut(block)
        .zip(x.par_chunks(block * row_len))
        .enumerate()
        .for_each(|(i, (out, x))| {
            // A block may straddle groups: split it where a group ends.
            let mut first = i * block;
            let (mut out, mut x) = (out, x);
            while !out.is_empty() {
                let group = first / group_rows;
                let take = (group_rows - first % group_rows).min(out.len());
                let (o, rest_out) = out.split_at_mut(take);
                let (xs, rest_x) = x.split_at(take * row_len);
                let g = &g[group * row_len..(group + 1) * row_len];
                simd::dispatch(
                    isa,
                    LayerNormDot {
                        out: o,
                        x: xs,
                        g,
                        eps,
                    },
                );
                (out, x, first) = (rest_out, rest_x, first + take);
            }
        });
    Ok(())
}

/// Rows per parallel block of [`layer_norm_dot`]: about two blocks per thread, none under
/// 16 rows or 2^13 values (a few microseconds of work, about a task hand-off's cost), and
/// one block for a small pass on few threads.
fn dot_block_rows(rows: usize, row_len: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    // On two or three threads a single image's pass (about 20 microseconds for DeiT-S) is
    // over before a hand-off pays: measured 0.90x on two threads.
    if threads < 4 && rows * row_len < parallel::PAR_MIN_LEN {
        return rows.max(1);
    }
    let by_balance = rows.div_ceil(2 * threads);
    let by_size = (1usize << 13).div_ceil(row_len).max(16);
    by_balance.max(by_size).clamp(1, rows.max(1))
}

struct LayerNormDot<'a> {
    out: &'a mut [f32],
    x: &'a [f32],
    g: &'a [f32],
    eps: f32,
}

impl SimdKernel for LayerNormDot<'_> {
    type Output = ();

    #[inline(always)]
    fn run<const FMA: bool>(self) {
        let n = self.g.len();
        for (out, x) in self.out.iter_mut().zip(self.x.chunks_exact(n)) {
            let mean = math::sum(x) / n as f32;
            let var = sum_sq_dev::<FMA>(x, mean) / n as f32;
            *out = centred_dot::<FMA>(x, mean, self.g) / (var + self.eps).sqrt();
        }
    }
}

/// `sum_i (x_i - mean) g_i`.
#[inline(always)]
fn centred_dot<const FMA: bool>(x: &[f32], mean: f32, g: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (chunks, gs) = (x.chunks_exact(LANES), g.chunks_exact(LANES));
    let (tail, g_tail) = (chunks.remainder(), gs.remainder());
    for (chunk, gc) in chunks.zip(gs) {
        for ((a, &v), &w) in acc.iter_mut().zip(chunk).zip(gc) {
            *a = math::mul_add::<FMA>(v - mean, w, *a);
        }
    }
    let mut total = math::reduce_sum(acc);
    for (&v, &w) in tail.iter().zip(g_tail) {
        total = math::mul_add::<FMA>(v - mean, w, total);
    }
    total
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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// The dot product of each normalised row with its group's vector equals the f64
        /// reference layer norm (scale 1, shift 0) dotted with it.
        #[test]
        fn layer_norm_dot_matches_the_normalised_rows(
            groups in 1usize..5,
            group_rows in 1usize..20,
            row_len in 1usize..70,
            threads in 1usize..3,
            seed in any::<u64>(),
        ) {
            let rows = groups * group_rows;
            let x = f32_vec(seed, rows * row_len);
            let g = f32_vec(seed ^ 9, groups * row_len);
            let (ones, zeros) = (vec![1.0; row_len], vec![0.0; row_len]);
            let mut normed = vec![0.0; rows * row_len];
            reference::layer_norm_rows(&mut normed, &x, &ones, &zeros, 1e-6, row_len);
            let mut out = vec![f32::NAN; rows];
            pool(threads)
                .install(|| layer_norm_dot(&mut out, &x, &g, 1e-6, row_len, group_rows))
                .unwrap();
            for r in 0..rows {
                let gr = &g[(r / group_rows) * row_len..][..row_len];
                let row = &normed[r * row_len..][..row_len];
                let want: f64 = row.iter().zip(gr).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
                let size: f64 = row.iter().zip(gr).map(|(&a, &b)| f64::from((a * b).abs())).sum();
                prop_assert!(
                    (f64::from(out[r]) - want).abs() <= 1e-5 * (size + 1.0),
                    "row {r}: {} against {want}", out[r]
                );
            }
        }
    }

    #[test]
    fn layer_norm_dot_refuses_mismatched_buffers() {
        let x = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let mut out = vec![7.0; 2];
        assert!(layer_norm_dot(&mut out, &x, &[1.0; 2], 1e-6, 3, 2).is_err());
        assert!(layer_norm_dot(&mut out, &x[..5], &[1.0; 3], 1e-6, 3, 2).is_err());
        assert!(layer_norm_dot(&mut out, &x, &[1.0; 3], 1e-6, 3, 0).is_err());
        assert!(layer_norm_dot(&mut out, &x, &[1.0; 3], 1e-6, 0, 2).is_err());
        assert!(layer_norm_dot(&mut out[..1], &x, &[1.0; 3], 1e-6, 3, 2).is_err());
        assert_eq!(out, vec![7.0; 2]);
        layer_norm_dot(&mut out, &x, &[1.0, 0.0, 0.0], 1e-6, 3, 2).unwrap();
        // Both rows normalise to (-1.2247, 0, 1.2247).
        assert!(out.iter().all(|v| (v + 1.224_743).abs() < 1e-4), "{out:?}");
    }

    /// Blocks of rows that straddle images, split across threads, compute each row exactly as
    /// one thread does (a DeiT layer's 197 tokens of 384 values, three images).
    #[test]
    fn layer_norm_dot_is_the_same_on_any_number_of_threads() {
        let (groups, group_rows, row_len) = (3, 197, 384);
        let x = f32_vec(5, groups * group_rows * row_len);
        let g = f32_vec(6, groups * row_len);
        let run = |threads: usize| {
            let mut out = vec![f32::NAN; groups * group_rows];
            pool(threads)
                .install(|| {
                    assert!(dot_block_rows(out.len(), row_len) < out.len() || threads == 1);
                    layer_norm_dot(&mut out, &x, &g, 1e-6, row_len, group_rows)
                })
                .unwrap();
            out
        };
        let one = run(1);
        assert!(one.iter().all(|v| v.is_finite()));
        for threads in [2, 3, 7] {
            assert_eq!(run(threads), one, "{threads} threads");
        }
    }

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
