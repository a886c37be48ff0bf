//! When and how the row-wise and element-wise kernels split work across rayon's current pool.

use rayon::prelude::*;

/// Buffers shorter than this many `f32`s run on the calling thread.
///
/// Waking a sleeping rayon worker costs tens of microseconds; the cheapest kernel here (an add)
/// streams 2^17 elements in about that time, so below this size one thread finishes first.
pub(crate) const PAR_MIN_LEN: usize = 1 << 17;

/// Rows per task: about four tasks per thread for balance, none smaller than
/// [`PAR_MIN_LEN`] / 4 elements.
fn rows_per_task(rows: usize, row_len: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let by_balance = rows.div_ceil(4 * threads);
    let by_size = (PAR_MIN_LEN / 4).div_ceil(row_len);
    by_balance.max(by_size).max(1)
}

/// Whether a buffer of `len` elements is worth splitting.
pub(crate) fn worth_splitting(len: usize) -> bool {
    len >= PAR_MIN_LEN && rayon::current_num_threads() > 1
}

/// Calls `f` on blocks of whole rows of `x`, in parallel when `x` is large.
///
/// `x.len()` must be a multiple of `row_len` (and `row_len > 0`).
pub(crate) fn for_row_blocks(x: &mut [f32], row_len: usize, f: impl Fn(&mut [f32]) + Sync + Send) {
    if worth_splitting(x.len()) {
        let block = rows_per_task(x.len() / row_len, row_len) * row_len;
        x.par_chunks_mut(block).for_each(f);
    } else {
        f(x);
    }
}

/// Calls `f` on matching blocks of whole rows of `out` and `x`, in parallel when large.
///
/// Both lengths must be the same multiple of `row_len` (and `row_len > 0`).
pub(crate) fn for_row_blocks2(
    out: &mut [f32],
    x: &[f32],
    row_len: usize,
    f: impl Fn(&mut [f32], &[f32]) + Sync + Send,
) {
    if worth_splitting(out.len()) {
        let block = rows_per_task(out.len() / row_len, row_len) * row_len;
        out.par_chunks_mut(block)
            .zip(x.par_chunks(block))
            .for_each(|(o, i)| f(o, i));
    } else {
        f(out, x);
    }
}
