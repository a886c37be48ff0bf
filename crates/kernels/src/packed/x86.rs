//! The AVX-512F micro-kernel: an `R x 32` f32 tile (12 rows in 24 zmm registers, or 4 for
//! the last rows of a block), one broadcast and two fused multiply-adds per row and input
//! feature.

use super::PANEL;
use std::arch::x86_64::*;

/// The sums of an `R x PANEL` tile over `kk` features: row `r`'s feature `s` is
/// `a[r * lda + s]`, the panel's step `s` is `b[s * PANEL..(s + 1) * PANEL]`.
///
/// # Safety
/// The CPU must have AVX-512F; `a` must hold `(R - 1) * lda + kk` values and `b`
/// `kk * PANEL`.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn accumulate<const R: usize>(
    a: &[f32],
    lda: usize,
    b: &[f32],
    kk: usize,
) -> [[__m512; 2]; R] {
    debug_assert!(a.len() >= (R - 1) * lda + kk && b.len() >= kk * PANEL);
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    let (a, b) = (a.as_ptr(), b.as_ptr());
    for s in 0..kk {
        // SAFETY: `s < kk` keeps both loads inside `b` and every broadcast inside `a`
        // (caller's contract).
        unsafe {
            let b0 = _mm512_loadu_ps(b.add(s * PANEL));
            let b1 = _mm512_loadu_ps(b.add(s * PANEL + 16));
            for (r, acc_row) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*a.add(r * lda + s));
                acc_row[0] = _mm512_fmadd_ps(av, b0, acc_row[0]);
                acc_row[1] = _mm512_fmadd_ps(av, b1, acc_row[1]);
            }
        }
    }
    acc
}

/// A tile into the output, rows `0..rows` and the panel columns whose bit is set in `cols`:
/// `c[r * ldc + j] = bias[j] + sum` when `overwrite`, else `c[r * ldc + j] += bias[j] + sum`
/// (no bias when `bias` is `None`). Masked-off columns are neither read nor written.
///
/// # Safety
/// As for [`accumulate`] with `R` rows, and `rows <= R`; for every row `r < rows` and set bit `j`,
/// `c + r * ldc + j` must be valid for reads and writes, written by no one else meanwhile,
/// and `bias + j` (if given) valid for reads.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn tile<const R: usize>(
    a: &[f32],
    lda: usize,
    b: &[f32],
    kk: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: u32,
    bias: Option<*const f32>,
    overwrite: bool,
) {
    // SAFETY: forwarded contract.
    let sums = unsafe { accumulate::<R>(a, lda, b, kk) };
    let masks = [cols as u16, (cols >> 16) as u16];
    let start = match bias {
        // SAFETY: only the set lanes of `bias` are read.
        Some(bias) => unsafe {
            [
                _mm512_maskz_loadu_ps(masks[0], bias),
                _mm512_maskz_loadu_ps(masks[1], bias.wrapping_add(16)),
            ]
        },
        None => [_mm512_setzero_ps(); 2],
    };
    for (r, v) in sums.iter().enumerate().take(rows) {
        for h in 0..2 {
            // SAFETY: only the set lanes of row r < rows are read and written.
            unsafe {
                let p = c.wrapping_add(r * ldc + 16 * h);
                let base = if overwrite {
                    start[h]
                } else {
                    _mm512_add_ps(_mm512_maskz_loadu_ps(masks[h], p), start[h])
                };
                _mm512_mask_storeu_ps(p, masks[h], _mm512_add_ps(base, v[h]));
            }
        }
    }
}
