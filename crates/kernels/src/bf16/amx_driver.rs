//! The AMX product, written once over [`TileUnit`]: tile configuration, blocking, loads, the
//! accumulator staging and the store into the output.
//!
//! Operands are packed so that every tile is full (16 rows of 64 bytes) and one configuration
//! serves every call:
//! - B is a weight panel ([`PANEL`] output columns, each pair of input features of the 32
//!   columns side by side as 32-bit words). 16 pair-steps of 16 of its columns are exactly a
//!   B tile in the VNNI layout `tdpbf16ps` reads: 16 rows of 64 bytes at a row stride of 128
//!   bytes, the right half starting 64 bytes in. Panels hold a multiple of 16 pair-steps, the
//!   steps past K zero, and N is padded to whole panels with zero columns.
//! - A is the activations as rows of pairs at a stride of the same padded step count, the
//!   pairs past K zero, rows padded to a multiple of 16 (stale rows only feed sums that are
//!   never stored).
//!
//! A row group of 32 rows and a panel make a 32 x 32 block in four accumulator tiles (C0-C3),
//! fed per 16 pair-steps by two A tiles (A4, A5: upper and lower 16 rows) and two B tiles (B6,
//! B7: left and right 16 columns). A group of 16 rows or fewer (the last one) runs the upper
//! half only. Per panel, every block of at most [`MAX_BLOCK_STEPS`] pair-steps runs over every
//! row group, so the panel's block (at most 32 KiB) stays in L1 while the activations stream
//! from L2; between blocks the accumulators wait in a per-thread buffer, stored and reloaded
//! exactly, so a sum is accumulated in one unbroken order over K. Once a panel is done its sums go to the output
//! with the bias, the column mask of a range starting or ending inside a panel, and the
//! accumulate-or-overwrite choice.
//!
//! The tile configuration is per thread state: each call configures on entry and releases on
//! exit, on whichever rayon worker runs it. A released thread carries no tile state through
//! context switches, and code that shares the worker later never sees our configuration.

use std::cell::RefCell;
use std::ops::Range;

use super::pack::AlignedWords;
use super::tile::{TILE_BYTES, TILE_ROWS, TileConfig, TileUnit};
use super::{Bf16Kernel, PANEL};
use crate::MatRef;
use crate::simd::{Isa, SimdKernel, dispatch};

/// Pair-steps per tile: 16 pairs (32 bf16 values) fill a 64-byte A row.
pub(crate) const STEP_PAIRS: usize = TILE_BYTES / 4;
/// Rows per row group: two A tiles.
pub(crate) const GROUP_ROWS: usize = 2 * TILE_ROWS;
/// Most pair-steps per cache block: a panel's block is then 32 KiB, which stays in a 48 KiB
/// L1 (Sapphire Rapids and later) beside the activation tiles streaming through.
const MAX_BLOCK_STEPS: usize = 256;
/// Bytes per row of a panel, of a staged accumulator block and of an output panel row.
const PANEL_BYTES: usize = PANEL * 4;

thread_local! {
    /// Each thread's staged accumulators (f32 bits), reused across calls.
    static ACC: RefCell<AlignedWords> = RefCell::new(AlignedWords::default());
}

/// The pair-steps of `features` input features padded for the tiles: a multiple of 16.
pub(crate) fn padded_steps(features: usize) -> usize {
    features.div_ceil(2).next_multiple_of(STEP_PAIRS)
}

/// A product's packed operands.
pub(crate) struct Packed<'a> {
    /// Activation rows of pairs at a stride of `steps` words, at least `rows` of the output
    /// rounded up to a multiple of 16; pairs past K zero.
    pub(crate) a: &'a [u32],
    /// Panels of `steps` pair-steps of [`PANEL`] words; steps past K zero.
    pub(crate) b: &'a [u32],
    /// Pair-steps per panel and per activation row, a multiple of [`STEP_PAIRS`].
    pub(crate) steps: usize,
}

/// Where a product's sums go: `rows x cols` f32 at `c` (row stride `ldc`), panel column `j`
/// of panel `p` landing in output column `col0 + 32 p + j` when that is inside `0..cols`.
pub(crate) struct Dest<'a> {
    /// Element (0, 0) of the output.
    pub(crate) c: *mut f32,
    /// Distance between output rows, in elements.
    pub(crate) ldc: usize,
    /// Output rows.
    pub(crate) rows: usize,
    /// Output columns.
    pub(crate) cols: usize,
    /// Output column of panel 0's column 0 (negative when the range starts inside a panel).
    pub(crate) col0: isize,
    /// Bias per output column (`cols` entries).
    pub(crate) bias: Option<&'a [f32]>,
    /// `c = bias + sum` rather than `c += bias + sum`.
    pub(crate) overwrite: bool,
}

/// Runs the product for `panels` on the tile unit `kernel` names.
///
/// # Safety
/// `kernel` must be a tile kernel this process may run; `ops` must be laid out as
/// [`Packed`] says with every panel in `panels` present; `dest` must be valid for reads and
/// writes of its `rows x cols` elements by this thread alone.
pub(crate) unsafe fn product_on(
    kernel: Bf16Kernel,
    ops: &Packed<'_>,
    panels: Range<usize>,
    dest: &Dest<'_>,
) {
    ACC.with_borrow_mut(|acc| {
        let acc = acc.resize(dest.rows.div_ceil(GROUP_ROWS) * GROUP_ROWS * PANEL);
        match kernel {
            #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
            Bf16Kernel::Amx => {
                if let Some(mut tiles) = super::amx::AmxTiles::new() {
                    // SAFETY: forwarded contract.
                    unsafe { product(&mut tiles, ops, panels, dest, acc) };
                    return;
                }
            }
            #[cfg(test)]
            Bf16Kernel::AmxModel => {
                let mut model = super::tile_model::TileModel::default();
                // SAFETY: forwarded contract.
                unsafe { product(&mut model, ops, panels, dest, acc) };
                return;
            }
            _ => {}
        }
        unreachable!("{kernel:?} is not a tile kernel this process may run");
    });
}

/// The product on `unit`, staging accumulators in `acc` (32 x 32 words per row group).
///
/// # Safety
/// As for [`product_on`], with `unit` usable on this thread.
pub(crate) unsafe fn product<U: TileUnit>(
    unit: &mut U,
    ops: &Packed<'_>,
    panels: Range<usize>,
    dest: &Dest<'_>,
    acc: &mut [u32],
) {
    let steps = ops.steps;
    let groups = dest.rows.div_ceil(GROUP_ROWS);
    assert!(steps.is_multiple_of(STEP_PAIRS) && acc.len() >= groups * GROUP_ROWS * PANEL);
    assert!(ops.a.len() >= dest.rows.next_multiple_of(TILE_ROWS) * steps);
    assert!(ops.b.len() >= panels.end * steps * PANEL);
    if dest.rows == 0 || panels.is_empty() {
        return;
    }
    let a_stride = steps * 4;
    let acc_ptr = acc.as_mut_ptr().cast::<u8>();
    unit.configure(&TileConfig::FULL);
    for panel in panels {
        let b = ops.b[panel * steps * PANEL..].as_ptr().cast::<u8>();
        for Range { start: block, end } in k_blocks(steps) {
            for g in 0..groups {
                let both = dest.rows - g * GROUP_ROWS > TILE_ROWS;
                let c = acc_ptr.wrapping_add(g * GROUP_ROWS * PANEL_BYTES);
                let c_low = c.wrapping_add(TILE_ROWS * PANEL_BYTES);
                let a = ops.a[g * GROUP_ROWS * steps..].as_ptr().cast::<u8>();
                let a_low = a.wrapping_add(TILE_ROWS * a_stride);
                // SAFETY: every tile access below stays inside `acc` (the group's 32 x 32
                // words), `ops.a` (rows up to the group's, padded to 16, of `steps` words; the
                // lower tile only when the group has more than 16 rows) and `ops.b` (this
                // panel's `steps` x 32 words), as the asserts above check.
                unsafe {
                    if block == 0 {
                        unit.zero::<0>();
                        unit.zero::<1>();
                        if both {
                            unit.zero::<2>();
                            unit.zero::<3>();
                        }
                    } else {
                        unit.load::<0>(c, PANEL_BYTES);
                        unit.load::<1>(c.wrapping_add(TILE_BYTES), PANEL_BYTES);
                        if both {
                            unit.load::<2>(c_low, PANEL_BYTES);
                            unit.load::<3>(c_low.wrapping_add(TILE_BYTES), PANEL_BYTES);
                        }
                    }
                    for s in (block..end).step_by(STEP_PAIRS) {
                        let b_step = b.wrapping_add(s * PANEL_BYTES);
                        unit.load::<4>(a.wrapping_add(4 * s), a_stride);
                        unit.load::<6>(b_step, PANEL_BYTES);
                        unit.dpbf16ps::<0, 4, 6>();
                        unit.load::<7>(b_step.wrapping_add(TILE_BYTES), PANEL_BYTES);
                        unit.dpbf16ps::<1, 4, 7>();
                        if both {
                            unit.load::<5>(a_low.wrapping_add(4 * s), a_stride);
                            unit.dpbf16ps::<2, 5, 6>();
                            unit.dpbf16ps::<3, 5, 7>();
                        }
                    }
                    unit.store::<0>(c, PANEL_BYTES);
                    unit.store::<1>(c.wrapping_add(TILE_BYTES), PANEL_BYTES);
                    if both {
                        unit.store::<2>(c_low, PANEL_BYTES);
                        unit.store::<3>(c_low.wrapping_add(TILE_BYTES), PANEL_BYTES);
                    }
                }
            }
        }
        let first = dest.col0 + (panel * PANEL) as isize;
        let j0 = (-first).clamp(0, PANEL as isize) as usize;
        let j1 = (dest.cols as isize - first).clamp(j0 as isize, PANEL as isize) as usize;
        if j0 < j1 {
            let out_col = (first + j0 as isize) as usize;
            let epilogue = Epilogue {
                acc,
                rows: dest.rows,
                lanes: j0..j1,
                // Output column `out_col`; rows follow at `ldc`.
                c: dest.c.wrapping_add(out_col),
                ldc: dest.ldc,
                bias: dest.bias.map(|b| &b[out_col..out_col + (j1 - j0)]),
                overwrite: dest.overwrite,
            };
            dispatch(Isa::detected(), epilogue);
        }
    }
    unit.release();
}

/// The cache blocks of `steps` pair-steps (a multiple of 16): as few as keep each block
/// within [`MAX_BLOCK_STEPS`], of even length in whole tile steps. Between blocks every
/// accumulator tile goes to memory and back, so a short last block (64 steps after 128 at
/// DeiT-S's 384 features) would pay that round trip for little work; DeiT-S's 384 and 1536
/// features make one block of 192 and three of 256.
fn k_blocks(steps: usize) -> impl Iterator<Item = Range<usize>> {
    let blocks = steps.div_ceil(MAX_BLOCK_STEPS).max(1);
    let len = steps
        .div_ceil(blocks)
        .next_multiple_of(STEP_PAIRS)
        .max(STEP_PAIRS);
    (0..steps)
        .step_by(len)
        .map(move |start| start..(start + len).min(steps))
}

/// One panel's staged sums into the output: `c = base + (sum + bias)` for panel columns
/// `lanes` of every row, `base` the old value or zero (as the other kernels round it).
struct Epilogue<'a> {
    acc: &'a [u32],
    rows: usize,
    lanes: Range<usize>,
    c: *mut f32,
    ldc: usize,
    bias: Option<&'a [f32]>,
    overwrite: bool,
}

impl SimdKernel for Epilogue<'_> {
    type Output = ();

    #[inline(always)]
    fn run<const FMA: bool>(self) {
        let width = self.lanes.len();
        for r in 0..self.rows {
            let sums = &self.acc[r * PANEL + self.lanes.start..r * PANEL + self.lanes.end];
            // SAFETY: row `r < rows` at the output columns of `lanes`, all inside the
            // caller's output and written by this thread alone (`product`'s contract).
            let out = unsafe { std::slice::from_raw_parts_mut(self.c.add(r * self.ldc), width) };
            match (self.bias, self.overwrite) {
                (Some(bias), true) => {
                    for ((y, &s), &b) in out.iter_mut().zip(sums).zip(bias) {
                        *y = 0.0 + (f32::from_bits(s) + b);
                    }
                }
                (Some(bias), false) => {
                    for ((y, &s), &b) in out.iter_mut().zip(sums).zip(bias) {
                        *y += f32::from_bits(s) + b;
                    }
                }
                (None, true) => {
                    for (y, &s) in out.iter_mut().zip(sums) {
                        *y = 0.0 + (f32::from_bits(s) + 0.0);
                    }
                }
                (None, false) => {
                    for (y, &s) in out.iter_mut().zip(sums) {
                        *y += f32::from_bits(s) + 0.0;
                    }
                }
            }
        }
    }
}

/// The rows of `m`, scaled and rounded, as rows of pairs at stride `steps` in `dst`, the pairs
/// past `m.cols` zero and the rows up to the next multiple of 16 zero: the A operand of
/// [`product`]. `conversion` is the kernel whose rounding packs them.
pub(crate) fn pack_a(
    conversion: Bf16Kernel,
    dst: &mut [u32],
    steps: usize,
    m: MatRef<'_>,
    scale: f32,
) {
    let pairs = m.cols.div_ceil(2);
    super::attention::convert_rows(conversion, dst, steps, m, scale);
    zero_pads(dst, steps, m.rows, pairs);
    let padded = m.rows.next_multiple_of(TILE_ROWS);
    dst[m.rows * steps..padded * steps].fill(0);
}

/// Zeroes words `used..stride` of each of the first `rows` rows of `words` (row stride
/// `stride`): the padding of activation rows, or of panels (a panel is a "row" of
/// `stride * PANEL` words).
pub(crate) fn zero_pads(words: &mut [u32], stride: usize, rows: usize, used: usize) {
    if used < stride {
        for row in words.chunks_exact_mut(stride).take(rows) {
            row[used..].fill(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k_blocks_are_even_whole_tile_steps_within_the_limit() {
        let ends = |steps| {
            k_blocks(steps)
                .map(|b| (b.start, b.end))
                .collect::<Vec<_>>()
        };
        assert_eq!(ends(16), [(0, 16)]);
        assert_eq!(ends(192), [(0, 192)]);
        assert_eq!(ends(256), [(0, 256)]);
        assert_eq!(ends(272), [(0, 144), (144, 272)]);
        assert_eq!(ends(384), [(0, 192), (192, 384)]);
        assert_eq!(ends(768), [(0, 256), (256, 512), (512, 768)]);
        let blocks = |steps| k_blocks(steps).collect::<Vec<_>>();
        for steps in (16..=2048).step_by(16) {
            let blocks = blocks(steps);
            assert_eq!(blocks.len(), steps.div_ceil(MAX_BLOCK_STEPS), "{steps}");
            assert_eq!(blocks[0].start, 0);
            assert_eq!(blocks.last().map(|b| b.end), Some(steps));
            for pair in blocks.windows(2) {
                assert_eq!(pair[0].end, pair[1].start);
                assert!(pair[0].len() >= pair[1].len());
            }
            for b in &blocks {
                assert!(b.len() <= MAX_BLOCK_STEPS && b.start.is_multiple_of(STEP_PAIRS));
                assert!(b.len().is_multiple_of(STEP_PAIRS) && !b.is_empty());
            }
        }
    }
}
