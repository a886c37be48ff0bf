//! The tile machine the AMX driver is written against: a configuration and six operations.
//!
//! The driver (`amx_driver`) is generic over [`TileUnit`], so the one copy of its blocking,
//! loads, stores and edge handling runs both on the CPU's tiles (`amx::AmxTiles`) and, in the
//! tests, on a software model of the same instructions (`tile_model::TileModel`).

/// Tile registers of palette 1.
pub(crate) const TILES: usize = 8;
/// Rows of a full tile.
pub(crate) const TILE_ROWS: usize = 16;
/// Bytes per row of a full tile: 16 f32 sums, or 16 pairs of bf16 values.
pub(crate) const TILE_BYTES: usize = 64;

/// A tile configuration (palette 1): the rows and bytes per row of each of the eight tiles.
/// A tile with zero rows or zero bytes is unused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TileConfig {
    /// Rows of each tile (at most [`TILE_ROWS`]).
    pub(crate) rows: [u8; TILES],
    /// Bytes per row of each tile (at most [`TILE_BYTES`], a multiple of 4).
    pub(crate) colsb: [u16; TILES],
}

impl TileConfig {
    /// Every tile full: 16 rows of 64 bytes.
    pub(crate) const FULL: Self = Self {
        rows: [TILE_ROWS as u8; TILES],
        colsb: [TILE_BYTES as u16; TILES],
    };

    /// The 64-byte block `ldtilecfg` reads: palette at byte 0, start row at byte 1, bytes per
    /// row as little-endian 16-bit words from byte 16, rows from byte 48, the rest zero.
    pub(crate) fn to_bytes(self) -> [u8; 64] {
        let mut bytes = [0u8; 64];
        bytes[0] = 1;
        for t in 0..TILES {
            bytes[16 + 2 * t..18 + 2 * t].copy_from_slice(&self.colsb[t].to_le_bytes());
            bytes[48 + t] = self.rows[t];
        }
        bytes
    }
}

/// Tile operations, one per instruction the driver issues. Tile numbers are constants, as in
/// the instructions' encodings.
pub(crate) trait TileUnit {
    /// Loads `cfg` (`ldtilecfg`), which also zeroes every tile.
    fn configure(&mut self, cfg: &TileConfig);

    /// Loads tile `T` (`tileloadd`): its configured rows of its configured bytes each, row `r`
    /// from `base + r * stride`.
    ///
    /// # Safety
    /// Those bytes must be readable.
    unsafe fn load<const T: u8>(&mut self, base: *const u8, stride: usize);

    /// Zeroes tile `T` (`tilezero`).
    fn zero<const T: u8>(&mut self);

    /// `C += A · B` on bf16 pairs with f32 sums (`tdpbf16ps`); the shapes must agree (rows of
    /// C and A, bytes per row of C and B, A's pairs per row and B's rows).
    fn dpbf16ps<const C: u8, const A: u8, const B: u8>(&mut self);

    /// Stores tile `T` (`tilestored`): its configured rows and bytes, row `r` at
    /// `base + r * stride`.
    ///
    /// # Safety
    /// Those bytes must be writable, by this thread alone.
    unsafe fn store<const T: u8>(&mut self, base: *mut u8, stride: usize);

    /// Returns the tiles to their initial state (`tilerelease`).
    fn release(&mut self);
}
