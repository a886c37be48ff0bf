//! Row-wise softmax.

use crate::math::{self, LANES};
use crate::parallel;
use crate::simd::{self, Isa, SimdKernel};

/// Softmax of each row of `x` in place: subtract the row maximum, exponentiate, normalise.
///
/// `x` holds `x.len() / row_len` rows; a trailing partial row and `row_len == 0` are left
/// untouched. A row containing NaN becomes all NaN; `-inf` entries become 0 as long as the row
/// has a finite entry. Large buffers are split by rows across rayon's current pool.
pub fn softmax_rows(x: &mut [f32], row_len: usize) {
    softmax_rows_with(Isa::detected(), x, row_len);
}

/// [`softmax_rows`] compiled for a given instruction set (for tests and benchmarks); falls back
/// to the portable build if the CPU lacks it.
pub fn softmax_rows_with(isa: Isa, x: &mut [f32], row_len: usize) {
    if row_len == 0 {
        return;
    }
    let whole = x.len() - x.len() % row_len;
    parallel::for_row_blocks(&mut x[..whole], row_len, |block| {
        simd::dispatch(isa, Softmax { x: block, row_len });
    });
}

pub(crate) struct Softmax<'a> {
    pub(crate) x: &'a mut [f32],
    pub(crate) row_len: usize,
}

impl SimdKernel for Softmax<'_> {
    type Output = ();

    #[inline(always)]
    fn run<const FMA: bool>(self) {
        for row in self.x.chunks_exact_mut(self.row_len) {
            softmax_row::<FMA>(row);
        }
    }
}

#[inline(always)]
fn softmax_row<const FMA: bool>(row: &mut [f32]) {
    // A NaN anywhere must poison the row, but the running maximum skips NaN; the NaN then
    // reaches the sum through exp and the final scale.
    let max = math::max_of(row);
    let mut acc = [0.0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (a, v) in acc.iter_mut().zip(chunk.iter_mut()) {
            *v = math::exp::<FMA>(*v - max);
            *a += *v;
        }
    }
    let mut sum = math::reduce_sum(acc);
    for v in chunks.into_remainder() {
        *v = math::exp::<FMA>(*v - max);
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in row.iter_mut() {
        *v *= inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference;
    use crate::testutil::{f32_vec, pool};
    use proptest::prelude::*;

    /// Tolerance per element: relative 1e-6, plus what rounding the argument x - max to f32
    /// costs (half an ulp of |x - max|), which no exp can undo.
    fn check(got: &[f32], input: &[f32], row_len: usize) -> Result<(), TestCaseError> {
        let mut want = input.to_vec();
        reference::softmax_rows(&mut want, row_len);
        for (r, ((g, w), x)) in got
            .chunks(row_len)
            .zip(want.chunks(row_len))
            .zip(input.chunks(row_len))
            .enumerate()
        {
            if g.len() < row_len {
                prop_assert_eq!(g, x, "partial row {} was touched", r);
                continue;
            }
            let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut total = 0.0f64;
            for (i, (&gv, &wv)) in g.iter().zip(w).enumerate() {
                let err = (gv as f64 - wv as f64).abs();
                let rel = 1e-6 + 6e-8 * (x[i] - max).abs() as f64;
                prop_assert!(
                    err <= rel * wv as f64 + 1e-30,
                    "row {} col {}: got {} want {} (err {})",
                    r,
                    i,
                    gv,
                    wv,
                    err
                );
                total += gv as f64;
            }
            prop_assert!((total - 1.0).abs() <= 2e-6, "row {} sums to {}", r, total);
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn matches_reference(
            row_len in 1usize..70,
            rows in 0usize..9,
            extra in 0usize..3,
            seed in any::<u64>(),
            spread in prop_oneof![Just(1.0f32), Just(10.0), Just(40.0)],
        ) {
            let extra = extra.min(row_len - 1);
            let input: Vec<f32> = f32_vec(seed, rows * row_len + extra).iter().map(|v| v * spread).collect();
            for isa in Isa::supported() {
                let mut got = input.clone();
                softmax_rows_with(isa, &mut got, row_len);
                check(&got, &input, row_len)?;
            }
        }
    }

    #[test]
    fn isas_agree_with_portable() {
        let input: Vec<f32> = f32_vec(7, 37 * 53).iter().map(|v| v * 20.0).collect();
        let mut portable = input.clone();
        softmax_rows_with(Isa::Portable, &mut portable, 53);
        for isa in Isa::supported() {
            let mut got = input.clone();
            softmax_rows_with(isa, &mut got, 53);
            for (g, p) in got.iter().zip(&portable) {
                assert!((g - p).abs() <= 2e-7, "{isa:?}: {g} vs portable {p}");
            }
        }
    }

    #[test]
    fn large_buffers_split_across_threads_identically() {
        let row_len = 197;
        let input = f32_vec(3, row_len * 1400);
        let mut serial = input.clone();
        for row in serial.chunks_exact_mut(row_len) {
            softmax_rows(row, row_len);
        }
        let mut par = input.clone();
        pool(3).install(|| softmax_rows(&mut par, row_len));
        assert_eq!(serial, par);
        check(&par, &input, row_len).unwrap();
    }

    #[test]
    fn special_values() {
        let mut x = vec![0.0, f32::NEG_INFINITY, 0.0, 1.0, f32::NAN, 2.0];
        softmax_rows(&mut x, 3);
        assert_eq!(&x[..3], &[0.5, 0.0, 0.5]);
        assert!(x[3..].iter().all(|v| v.is_nan()));
        let mut empty: Vec<f32> = vec![];
        softmax_rows(&mut empty, 0);
        let mut one = vec![-3.0];
        softmax_rows(&mut one, 1);
        assert_eq!(one, [1.0]);
    }
}
