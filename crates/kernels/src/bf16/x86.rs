//! The AVX-512 BF16 micro-kernel: a 12 x 32 f32 tile in 24 zmm registers, one `vdpbf16ps`
//! per row and half-panel per feature pair.

use super::{KCP, MR, PANEL};
use std::arch::x86_64::*;

/// Accumulates the tile over `pairs` steps: row `r`'s pair `s` is `a[r * KCP + s]`, the
/// panel's step `s` is `b[s * PANEL..(s + 1) * PANEL]`.
///
/// # Safety
/// The CPU must have AVX-512F and AVX-512 BF16; `a` must hold `(MR - 1) * KCP + pairs` words
/// and `b` `pairs * PANEL`.
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
unsafe fn accumulate(a: &[u32], b: &[u32], pairs: usize) -> [[__m512; 2]; MR] {
    debug_assert!(a.len() >= (MR - 1) * KCP + pairs && b.len() >= pairs * PANEL);
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
                    std::mem::transmute(_mm512_set1_epi32(*a.add(r * KCP + s) as i32));
                acc_row[0] = _mm512_dpbf16_ps(acc_row[0], av, b0);
                acc_row[1] = _mm512_dpbf16_ps(acc_row[1], av, b1);
            }
        }
    }
    acc
}

/// A tile straight into the output, rows `0..rows` and the panel columns whose bit is set in
/// `cols`: `c[r * ldc + j] = bias[j] + sum` when `overwrite`, else `c[r * ldc + j] += bias[j]
/// + sum` (no bias when `bias` is `None`). Masked-off columns are neither read nor written.
///
/// # Safety
/// As for [`accumulate`], and `rows <= MR`; for every row `r < rows` and set bit `j`,
/// `c + r * ldc + j` must be valid for reads and writes, written by no one else meanwhile,
/// and `bias + j` (if given) valid for reads.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn tile_store(
    a: &[u32],
    b: &[u32],
    pairs: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: u32,
    bias: Option<*const f32>,
    overwrite: bool,
) {
    // SAFETY: forwarded contract.
    let sums = unsafe { accumulate(a, b, pairs) };
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
    for (r, v) in sums.iter().enumerate() {
        if r >= rows {
            break;
        }
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
