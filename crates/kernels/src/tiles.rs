//! Running a product on a packed weight as tasks that each write a disjoint tile of the output.

use std::ops::Range;

use rayon::prelude::*;

/// The output of a checked call as a raw pointer, so tasks can write disjoint tiles of it.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);

// SAFETY: an `OutPtr` is only handed to the tasks of `for_each_tile`, which cover disjoint
// (row block, panel range) tiles of an output whose mutable borrow outlives every task; no
// element is written by two tasks.
unsafe impl Send for OutPtr {}
// SAFETY: as for `Send`.
unsafe impl Sync for OutPtr {}

/// How a product's output is cut into tasks.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tiling {
    /// Rows of the output.
    pub(crate) rows: usize,
    /// Rows per task (the last block may be shorter).
    pub(crate) row_block: usize,
    /// The first weight panel the output needs.
    pub(crate) first_panel: usize,
    /// How many panels it needs.
    pub(crate) panels: usize,
    /// Ranges the panels are cut into.
    pub(crate) col_chunks: usize,
}

/// Calls `block(rows, panels)` once per tile of `tiling`, on rayon's current pool when
/// `threads > 1` and there is more than one tile.
pub(crate) fn for_each_tile(
    threads: usize,
    tiling: Tiling,
    block: impl Fn(Range<usize>, Range<usize>) + Sync,
) {
    let Tiling {
        rows,
        row_block,
        first_panel,
        panels,
        col_chunks,
    } = tiling;
    let row_block = row_block.max(1);
    let col_chunks = col_chunks.max(1);
    let tasks = rows.div_ceil(row_block) * col_chunks;
    let task = |t: usize| {
        let (rb, cc) = (t / col_chunks, t % col_chunks);
        let p0 = first_panel + panels * cc / col_chunks;
        let p1 = first_panel + panels * (cc + 1) / col_chunks;
        let r0 = rb * row_block;
        block(r0..(r0 + row_block).min(rows), p0..p1);
    };
    if threads <= 1 || tasks == 1 {
        (0..tasks).for_each(task);
    } else {
        (0..tasks).into_par_iter().for_each(task);
    }
}
