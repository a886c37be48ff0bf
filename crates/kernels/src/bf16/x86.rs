//! The AVX-512 BF16 micro-kernel: a 12 x 32 f32 tile in 24 zmm registers, one `vdpbf16ps`
//! per row and half-panel per feature pair.

use super::{KC, KCP, MR, PANEL, Tile};
use std::arch::x86_64::*;
use std::ops::Range;

/// Accumulates the tile over `pairs` steps: row `r`'s pair `s` is `a[r * lda + s]`, the
/// panel's step `s` is `b[s * PANEL..(s + 1) * PANEL]`.
///
/// # Safety
/// The CPU must have AVX-512F and AVX-512 BF16; `a` must hold `(MR - 1) * lda + pairs` words
/// and `b` `pairs * PANEL`.
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
unsafe fn accumulate(a: &[u32], lda: usize, b: &[u32], pairs: usize) -> [[__m512; 2]; MR] {
    debug_assert!(a.len() >= (MR - 1) * lda + pairs && b.len() >= pairs * PANEL);
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    let (a, b) = (a.as_ptr(), b.as_ptr());
    for s in 0..pairs {
        // SAFETY: `s < pairs` keeps both loads inside `b` and every broadcast inside `a`
        // (caller's contract); bf16 vectors are reinterpretations of the same 512 bits.
        unsafe {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(s * PANEL).cast()));
            let b1: __m512bh =
                std::mem::transmute(_mm512_loadu_si512(b.add(s * PANEL + 16).cast()));
            for (r, acc_row) in acc.iter_mut().enumerate() {
                let av: __m512bh =
                    std::mem::transmute(_mm512_set1_epi32(*a.add(r * lda + s) as i32));
                acc_row[0] = _mm512_dpbf16_ps(acc_row[0], av, b0);
                acc_row[1] = _mm512_dpbf16_ps(acc_row[1], av, b1);
            }
        }
    }
    acc
}

/// A tile straight into the output ([`Tile::store`]'s contract and semantics).
///
/// # Safety
/// As for [`Tile::store`], with the CPU having AVX-512F and AVX-512 BF16.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn tile_store(
    tile: &Tile<'_>,
    c: *mut f32,
    ldc: usize,
    bias: Option<*const f32>,
    overwrite: bool,
) {
    // SAFETY: forwarded contract.
    let sums = unsafe { accumulate(tile.a, tile.lda, tile.b, tile.pairs) };
    let masks = [tile.cols as u16, (tile.cols >> 16) as u16];
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
    for (r, v) in sums.iter().enumerate().take(tile.rows) {
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

/// The low `n` bits set (`n <= 16`).
#[inline(always)]
fn low_bits(n: usize) -> u16 {
    ((1u32 << n.min(16)) - 1) as u16
}

/// `dst[i] = pair(scale * src[2i], scale * src[2i + 1])`, rounded to nearest even by the
/// hardware, the odd last value paired with zero: `dst.len()` must be `src.len().div_ceil(2)`.
/// Unlike [`to_bf16`](super::to_bf16), inputs below 1.2e-38 round as zero.
///
/// # Safety
/// The CPU must have AVX-512F and AVX-512 BF16.
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
unsafe fn convert_scaled(dst: &mut [u32], src: &[f32], scale: f32) {
    assert_eq!(dst.len(), src.len().div_ceil(2));
    let factor = _mm512_set1_ps(scale);
    let (from, to) = (src.as_ptr(), dst.as_mut_ptr());
    for i in (0..src.len()).step_by(32) {
        let left = src.len() - i;
        let (lo_mask, hi_mask) = (low_bits(left), low_bits(left.saturating_sub(16)));
        // SAFETY: only the set lanes are read: values `i..src.len()` of `src`; only the set
        // words are written: pairs `i / 2..dst.len()` of `dst`.
        unsafe {
            let lo = _mm512_mul_ps(_mm512_maskz_loadu_ps(lo_mask, from.wrapping_add(i)), factor);
            let hi = _mm512_mul_ps(
                _mm512_maskz_loadu_ps(hi_mask, from.wrapping_add(i + 16)),
                factor,
            );
            let words: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            let store = low_bits(left.min(32).div_ceil(2));
            _mm512_mask_storeu_epi32(to.wrapping_add(i / 2).cast(), store, words);
        }
    }
}

/// `dst[c] = pair(first[c], second[c])` (the second row zero when `None`), rounded to nearest
/// even by the hardware: two rows of a matrix whose pairs run down its columns. `first`,
/// `second` and `dst` must have one length.
///
/// # Safety
/// The CPU must have AVX-512F and AVX-512 BF16.
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
unsafe fn interleave(dst: &mut [u32], first: &[f32], second: Option<&[f32]>) {
    assert!(first.len() == dst.len() && second.is_none_or(|s| s.len() == dst.len()));
    let to = dst.as_mut_ptr();
    for c in (0..dst.len()).step_by(16) {
        let mask = low_bits(dst.len() - c);
        // SAFETY: only the set lanes, `c..len` of each row, are read and written.
        unsafe {
            let widen = |row: *const f32| {
                let v = _mm512_maskz_loadu_ps(mask, row.wrapping_add(c));
                _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(
                    _mm512_cvtneps_pbh(v),
                ))
            };
            let lo = widen(first.as_ptr());
            let words = match second {
                Some(second) => _mm512_or_si512(lo, _mm512_slli_epi32(widen(second.as_ptr()), 16)),
                None => lo,
            };
            _mm512_mask_storeu_epi32(to.wrapping_add(c).cast(), mask, words);
        }
    }
}

/// Rows `0..rows` of the row-major `src` (row stride `src_stride`, `cols` values each),
/// scaled, as rows of pairs in `dst` at row stride `dst_stride` ([`convert_scaled`]).
///
/// # Safety
/// The CPU must have AVX-512F and AVX-512 BF16.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn convert_rows(
    dst: &mut [u32],
    dst_stride: usize,
    src: &[f32],
    src_stride: usize,
    (rows, cols): (usize, usize),
    scale: f32,
) {
    let pairs = cols.div_ceil(2);
    for r in 0..rows {
        let from = &src[r * src_stride..r * src_stride + cols];
        // SAFETY: this CPU has the features (caller's contract).
        unsafe {
            convert_scaled(
                &mut dst[r * dst_stride..r * dst_stride + pairs],
                from,
                scale,
            )
        };
    }
}

/// Packs the row-major keys `src` (`rows` keys of `cols` features, row stride `src_stride`)
/// into panels of [`PANEL`] keys and `steps` pair-steps, pairs of features side by side, using
/// `row` (`cols.div_ceil(2)` words) as scratch.
///
/// # Safety
/// The CPU must have AVX-512F and AVX-512 BF16.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn pack_keys(
    panels: &mut [u32],
    steps: usize,
    row: &mut [u32],
    src: &[f32],
    src_stride: usize,
    (rows, cols): (usize, usize),
) {
    for j in 0..rows {
        // SAFETY: this CPU has the features (caller's contract).
        unsafe { convert_scaled(row, &src[j * src_stride..j * src_stride + cols], 1.0) };
        let panel = &mut panels[(j / PANEL) * steps * PANEL..];
        for (s, &word) in row.iter().enumerate() {
            panel[s * PANEL + j % PANEL] = word;
        }
    }
}

/// Packs the row-major values `src` (`rows` keys of `cols` features, row stride `src_stride`)
/// into panels of [`PANEL`] features and `steps` pair-steps (at least `rows.div_ceil(2)`),
/// pairs of keys side by side.
///
/// # Safety
/// The CPU must have AVX-512F and AVX-512 BF16.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn pack_values(
    panels: &mut [u32],
    steps: usize,
    src: &[f32],
    src_stride: usize,
    (rows, cols): (usize, usize),
) {
    for s in 0..rows.div_ceil(2) {
        let first = &src[2 * s * src_stride..2 * s * src_stride + cols];
        let second = (2 * s + 1 < rows)
            .then(|| &src[(2 * s + 1) * src_stride..(2 * s + 1) * src_stride + cols]);
        for (p, panel) in panels.chunks_exact_mut(steps * PANEL).enumerate() {
            let features = p * PANEL..((p + 1) * PANEL).min(cols);
            let dst = &mut panel[s * PANEL..s * PANEL + features.len()];
            let second = second.map(|row| &row[features.clone()]);
            // SAFETY: this CPU has the features (caller's contract).
            unsafe { interleave(dst, &first[features], second) };
        }
    }
}

/// [`pack_rows`](super::pack::pack_rows) with the hardware's conversion: rows `rows` of the
/// row-major `x` (`k` columns) as `MR`-row groups of `KCP` pairs per `KC` block of features,
/// rows past the end zero.
///
/// # Safety
/// The CPU must have AVX-512F and AVX-512 BF16.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn pack_rows(a: &mut [u32], x: &[f32], k: usize, rows: Range<usize>) {
    let k_blocks = k.div_ceil(KC);
    for g in 0..rows.len().div_ceil(MR) {
        for kb in 0..k_blocks {
            let (f0, f1) = (kb * KC, (kb * KC + KC).min(k));
            let pairs = (f1 - f0).div_ceil(2);
            let block = (g * k_blocks + kb) * MR * KCP;
            for r in 0..MR {
                let dst = &mut a[block + r * KCP..block + r * KCP + pairs];
                let row = rows.start + g * MR + r;
                if row < rows.end {
                    // SAFETY: this CPU has the features (caller's contract).
                    unsafe { convert_scaled(dst, &x[row * k + f0..row * k + f1], 1.0) };
                } else {
                    dst.fill(0);
                }
            }
        }
    }
}
