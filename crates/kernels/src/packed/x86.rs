//! The micro-kernels: an `R x 32` f32 tile, one broadcast and two fused multiply-adds per
//! row, input feature and 16 (AVX-512F: 12 rows in 24 zmm registers, or 4 for the last rows
//! of a block) or 8 columns (AVX2 and FMA: 6 or 2 rows, one 16-column half of the panel at a
//! time, since the 16 ymm registers hold a `6 x 16` tile's sums but not a `6 x 32` one).

use super::PANEL;
use std::arch::x86_64::*;

/// A tile's operands over `kk` features: row `r`'s feature `s` is `a[r * lda + s]`, the
/// panel's step `s` is `b[s * PANEL..(s + 1) * PANEL]`.
pub(super) struct TileIn<'a> {
    /// The tile's rows of activations.
    pub(super) a: &'a [f32],
    /// Their row stride.
    pub(super) lda: usize,
    /// The panel's steps.
    pub(super) b: &'a [f32],
    /// Features summed.
    pub(super) kk: usize,
}

/// Where a tile's sums go: rows `0..rows` and the panel columns whose bit is set in `cols`
/// get `c[r * ldc + j] = bias[j] + sum` when `overwrite`, else `c[r * ldc + j] += bias[j] +
/// sum` (no bias when `bias` is `None`). Masked-off columns are neither read nor written.
pub(super) struct TileOut {
    /// The tile's first output element (panel column 0 of its first row).
    pub(super) c: *mut f32,
    /// The output's row stride.
    pub(super) ldc: usize,
    /// Rows written.
    pub(super) rows: usize,
    /// Panel columns written, one bit each.
    pub(super) cols: u32,
    /// The bias at panel column 0, if it is added.
    pub(super) bias: Option<*const f32>,
    /// Whether the sums replace the output rather than add to it.
    pub(super) overwrite: bool,
}

/// The sums of an `R x PANEL` tile.
///
/// # Safety
/// The CPU must have AVX-512F; `ops.a` must hold `(R - 1) * lda + kk` values and `ops.b`
/// `kk * PANEL`.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn accumulate<const R: usize>(ops: &TileIn<'_>) -> [[__m512; 2]; R] {
    let TileIn { a, lda, b, kk } = *ops;
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

/// An `R x PANEL` tile's sums, written as `out` says.
///
/// # Safety
/// As for [`accumulate`] with `R` rows, and `out.rows <= R`; for every row `r < out.rows` and
/// set bit `j`, `out.c + r * out.ldc + j` must be valid for reads and writes, written by no
/// one else meanwhile, and `out.bias + j` (if given) valid for reads.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn tile<const R: usize>(ops: &TileIn<'_>, out: &TileOut) {
    // SAFETY: forwarded contract.
    let sums = unsafe { accumulate::<R>(ops) };
    let masks = [out.cols as u16, (out.cols >> 16) as u16];
    let start = match out.bias {
        // SAFETY: only the set lanes of `bias` are read.
        Some(bias) => unsafe {
            [
                _mm512_maskz_loadu_ps(masks[0], bias),
                _mm512_maskz_loadu_ps(masks[1], bias.wrapping_add(16)),
            ]
        },
        None => [_mm512_setzero_ps(); 2],
    };
    for (r, v) in sums.iter().enumerate().take(out.rows) {
        for h in 0..2 {
            // SAFETY: only the set lanes of row r < rows are read and written.
            unsafe {
                let p = out.c.wrapping_add(r * out.ldc + 16 * h);
                let base = if out.overwrite {
                    start[h]
                } else {
                    _mm512_add_ps(_mm512_maskz_loadu_ps(masks[h], p), start[h])
                };
                _mm512_mask_storeu_ps(p, masks[h], _mm512_add_ps(base, v[h]));
            }
        }
    }
}

/// The sums of half `h` of an `R x PANEL` tile (panel columns `16 * h..16 * h + 16`) in
/// 256-bit registers.
///
/// # Safety
/// The CPU must have AVX2 and FMA, `h < 2`, and `ops` as for [`accumulate`].
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn accumulate_half<const R: usize>(ops: &TileIn<'_>, h: usize) -> [[__m256; 2]; R] {
    let TileIn { a, lda, b, kk } = *ops;
    debug_assert!(a.len() >= (R - 1) * lda + kk && b.len() >= kk * PANEL && h < 2);
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    let (a, b) = (a.as_ptr(), b.as_ptr().wrapping_add(16 * h));
    for s in 0..kk {
        // SAFETY: `s < kk` and `h < 2` keep both loads inside the panel steps and every
        // broadcast inside `a` (caller's contract).
        unsafe {
            let b0 = _mm256_loadu_ps(b.add(s * PANEL));
            let b1 = _mm256_loadu_ps(b.add(s * PANEL + 8));
            for (r, acc_row) in acc.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*a.add(r * lda + s));
                acc_row[0] = _mm256_fmadd_ps(av, b0, acc_row[0]);
                acc_row[1] = _mm256_fmadd_ps(av, b1, acc_row[1]);
            }
        }
    }
    acc
}

/// The lanes whose bit is set in the low 8 bits of `bits`, as a `maskload`/`maskstore` mask
/// (all ones where set).
#[target_feature(enable = "avx2")]
#[inline]
fn lane_mask(bits: u32) -> __m256i {
    let lanes = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    let set = _mm256_and_si256(_mm256_set1_epi32(bits as i32), lanes);
    _mm256_cmpeq_epi32(set, lanes)
}

/// [`tile`] with AVX2 and FMA: the same contract and result, computed as two 16-column halves
/// (12 of the 16 ymm registers hold a half's `6 x 16` sums). A half with no column in the
/// output is skipped; a half wholly inside it is read and written without masks.
///
/// # Safety
/// As for [`tile`], with AVX2 and FMA in place of AVX-512F.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn tile_avx2<const R: usize>(ops: &TileIn<'_>, out: &TileOut) {
    for h in 0..2 {
        let half = (out.cols >> (16 * h)) & 0xFFFF;
        if half == 0 {
            continue;
        }
        // SAFETY: forwarded contract.
        let sums = unsafe { accumulate_half::<R>(ops, h) };
        let full = half == 0xFFFF;
        let masks = [lane_mask(half), lane_mask(half >> 8)];
        let start = match out.bias {
            // SAFETY: only the set lanes of `bias` are read.
            Some(bias) => unsafe {
                let bias = bias.wrapping_add(16 * h);
                [
                    _mm256_maskload_ps(bias, masks[0]),
                    _mm256_maskload_ps(bias.wrapping_add(8), masks[1]),
                ]
            },
            None => [_mm256_setzero_ps(); 2],
        };
        for (r, v) in sums.iter().enumerate().take(out.rows) {
            for q in 0..2 {
                let p = out.c.wrapping_add(r * out.ldc + 16 * h + 8 * q);
                // SAFETY: only the set lanes of row r < rows are read and written (all of
                // them when `full`).
                unsafe {
                    let base = if out.overwrite {
                        start[q]
                    } else if full {
                        _mm256_add_ps(_mm256_loadu_ps(p), start[q])
                    } else {
                        _mm256_add_ps(_mm256_maskload_ps(p, masks[q]), start[q])
                    };
                    let sum = _mm256_add_ps(base, v[q]);
                    if full {
                        _mm256_storeu_ps(p, sum);
                    } else {
                        _mm256_maskstore_ps(p, masks[q], sum);
                    }
                }
            }
        }
    }
}
