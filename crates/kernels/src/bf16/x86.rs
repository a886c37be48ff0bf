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

/// The tile's sums into `acc` (for edge tiles, which the caller stores element by element).
///
/// # Safety
/// As for [`accumulate`].
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn tile_acc(a: &[u32], b: &[u32], pairs: usize, acc: &mut [[f32; PANEL]; MR]) {
    // SAFETY: forwarded contract.
    let sums = unsafe { accumulate(a, b, pairs) };
    for (out, v) in acc.iter_mut().zip(&sums) {
        // SAFETY: each half of `out` is 16 f32s.
        unsafe {
            _mm512_storeu_ps(out.as_mut_ptr(), v[0]);
            _mm512_storeu_ps(out.as_mut_ptr().add(16), v[1]);
        }
    }
}

/// A full tile straight into the output: `c[r * ldc + j] = bias[j] + sum` when `first`, else
/// `c[r * ldc + j] += sum`, for `r < MR`, `j < PANEL`.
///
/// # Safety
/// As for [`accumulate`], and `c` must be valid for reads and writes of `MR` rows of `PANEL`
/// floats `ldc` apart, written by no one else meanwhile; `bias`, if any, has `PANEL` entries.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn tile_full(
    a: &[u32],
    b: &[u32],
    pairs: usize,
    c: *mut f32,
    ldc: usize,
    bias: Option<&[f32]>,
    first: bool,
) {
    // SAFETY: forwarded contract.
    let sums = unsafe { accumulate(a, b, pairs) };
    let start = match (first, bias) {
        // SAFETY: `bias` has PANEL = 32 entries.
        (true, Some(bias)) => unsafe {
            [
                _mm512_loadu_ps(bias.as_ptr()),
                _mm512_loadu_ps(bias.as_ptr().add(16)),
            ]
        },
        _ => [_mm512_setzero_ps(); 2],
    };
    for (r, v) in sums.iter().enumerate() {
        for h in 0..2 {
            // SAFETY: row r < MR and columns 16h..16h + 16 < PANEL are in the caller's tile.
            unsafe {
                let p = c.add(r * ldc + 16 * h);
                let base = if first { start[h] } else { _mm512_loadu_ps(p) };
                _mm512_storeu_ps(p, _mm512_add_ps(base, v[h]));
            }
        }
    }
}
