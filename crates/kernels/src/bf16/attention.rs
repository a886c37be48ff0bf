//! One (image, head) of attention in bf16: `softmax(scale · q k^T) v` with q, k, v and the
//! attention weights rounded to bf16 and every sum accumulated in f32.
//!
//! Both products run on the linear layers' micro-kernel. For `q k^T` the keys play the
//! weight: they are packed into panels of [`PANEL`] keys with each pair of features side by
//! side, and q's rows (scaled first) are converted to rows of pairs. For `p v` the values play
//! the weight, packed into panels of `PANEL` features with each pair of keys side by side, and
//! the softmax rows are converted to rows of pairs. Everything packed lives in the thread's
//! scratch words; one head's packed operands are a few tens of KiB, so they stay in L1/L2.

use std::cell::RefCell;

use super::pack::{AlignedWords, pair};
use super::{Bf16Kernel, MR, PANEL, Tile};
use crate::simd::{self, Isa};
use crate::softmax::Softmax;
use crate::{MatMut, MatRef};

thread_local! {
    /// The calling thread's packed operands, reused across heads.
    static WORDS: RefCell<AlignedWords> = RefCell::new(AlignedWords::default());
}

/// `out = softmax(scale · q k^T) v` for one head in bf16, with `scores` (`q.rows x k.rows`
/// floats) as the f32 score buffer. `q`, `k` and `v` share their column count `d`, `k` and `v`
/// their row count, `out` is `q.rows x d` with unit column stride; the caller has checked
/// every view against its storage.
#[allow(clippy::too_many_arguments)]
pub(crate) fn head(
    kernel: Bf16Kernel,
    isa: Isa,
    q: MatRef<'_>,
    k: MatRef<'_>,
    v: MatRef<'_>,
    scale: f32,
    scores: &mut [f32],
    out: MatMut<'_>,
) {
    let (nq, nk, d) = (q.rows, k.rows, q.cols);
    assert!(k.cols == d && v.cols == d && v.rows == nk && out.rows == nq && out.cols == d);
    assert!(out.col_stride == 1 && scores.len() == nq * nk);
    // The products write through raw pointers: every row of `out` must lie in its storage.
    assert!(nq == 0 || d == 0 || out.data.len() >= (nq - 1) * out.row_stride + d);
    if nq == 0 || d == 0 {
        return;
    }
    if nk == 0 {
        // No keys: every output is an empty sum, as in the f32 form.
        for r in 0..nq {
            out.data[r * out.row_stride..r * out.row_stride + d].fill(0.0);
        }
        return;
    }
    let kernel = if kernel.is_supported() {
        kernel
    } else {
        Bf16Kernel::Portable
    };
    let feature_pairs = d.div_ceil(2);
    let key_pairs = nk.div_ceil(2);
    let padded_rows = nq.div_ceil(MR) * MR;
    let sizes = [
        padded_rows * feature_pairs,
        nk.div_ceil(PANEL) * feature_pairs * PANEL,
        padded_rows * key_pairs,
        d.div_ceil(PANEL) * key_pairs * PANEL,
        feature_pairs,
    ];
    WORDS.with_borrow_mut(|words| {
        let words = words.resize(sizes.iter().sum());
        let (q_pairs, rest) = words.split_at_mut(sizes[0]);
        let (k_panels, rest) = rest.split_at_mut(sizes[1]);
        let (p_pairs, rest) = rest.split_at_mut(sizes[2]);
        let (v_panels, row) = rest.split_at_mut(sizes[3]);

        convert_rows(kernel, q_pairs, feature_pairs, q, scale);
        pack_keys(kernel, k_panels, &mut row[..feature_pairs], k);
        // Rows past nq hold stale words: their sums are computed but never stored.
        let scores_out = Out {
            c: scores.as_mut_ptr(),
            ldc: nk,
            rows: nq,
            cols: nk,
        };
        // SAFETY: `scores` is `nq x nk` and this thread's alone.
        unsafe { products(kernel, q_pairs, feature_pairs, k_panels, scores_out) };
        simd::dispatch(
            isa,
            Softmax {
                x: scores,
                row_len: nk,
            },
        );
        convert_rows(
            kernel,
            p_pairs,
            key_pairs,
            MatRef::row_major(scores, nq, nk),
            1.0,
        );
        pack_values(kernel, v_panels, v);
        let out = Out {
            c: out.data.as_mut_ptr(),
            ldc: out.row_stride,
            rows: nq,
            cols: d,
        };
        // SAFETY: `out` is a view the caller checked against its storage and hands to this
        // thread only.
        unsafe { products(kernel, p_pairs, key_pairs, v_panels, out) };
    });
}

/// Where a product's `rows x cols` f32 result goes: row `r` starts at `c + r * ldc`.
struct Out {
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
}

/// `out = a · panels^T`: `a` holds `out.rows` rows (padded to a multiple of `MR`) of `pairs`
/// words each; `panels` holds `out.cols.div_ceil(PANEL)` panels of `pairs` steps.
///
/// # Safety
/// `kernel` must run on this CPU, and `out` must be valid for writes by this thread alone.
unsafe fn products(kernel: Bf16Kernel, a: &[u32], pairs: usize, panels: &[u32], out: Out) {
    for (p, panel) in panels.chunks_exact(pairs * PANEL).enumerate() {
        let lanes = (out.cols - p * PANEL).min(PANEL);
        for g in 0..out.rows.div_ceil(MR) {
            let tile = Tile {
                a: &a[g * MR * pairs..],
                lda: pairs,
                b: panel,
                pairs,
                rows: (out.rows - g * MR).min(MR),
                cols: lane_mask(lanes),
            };
            let c = out.c.wrapping_add(g * MR * out.ldc + p * PANEL);
            // SAFETY: rows below `out.rows` and columns below `out.cols` of `out` (the
            // caller's contract).
            unsafe { tile.store(kernel, c, out.ldc, None, true) };
        }
    }
}

/// The low `lanes` bits of a panel's column mask.
fn lane_mask(lanes: usize) -> u32 {
    if lanes >= 32 {
        u32::MAX
    } else {
        (1u32 << lanes) - 1
    }
}

/// Element `(r, c)` of `m`, zero past its last column (the odd feature's partner).
fn at(m: MatRef<'_>, r: usize, c: usize) -> f32 {
    if c < m.cols {
        m.data[r * m.row_stride + c * m.col_stride]
    } else {
        0.0
    }
}

/// Pair `s` of row `r` of `m`, scaled: columns `2s` and `2s + 1`.
fn scaled_pair(m: MatRef<'_>, r: usize, s: usize, scale: f32) -> u32 {
    pair(scale * at(m, r, 2 * s), scale * at(m, r, 2 * s + 1))
}

/// The rows of `m`, scaled, as rows of pairs in `dst` at row stride `dst_stride`.
fn convert_rows(kernel: Bf16Kernel, dst: &mut [u32], dst_stride: usize, m: MatRef<'_>, scale: f32) {
    let pairs = m.cols.div_ceil(2);
    #[cfg(target_arch = "x86_64")]
    if kernel == Bf16Kernel::Avx512Bf16 && m.col_stride == 1 {
        let shape = (m.rows, m.cols);
        // SAFETY: the caller chose a kernel this CPU runs.
        unsafe { super::x86::convert_rows(dst, dst_stride, m.data, m.row_stride, shape, scale) };
        return;
    }
    let _ = kernel;
    for r in 0..m.rows {
        for (s, word) in dst[r * dst_stride..r * dst_stride + pairs]
            .iter_mut()
            .enumerate()
        {
            *word = scaled_pair(m, r, s, scale);
        }
    }
}

/// The keys `k` (one per row) packed into panels of [`PANEL`] keys, pairs of features side
/// by side; `row` is scratch for one key's pairs.
fn pack_keys(kernel: Bf16Kernel, panels: &mut [u32], row: &mut [u32], k: MatRef<'_>) {
    #[cfg(target_arch = "x86_64")]
    if kernel == Bf16Kernel::Avx512Bf16 && k.col_stride == 1 {
        let shape = (k.rows, k.cols);
        // SAFETY: the caller chose a kernel this CPU runs.
        unsafe { super::x86::pack_keys(panels, row, k.data, k.row_stride, shape) };
        return;
    }
    let _ = (kernel, row);
    let pairs = k.cols.div_ceil(2);
    for j in 0..k.rows {
        let panel = &mut panels[(j / PANEL) * pairs * PANEL..];
        for s in 0..pairs {
            panel[s * PANEL + j % PANEL] = scaled_pair(k, j, s, 1.0);
        }
    }
}

/// The values `v` (one key per row) packed into panels of [`PANEL`] features, pairs of keys
/// side by side.
fn pack_values(kernel: Bf16Kernel, panels: &mut [u32], v: MatRef<'_>) {
    #[cfg(target_arch = "x86_64")]
    if kernel == Bf16Kernel::Avx512Bf16 && v.col_stride == 1 {
        let shape = (v.rows, v.cols);
        // SAFETY: the caller chose a kernel this CPU runs.
        unsafe { super::x86::pack_values(panels, v.data, v.row_stride, shape) };
        return;
    }
    let _ = kernel;
    let (steps, d) = (v.rows.div_ceil(2), v.cols);
    for s in 0..steps {
        for (p, panel) in panels.chunks_exact_mut(steps * PANEL).enumerate() {
            for c in p * PANEL..((p + 1) * PANEL).min(d) {
                let hi = if 2 * s + 1 < v.rows {
                    at(v, 2 * s + 1, c)
                } else {
                    0.0
                };
                panel[s * PANEL + c - p * PANEL] = pair(at(v, 2 * s, c), hi);
            }
        }
    }
}
