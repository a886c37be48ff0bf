//! When and how the row-wise loops of this crate split across rayon's current pool.

use rayon::prelude::*;

/// Buffers shorter than this many `f32`s stay on the calling thread: waking a worker costs
/// about what one thread needs to stream this much memory (the kernels crate's threshold).
const PAR_MIN_LEN: usize = 1 << 17;

/// Elements per task: whole rows, about four tasks per thread, none below a quarter of
/// [`PAR_MIN_LEN`], or everything at once when splitting does not pay.
fn block_len(len: usize, row_len: usize) -> usize {
    let threads = rayon::current_num_threads();
    if len < PAR_MIN_LEN || threads < 2 || row_len == 0 {
        return len.max(row_len).max(1);
    }
    let rows = len / row_len;
    let by_balance = rows.div_ceil(4 * threads);
    let by_size = (PAR_MIN_LEN / 4).div_ceil(row_len);
    by_balance.max(by_size).max(1) * row_len
}

/// Calls `f(start, block)` on blocks of whole rows of `out`, where `start` is the index of the
/// block's first element in `out`; returns the results in block order. Parallel when large.
pub fn map_row_blocks<T: Send>(
    out: &mut [f32],
    row_len: usize,
    f: impl Fn(usize, &mut [f32]) -> T + Sync + Send,
) -> Vec<T> {
    let block = block_len(out.len(), row_len);
    if block >= out.len() {
        return vec![f(0, out)];
    }
    out.par_chunks_mut(block)
        .enumerate()
        .map(|(i, chunk)| f(i * block, chunk))
        .collect()
}

/// Calls `f(start, block)` on blocks of whole rows of `out`, in parallel when large.
pub fn for_row_blocks(
    out: &mut [f32],
    row_len: usize,
    f: impl Fn(usize, &mut [f32]) + Sync + Send,
) {
    map_row_blocks(out, row_len, f);
}

/// Calls `f` on blocks of whole rows of `x` and returns the results in block order.
/// Parallel when large.
pub fn map_blocks<T: Send>(
    x: &[f32],
    row_len: usize,
    f: impl Fn(&[f32]) -> T + Sync + Send,
) -> Vec<T> {
    let block = block_len(x.len(), row_len);
    if block >= x.len() {
        return vec![f(x)];
    }
    x.par_chunks(block).map(f).collect()
}
