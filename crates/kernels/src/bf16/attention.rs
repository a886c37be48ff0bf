//! One (image, head) of attention in bf16: `softmax(scale · q k^T) v` with q, k, v and the
//! attention weights rounded to bf16 and every sum accumulated in f32.
//!
//! Both products run on the linear layers' micro-kernel. For `q k^T` the keys play the
//! weight: they are packed into panels of [`PANEL`] keys with each pair of features side by
//! side, and q's rows (scaled first) are converted to rows of pairs. For `p v` the values play
//! the weight, packed into panels of `PANEL` features with each pair of keys side by side, and
//! the softmax rows are converted to rows of pairs. Everything packed lives in the thread's
//! scratch words; one head's packed operands are a few tens of KiB, so they stay in L1/L2.
//!
//! On AMX the same packed operands feed the tile driver, with their pair-steps padded with
//! zeros to whole tiles; each product configures the calling thread's tiles and releases them.

use std::cell::RefCell;

use super::amx_driver::{Dest, Packed, padded_steps, product_on, zero_pads};
use super::pack::{AlignedWords, pair};
use super::tile::TILE_ROWS;
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
    let kernel = kernel.usable();
    let conversion = kernel.conversion();
    let (feature_pairs, key_pairs) = (d.div_ceil(2), nk.div_ceil(2));
    // Pairs per packed row and pair-steps per panel: padded to whole tiles for AMX, whose
    // padding must be zero; the other kernels stop at the last real pair.
    let (feature_steps, key_steps, padded_rows) = if kernel.is_tiles() {
        (
            padded_steps(d),
            padded_steps(nk),
            nq.next_multiple_of(TILE_ROWS),
        )
    } else {
        (feature_pairs, key_pairs, nq.div_ceil(MR) * MR)
    };
    let sizes = [
        padded_rows * feature_steps,
        nk.div_ceil(PANEL) * feature_steps * PANEL,
        padded_rows * key_steps,
        d.div_ceil(PANEL) * key_steps * PANEL,
        feature_pairs,
    ];
    WORDS.with_borrow_mut(|words| {
        let words = words.resize(sizes.iter().sum());
        let (q_pairs, rest) = words.split_at_mut(sizes[0]);
        let (k_panels, rest) = rest.split_at_mut(sizes[1]);
        let (p_pairs, rest) = rest.split_at_mut(sizes[2]);
        let (v_panels, row) = rest.split_at_mut(sizes[3]);

        convert_rows(conversion, q_pairs, feature_steps, q, scale);
        pack_keys(
            conversion,
            k_panels,
            feature_steps,
            &mut row[..feature_pairs],
            k,
        );
        zero_pads(q_pairs, feature_steps, nq, feature_pairs);
        zero_pads(
            k_panels,
            feature_steps * PANEL,
            nk.div_ceil(PANEL),
            feature_pairs * PANEL,
        );
        // Rows past nq hold stale words: their sums are computed but never stored.
        let scores_out = Out {
            c: scores.as_mut_ptr(),
            ldc: nk,
            rows: nq,
            cols: nk,
        };
        // SAFETY: `scores` is `nq x nk` and this thread's alone.
        unsafe { products(kernel, q_pairs, feature_steps, k_panels, scores_out) };
        simd::dispatch(
            isa,
            Softmax {
                x: scores,
                row_len: nk,
            },
        );
        convert_rows(
            conversion,
            p_pairs,
            key_steps,
            MatRef::row_major(scores, nq, nk),
            1.0,
        );
        pack_values(conversion, v_panels, key_steps, v);
        zero_pads(p_pairs, key_steps, nq, key_pairs);
        zero_pads(
            v_panels,
            key_steps * PANEL,
            d.div_ceil(PANEL),
            key_pairs * PANEL,
        );
        let out = Out {
            c: out.data.as_mut_ptr(),
            ldc: out.row_stride,
            rows: nq,
            cols: d,
        };
        // SAFETY: `out` is a view the caller checked against its storage and hands to this
        // thread only.
        unsafe { products(kernel, p_pairs, key_steps, v_panels, out) };
    });
}

/// Where a product's `rows x cols` f32 result goes: row `r` starts at `c + r * ldc`.
struct Out {
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
}

/// `out = a · panels^T`: `a` holds `out.rows` rows (padded to a multiple of `MR`, or of 16
/// for the tiles) of `pairs` words each; `panels` holds `out.cols.div_ceil(PANEL)` panels of
/// `pairs` steps (for the tiles, `pairs` is padded with zeros to a multiple of 16).
///
/// # Safety
/// `kernel` must run on this CPU, and `out` must be valid for writes by this thread alone.
unsafe fn products(kernel: Bf16Kernel, a: &[u32], pairs: usize, panels: &[u32], out: Out) {
    if kernel.is_tiles() {
        let ops = Packed {
            a,
            b: panels,
            steps: pairs,
        };
        let dest = Dest {
            c: out.c,
            ldc: out.ldc,
            rows: out.rows,
            cols: out.cols,
            col0: 0,
            bias: None,
            overwrite: true,
        };
        // SAFETY: the caller's contract, with the operands padded as `Packed` says.
        unsafe { product_on(kernel, &ops, 0..out.cols.div_ceil(PANEL), &dest) };
        return;
    }
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
pub(super) fn convert_rows(
    kernel: Bf16Kernel,
    dst: &mut [u32],
    dst_stride: usize,
    m: MatRef<'_>,
    scale: f32,
) {
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

/// The keys `k` (one per row) packed into panels of [`PANEL`] keys and `steps` pair-steps,
/// pairs of features side by side; `row` is scratch for one key's pairs.
fn pack_keys(kernel: Bf16Kernel, panels: &mut [u32], steps: usize, row: &mut [u32], k: MatRef<'_>) {
    #[cfg(target_arch = "x86_64")]
    if kernel == Bf16Kernel::Avx512Bf16 && k.col_stride == 1 {
        let shape = (k.rows, k.cols);
        // SAFETY: the caller chose a kernel this CPU runs.
        unsafe { super::x86::pack_keys(panels, steps, row, k.data, k.row_stride, shape) };
        return;
    }
    let _ = (kernel, row);
    let pairs = k.cols.div_ceil(2);
    for j in 0..k.rows {
        let panel = &mut panels[(j / PANEL) * steps * PANEL..];
        for s in 0..pairs {
            panel[s * PANEL + j % PANEL] = scaled_pair(k, j, s, 1.0);
        }
    }
}

/// The values `v` (one key per row) packed into panels of [`PANEL`] features and `steps`
/// pair-steps, pairs of keys side by side.
fn pack_values(kernel: Bf16Kernel, panels: &mut [u32], steps: usize, v: MatRef<'_>) {
    #[cfg(target_arch = "x86_64")]
    if kernel == Bf16Kernel::Avx512Bf16 && v.col_stride == 1 {
        let shape = (v.rows, v.cols);
        // SAFETY: the caller chose a kernel this CPU runs.
        unsafe { super::x86::pack_values(panels, steps, v.data, v.row_stride, shape) };
        return;
    }
    let _ = kernel;
    let (pairs, d) = (v.rows.div_ceil(2), v.cols);
    for s in 0..pairs {
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
