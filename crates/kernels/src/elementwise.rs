//! Element-wise arithmetic on slices: memory-bound, so plain loops the baseline target already
//! vectorises, split across rayon only for large buffers.

use crate::parallel;
use rayon::prelude::*;

/// `a[i] += b[i]` over the common prefix `min(a.len(), b.len())` (residual connections).
pub fn add_assign(a: &mut [f32], b: &[f32]) {
    let len = a.len().min(b.len());
    let (a, b) = (&mut a[..len], &b[..len]);
    if parallel::worth_splitting(len) {
        let block = parallel::PAR_MIN_LEN / 4;
        a.par_chunks_mut(block)
            .zip(b.par_chunks(block))
            .for_each(|(a, b)| add_serial(a, b));
    } else {
        add_serial(a, b);
    }
}

fn add_serial(a: &mut [f32], b: &[f32]) {
    for (x, &y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

/// `a[i] *= s` (attention's 1/sqrt(d) scale, layer scale).
pub fn scale(a: &mut [f32], s: f32) {
    if parallel::worth_splitting(a.len()) {
        a.par_chunks_mut(parallel::PAR_MIN_LEN / 4)
            .for_each(|block| scale_serial(block, s));
    } else {
        scale_serial(a, s);
    }
}

fn scale_serial(a: &mut [f32], s: f32) {
    for x in a.iter_mut() {
        *x *= s;
    }
}

/// Adds `bias` to every whole row of `x` (rows of length `bias.len()`); a trailing partial row
/// and an empty `bias` leave `x` untouched.
pub fn add_bias_rows(x: &mut [f32], bias: &[f32]) {
    let row_len = bias.len();
    if row_len == 0 {
        return;
    }
    let whole = x.len() - x.len() % row_len;
    parallel::for_row_blocks(&mut x[..whole], row_len, |block| {
        for row in block.chunks_exact_mut(row_len) {
            add_serial(row, bias);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{f32_vec, pool};
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn add_assign_is_exact_on_common_prefix(la in 0usize..70, lb in 0usize..70, seed in any::<u64>()) {
            let a0 = f32_vec(seed, la);
            let b = f32_vec(seed ^ 9, lb);
            let mut a = a0.clone();
            add_assign(&mut a, &b);
            for i in 0..la {
                let want = if i < lb { a0[i] + b[i] } else { a0[i] };
                prop_assert_eq!(a[i], want);
            }
        }

        #[test]
        fn scale_is_exact(len in 0usize..70, s in -3.0f32..3.0, seed in any::<u64>()) {
            let a0 = f32_vec(seed, len);
            let mut a = a0.clone();
            scale(&mut a, s);
            for (got, x) in a.iter().zip(&a0) {
                prop_assert_eq!(*got, x * s);
            }
        }

        #[test]
        fn add_bias_rows_adds_to_whole_rows(row_len in 0usize..20, len in 0usize..70, seed in any::<u64>()) {
            let x0 = f32_vec(seed, len);
            let bias = f32_vec(seed ^ 3, row_len);
            let mut x = x0.clone();
            add_bias_rows(&mut x, &bias);
            let whole = len.checked_div(row_len).map_or(0, |rows| rows * row_len);
            for i in 0..len {
                let want = if i < whole { x0[i] + bias[i % row_len] } else { x0[i] };
                prop_assert_eq!(x[i], want);
            }
        }
    }

    #[test]
    fn large_buffers_in_parallel() {
        let n = 1 << 19;
        let a0 = f32_vec(1, n + 3);
        let b = f32_vec(2, n + 3);
        let bias = f32_vec(3, 384);
        pool(3).install(|| {
            let mut a = a0.clone();
            add_assign(&mut a, &b);
            assert!(a.iter().zip(&a0).zip(&b).all(|((s, x), y)| *s == x + y));
            scale(&mut a, 0.5);
            assert!(
                a.iter()
                    .zip(&a0)
                    .zip(&b)
                    .all(|((s, x), y)| *s == (x + y) * 0.5)
            );
            let mut c = a0.clone();
            add_bias_rows(&mut c, &bias);
            assert!(c.iter().zip(&a0).enumerate().all(|(i, (s, x))| {
                if i < (n + 3) / 384 * 384 {
                    *s == x + bias[i % 384]
                } else {
                    s == x
                }
            }));
        });
    }
}
