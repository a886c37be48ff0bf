//! A software model of the AMX tiles, so the driver's blocking, loads, stores and edge tiles are
//! tested on every machine, bit for bit.
//!
//! `tdpbf16ps` follows the operation in Intel's instruction reference (the TDPBF16PS entry of
//! the Software Developer's Manual), which differs from the shorter form in the intrinsics
//! guide: for each row `m` of C, two f32 partial sums per column `n`, one over the lower bf16
//! of every pair and one over the upper, each updated by a fused multiply-add in pair order
//! `k`; then `C[m][n] + (lower + upper)`. Every step rounds to nearest even, treats subnormal
//! inputs as zero (DAZ) and flushes subnormal results to zero (FTZ), raising nothing. Rows of C
//! past its configured rows and bytes past its configured width are zeroed, as are a loaded
//! tile's bytes past what the configuration reads.
//!
//! One approximation: a result is flushed when its rounding to f32 is subnormal, whereas the
//! hardware flushes when it is tiny after rounding to 24 bits with an unbounded exponent. The
//! two differ only for results within 2^-150 below the smallest normal f32.

use super::from_bf16;
use super::tile::{TILE_BYTES, TILE_ROWS, TILES, TileConfig, TileUnit};

/// Eight tile registers of 16 x 64 bytes, and the configuration that shapes them.
#[derive(Clone)]
pub(crate) struct TileModel {
    config: Option<TileConfig>,
    tiles: [[u8; TILE_ROWS * TILE_BYTES]; TILES],
}

impl Default for TileModel {
    fn default() -> Self {
        Self {
            config: None,
            tiles: [[0; TILE_ROWS * TILE_BYTES]; TILES],
        }
    }
}

/// Subnormal `x` as zero of its sign (DAZ on an input, FTZ on a result).
#[inline]
pub(crate) fn flush(x: f32) -> f32 {
    if x.is_subnormal() {
        0.0f32.copysign(x)
    } else {
        x
    }
}

/// One pair step of the partial sums: `lower += a.lo · b.lo`, `upper += a.hi · b.hi`, each a
/// fused multiply-add with DAZ and FTZ (`a` and `b` hold a pair each, lower value in the low
/// half).
#[inline]
pub(crate) fn pair_step(sums: (f32, f32), a: u32, b: u32) -> (f32, f32) {
    let half = |w: u32, hi: bool| flush(from_bf16(if hi { (w >> 16) as u16 } else { w as u16 }));
    let lower = flush(half(a, false).mul_add(half(b, false), flush(sums.0)));
    let upper = flush(half(a, true).mul_add(half(b, true), flush(sums.1)));
    (lower, upper)
}

/// The end of one instruction for one sum: `c + (lower + upper)`, each addition with DAZ and
/// FTZ.
#[inline]
pub(crate) fn fold(c: f32, sums: (f32, f32)) -> f32 {
    let pair_sum = flush(flush(sums.0) + flush(sums.1));
    flush(flush(c) + pair_sum)
}

impl TileModel {
    fn config(&self) -> &TileConfig {
        // Using a tile before `ldtilecfg` (or after `tilerelease`) faults on the hardware.
        self.config.as_ref().expect("tile used while unconfigured")
    }

    /// Rows and bytes per row of tile `t`, checked as the hardware would (it faults otherwise).
    fn shape(&self, t: u8) -> (usize, usize) {
        let cfg = self.config();
        let (rows, colsb) = (
            usize::from(cfg.rows[usize::from(t)]),
            usize::from(cfg.colsb[usize::from(t)]),
        );
        assert!(rows <= TILE_ROWS && colsb <= TILE_BYTES && colsb.is_multiple_of(4));
        assert!(rows > 0 && colsb > 0, "tile {t} is not configured");
        (rows, colsb)
    }

    fn word(&self, t: u8, row: usize, col: usize) -> u32 {
        let at = row * TILE_BYTES + 4 * col;
        u32::from_le_bytes(
            self.tiles[usize::from(t)][at..at + 4]
                .try_into()
                .expect("4 bytes"),
        )
    }
}

impl TileUnit for TileModel {
    fn configure(&mut self, cfg: &TileConfig) {
        self.config = Some(*cfg);
        self.tiles = [[0; TILE_ROWS * TILE_BYTES]; TILES];
    }

    unsafe fn load<const T: u8>(&mut self, base: *const u8, stride: usize) {
        let (rows, colsb) = self.shape(T);
        let tile = &mut self.tiles[usize::from(T)];
        tile.fill(0);
        for r in 0..rows {
            // SAFETY: the caller guarantees these `colsb` bytes of row `r` are readable.
            let src = unsafe { std::slice::from_raw_parts(base.wrapping_add(r * stride), colsb) };
            tile[r * TILE_BYTES..r * TILE_BYTES + colsb].copy_from_slice(src);
        }
    }

    fn zero<const T: u8>(&mut self) {
        self.shape(T);
        self.tiles[usize::from(T)].fill(0);
    }

    fn dpbf16ps<const C: u8, const A: u8, const B: u8>(&mut self) {
        let ((c_rows, c_colsb), (a_rows, a_colsb), (b_rows, b_colsb)) =
            (self.shape(C), self.shape(A), self.shape(B));
        // The shape checks behind the instruction's #UD.
        assert!(
            C != A && C != B && A != B,
            "tdpbf16ps needs three distinct tiles"
        );
        assert_eq!(c_rows, a_rows, "rows of C and A");
        assert_eq!(c_colsb, b_colsb, "bytes per row of C and B");
        assert_eq!(a_colsb / 4, b_rows, "pairs per row of A and rows of B");
        let mut out = [0u8; TILE_ROWS * TILE_BYTES];
        for m in 0..c_rows {
            for n in 0..c_colsb / 4 {
                let mut sums = (0.0f32, 0.0f32);
                for k in 0..a_colsb / 4 {
                    sums = pair_step(sums, self.word(A, m, k), self.word(B, k, n));
                }
                let c = fold(f32::from_bits(self.word(C, m, n)), sums);
                out[m * TILE_BYTES + 4 * n..m * TILE_BYTES + 4 * n + 4]
                    .copy_from_slice(&c.to_bits().to_le_bytes());
            }
        }
        self.tiles[usize::from(C)] = out;
    }

    unsafe fn store<const T: u8>(&mut self, base: *mut u8, stride: usize) {
        let (rows, colsb) = self.shape(T);
        for r in 0..rows {
            let src = &self.tiles[usize::from(T)][r * TILE_BYTES..r * TILE_BYTES + colsb];
            // SAFETY: the caller guarantees these `colsb` bytes of row `r` are writable by
            // this thread alone.
            unsafe {
                std::ptr::copy_nonoverlapping(src.as_ptr(), base.wrapping_add(r * stride), colsb)
            };
        }
    }

    fn release(&mut self) {
        self.config = None;
        self.tiles = [[0; TILE_ROWS * TILE_BYTES]; TILES];
    }
}
