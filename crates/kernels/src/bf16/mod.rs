//! `linear` in bfloat16: weights and activations rounded to bf16, products accumulated in f32.
//!
//! The weight is converted and packed once ([`PackedBf16`]); each call converts the
//! activations while packing them. Inputs and outputs stay f32, so a model switches precision
//! per layer without touching the rest of its maths.
//!
//! Layout, chosen for AVX-512 BF16's `vdpbf16ps`, which multiplies 16 pairs of adjacent bf16
//! values and adds both products of a pair into one f32 lane:
//! - the weight is cut into panels of [`PANEL`] output columns (N padded with zero columns);
//!   within a panel, for each pair of input features `(2p, 2p + 1)`, the 32 columns' pairs lie
//!   side by side as 32-bit words (the lower feature in the low half), so one pair-step of a
//!   panel is two 64-byte vector loads;
//! - activations are packed per block of [`MR`] rows and [`KC`] features as one row of
//!   pairs per token, so the micro-kernel broadcasts one 32-bit pair per row and step.
//!
//! Blocking (Goto's scheme with the weight pre-packed): a task owns [`MC`] rows and a range of
//! panels; for each block of `KC` features it runs every panel over every group of `MR` rows,
//! so a panel's `KC x 32` slice (16 KiB) stays in L1 while the `MC x KC` activation block
//! (72 KiB) stays in L2. Tasks run on rayon's current pool, one level deep.
//!
//! The AVX-512 BF16 micro-kernel keeps a 12 x 32 tile in 24 registers. Without the feature, a
//! portable kernel does the same sums in plain f32 (both products of a pair are exact in f32,
//! so only the accumulation order can differ). Rounding from f32 is round-to-nearest-even in
//! software for both kernels; NaN stays NaN. The hardware treats bf16 subnormals (below
//! 1.2e-38) as zero, the portable kernel does not.
//!
//! On CPUs with AMX (Sapphire Rapids and later) the products run on the tile unit instead:
//! `amx_driver` for the blocking and `amx` for the instructions, chosen once at run time
//! (`select`) when the CPU has the instructions and Linux grants tile data, else the next
//! kernel down. The weight panels above are already the tiles' B layout; they only carry their
//! pair-steps padded with zeros to a multiple of 16.
//!
//! One file for the packed layout, the blocking and the kernel choice on purpose: all three
//! assume the same panel and pair-step layout, and drift between them would be silent.

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod amx;
mod amx_driver;
#[cfg(test)]
mod amx_tests;
pub(crate) mod attention;
mod pack;
mod select;
#[cfg(test)]
mod tests;
mod tile;
// The start-up check of the CPU's tiles runs the model beside them: needed in every build
// that can run AMX, and in the tests.
#[cfg_attr(
    not(all(target_arch = "x86_64", target_os = "linux")),
    allow(dead_code)
)]
mod tile_check;
#[cfg_attr(
    not(all(target_arch = "x86_64", target_os = "linux")),
    allow(dead_code)
)]
mod tile_model;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::cell::RefCell;
use std::ops::Range;
use std::sync::OnceLock;

use crate::gemm::check_linear_buffers;
use crate::tiles::{OutPtr, Tiling, for_each_tile};
use crate::{KernelError, MatRef};
pub use pack::PackedBf16;
use pack::{AlignedWords, pack_rows};
pub use select::KERNEL_ENV;

/// Output columns per weight panel (two 16-lane f32 vectors).
pub const PANEL: usize = 32;
/// Rows per micro-kernel tile: 12 x 2 accumulators leave room for two weight vectors and one
/// broadcast in the 32 vector registers.
pub(crate) const MR: usize = 12;
/// Input features per cache block (even, so pairs never straddle two blocks).
pub(crate) const KC: usize = 256;
/// Feature pairs per cache block: the row stride of a packed activation block.
pub(crate) const KCP: usize = KC / 2;
/// Rows per task and per packed activation block.
pub(crate) const MC: usize = 12 * MR;

/// Work (M·N·K) below which a call stays on the calling thread: as for the packed f32 GEMM,
/// so that an idle layer's projections of 25 to 138 rows at batch 1 use both threads.
const PAR_MIN_WORK: usize = 1 << 20;

/// Rounds `x` to the nearest bf16 (ties to even), as the raw 16 bits; NaN stays a (quiet) NaN.
#[inline(always)]
pub fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = bits.wrapping_add(0x7FFF + ((bits >> 16) & 1)) >> 16;
    if x.is_nan() {
        ((bits >> 16) | 0x40) as u16
    } else {
        rounded as u16
    }
}

/// The f32 value of a bf16 given as raw bits (exact).
#[inline(always)]
pub fn from_bf16(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// Which micro-kernel runs the products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bf16Kernel {
    /// Plain f32 arithmetic on the bf16 values.
    Portable,
    /// `vdpbf16ps` on 512-bit registers.
    Avx512Bf16,
    /// `tdpbf16ps` on AMX tiles.
    Amx,
    /// The AMX driver on the software model of the tiles (tests only).
    #[cfg(test)]
    AmxModel,
}

impl Bf16Kernel {
    /// The kernel every product runs: the fastest this process may use, or the one
    /// [`KERNEL_ENV`](select::KERNEL_ENV) names if available; chosen once.
    pub(crate) fn detected() -> Self {
        static CHOSEN: OnceLock<Bf16Kernel> = OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let requested = std::env::var(select::KERNEL_ENV).ok();
            let (kernel, warning) = select::choose(requested.as_deref(), Self::is_supported);
            if let Some(warning) = warning {
                eprintln!("warning: {warning}");
            }
            // Tiles that compute wrong sums are a fault worth reporting, not a quiet fallback.
            #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
            if let support @ select::AmxSupport::FailedCheck(_) = amx::support()
                && let Some(text) = support.describe()
            {
                eprintln!("warning: {text}; using {}", kernel.name());
            }
            kernel
        })
    }

    /// Whether this process can run `self` (for AMX: the CPU has it and the OS granted it).
    pub(crate) fn is_supported(self) -> bool {
        match self {
            Self::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Self::Avx512Bf16 => {
                is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Self::Avx512Bf16 => false,
            #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
            Self::Amx => amx::support().usable(),
            #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
            Self::Amx => false,
            #[cfg(test)]
            Self::AmxModel => true,
        }
    }

    /// `self` if this process can run it, else the next kernel down that it can.
    pub(crate) fn usable(self) -> Self {
        match self {
            _ if self.is_supported() => self,
            Self::Amx => Self::Avx512Bf16.usable(),
            _ => Self::Portable,
        }
    }

    /// Whether the products run on (real or modelled) AMX tiles.
    pub(crate) fn is_tiles(self) -> bool {
        match self {
            Self::Amx => true,
            #[cfg(test)]
            Self::AmxModel => true,
            _ => false,
        }
    }

    /// The kernel whose rounding packs the operands: the tile kernels round with AVX-512 BF16
    /// where the CPU has it (every AMX CPU does), as that kernel does.
    pub(crate) fn conversion(self) -> Self {
        if self.is_tiles() {
            Self::Avx512Bf16.usable()
        } else {
            self
        }
    }

    /// The name [`bf16_kernel_name`] reports.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Portable => "portable",
            Self::Avx512Bf16 => "avx512-bf16",
            Self::Amx => "amx",
            #[cfg(test)]
            Self::AmxModel => "amx-model",
        }
    }
}

/// Whether bf16 products run on hardware bf16 instructions (AMX or AVX-512 BF16); otherwise
/// [`linear_bf16`] runs a portable kernel with the same rounding.
pub fn bf16_hardware() -> bool {
    Bf16Kernel::detected() != Bf16Kernel::Portable
}

/// The bf16 kernel in use: `"amx"`, `"avx512-bf16"` or `"portable"` (see `docs/bf16.md`;
/// `IDLEVIT_BF16_KERNEL` overrides the choice).
pub fn bf16_kernel_name() -> &'static str {
    Bf16Kernel::detected().name()
}

/// On a CPU with AMX, what became of it: the start-up check of the tiles against the software
/// model (sums compared, how many differ from the model in their bits, the worst error as a
/// fraction of the accumulation bound), or why the tiles are not used. `None` without AMX.
pub fn amx_status() -> Option<String> {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        amx::support().describe()
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    None
}

/// Whether bf16 should run faster than f32 on this CPU with the kernel in use: true with AMX,
/// and with AVX-512 BF16 on AMD; false otherwise (see `select::expected_faster_than_f32`).
pub fn bf16_expected_faster_than_f32() -> bool {
    select::expected_faster_than_f32(Bf16Kernel::detected(), select::vendor())
}

/// `y[M,N] = bf16(x)[M,K] · bf16(w)[N,K]^T + bias[N]` with f32 accumulation; `x` and `y`
/// contiguous row-major f32, `w` packed by [`PackedBf16::pack`].
pub fn linear_bf16(
    y: &mut [f32],
    x: &[f32],
    w: &PackedBf16,
    bias: Option<&[f32]>,
    m: usize,
) -> Result<(), KernelError> {
    linear_bf16_columns(y, x, w, 0..w.out_features(), bias, m)
}

/// [`linear_bf16`] for output features `cols` of the packed weight only (a slice of its rows,
/// such as the key third of a fused qkv projection): `y` is `M x cols.len()` and `bias`, if
/// any, has `cols.len()` entries.
pub fn linear_bf16_columns(
    y: &mut [f32],
    x: &[f32],
    w: &PackedBf16,
    cols: Range<usize>,
    bias: Option<&[f32]>,
    m: usize,
) -> Result<(), KernelError> {
    bf16_checked(y, x, w, cols, bias, m, false)
}

/// `y += bf16(x) · bf16(w[cols])^T + bias`: [`linear_bf16_columns`] added onto what `y`
/// holds, such as a projection closing a residual, with no temporary for the product.
pub fn linear_bf16_accumulate(
    y: &mut [f32],
    x: &[f32],
    w: &PackedBf16,
    cols: Range<usize>,
    bias: Option<&[f32]>,
    m: usize,
) -> Result<(), KernelError> {
    bf16_checked(y, x, w, cols, bias, m, true)
}

/// Checks a call's buffers and column range, then runs it on the pool when it is large.
fn bf16_checked(
    y: &mut [f32],
    x: &[f32],
    w: &PackedBf16,
    cols: Range<usize>,
    bias: Option<&[f32]>,
    m: usize,
    accumulate: bool,
) -> Result<(), KernelError> {
    let k = w.in_features();
    if cols.start > cols.end || cols.end > w.out_features() {
        return Err(KernelError::BufferLength {
            op: "linear_bf16",
            operand: "column range end",
            expected: w.out_features(),
            found: cols.end.max(cols.start),
        });
    }
    let n = cols.len();
    check_linear_buffers("linear_bf16", y, x, bias, m, k, n)?;
    let threads = if m.saturating_mul(n).saturating_mul(k) >= PAR_MIN_WORK {
        rayon::current_num_threads()
    } else {
        1
    };
    let call = Bf16Call {
        cols,
        bias,
        m,
        accumulate,
    };
    run(Bf16Kernel::detected(), threads, y, x, w, call);
    Ok(())
}

/// What a product computes besides its operands: which weight rows, the bias, how many
/// activation rows, and whether it adds onto the output instead of overwriting it.
#[derive(Clone, Debug)]
pub(crate) struct Bf16Call<'a> {
    /// Output features (rows of the packed weight).
    pub(crate) cols: Range<usize>,
    /// Bias, `cols.len()` entries.
    pub(crate) bias: Option<&'a [f32]>,
    /// Activation rows.
    pub(crate) m: usize,
    /// `y += ...` instead of `y = ...`.
    pub(crate) accumulate: bool,
}

/// One call's fixed operands, shared by its tasks.
struct Call<'a> {
    kernel: Bf16Kernel,
    x: &'a [f32],
    w: &'a PackedBf16,
    cols: Range<usize>,
    bias: Option<&'a [f32]>,
    y: OutPtr,
    accumulate: bool,
}

/// Runs a checked call on up to `threads` tasks of rayon's current pool.
pub(crate) fn run(
    kernel: Bf16Kernel,
    threads: usize,
    y: &mut [f32],
    x: &[f32],
    w: &PackedBf16,
    call: Bf16Call<'_>,
) {
    let Bf16Call {
        cols,
        bias,
        m,
        accumulate,
    } = call;
    let n = cols.len();
    if m == 0 || n == 0 {
        return;
    }
    if w.in_features() == 0 {
        for row in y.chunks_exact_mut(n) {
            for (j, v) in row.iter_mut().enumerate() {
                let b = bias.map_or(0.0, |b| b[j]);
                *v = if accumulate { *v + b } else { b };
            }
        }
        return;
    }
    let kernel = kernel.usable();
    let call = Call {
        kernel,
        x,
        w,
        bias,
        y: OutPtr(y.as_mut_ptr()),
        cols: cols.clone(),
        accumulate,
    };
    let first_panel = cols.start / PANEL;
    let panels = cols.end.div_ceil(PANEL) - first_panel;
    let row_blocks = m.div_ceil(MC);
    // Enough tasks for every thread to have two; cut columns only when rows run short. At two
    // row blocks or fewer (a batch of one image: 197 rows are a block of 144 and one of 53)
    // blocks of unequal height would leave one thread idle, so every task takes all the rows
    // and one even range of panels.
    let (row_block, col_chunks) = if threads > 1 && row_blocks <= 2 {
        (m, threads.min(panels))
    } else if threads <= 1 || row_blocks >= 2 * threads {
        (MC, 1)
    } else {
        (MC, (2 * threads).div_ceil(row_blocks).min(panels))
    };
    let tiling = Tiling {
        rows: m,
        row_block,
        first_panel,
        panels,
        col_chunks,
    };
    for_each_tile(threads, tiling, |rows, panels| call.block(rows, panels));
}

thread_local! {
    /// Each worker's packed activation block, reused across calls.
    static A_BLOCK: RefCell<AlignedWords> = RefCell::new(AlignedWords::default());
}

impl Call<'_> {
    /// Computes rows `rows` of the output for weight panels `panels`.
    fn block(&self, rows: Range<usize>, panels: Range<usize>) {
        if self.kernel.is_tiles() {
            self.block_tiles(rows, panels);
            return;
        }
        let k = self.w.in_features();
        let k_blocks = k.div_ceil(KC);
        A_BLOCK.with_borrow_mut(|a| {
            let row_groups = rows.len().div_ceil(MR);
            let a = a.resize(row_groups * k_blocks * MR * KCP);
            pack_rows(self.kernel, a, self.x, k, rows.clone());
            for kb in 0..k_blocks {
                let pairs = (k - kb * KC).min(KC).div_ceil(2);
                for panel in panels.clone() {
                    let b = self.w.panel(panel, kb * KCP, pairs);
                    for g in 0..row_groups {
                        let at = (g * k_blocks + kb) * MR * KCP;
                        let tile_rows =
                            (rows.start + g * MR)..(rows.start + g * MR + MR).min(rows.end);
                        self.tile(&a[at..at + MR * KCP], b, pairs, tile_rows, panel, kb == 0);
                    }
                }
            }
        });
    }

    /// [`block`](Self::block) on the tiles: the rows packed as whole tiles, then the product
    /// over all of K per panel (see `amx_driver`).
    fn block_tiles(&self, rows: Range<usize>, panels: Range<usize>) {
        let (k, n) = (self.w.in_features(), self.cols.len());
        let steps = self.w.steps();
        A_BLOCK.with_borrow_mut(|a| {
            let a = a.resize(rows.len().next_multiple_of(tile::TILE_ROWS) * steps);
            let x = MatRef::row_major(&self.x[rows.start * k..rows.end * k], rows.len(), k);
            amx_driver::pack_a(self.kernel.conversion(), a, steps, x, 1.0);
            let ops = amx_driver::Packed {
                a,
                b: self.w.words(),
                steps,
            };
            let dest = amx_driver::Dest {
                c: self.y.0.wrapping_add(rows.start * n),
                ldc: n,
                rows: rows.len(),
                cols: n,
                col0: -(self.cols.start as isize),
                bias: self.bias,
                overwrite: !self.accumulate,
            };
            // SAFETY: `run` chose a tile kernel this process may run; `a` holds the task's
            // rows padded to 16 at `steps` words and the packed weight every panel; rows
            // `rows` of the checked `m x n` output belong to this task alone (see `OutPtr`).
            unsafe { amx_driver::product_on(self.kernel, &ops, panels, &dest) };
        });
    }

    /// One `MR x PANEL` tile over `pairs` feature pairs; the first feature block writes
    /// `bias + acc` (or adds it, accumulating), later ones add `acc` to what is there.
    fn tile(
        &self,
        a: &[u32],
        b: &[u32],
        pairs: usize,
        rows: Range<usize>,
        panel: usize,
        first_block: bool,
    ) {
        let n = self.cols.len();
        // Column of the output where this panel's column 0 would land.
        let out_col0 = (panel * PANEL) as isize - self.cols.start as isize;
        let cols = (0..PANEL)
            .filter(|&j| (0..n as isize).contains(&(out_col0 + j as isize)))
            .fold(0u32, |m, j| m | (1 << j));
        let c = self
            .y
            .0
            .wrapping_offset(rows.start as isize * n as isize + out_col0);
        let bias = self
            .bias
            .filter(|_| first_block)
            .map(|b| b.as_ptr().wrapping_offset(out_col0));
        let tile = Tile {
            a,
            lda: KCP,
            b,
            pairs,
            rows: rows.len(),
            cols,
        };
        // SAFETY: the set bits of `cols` are exactly the panel columns inside the checked
        // `m x n` output (and its bias), rows `rows` lie inside it, and that tile belongs to
        // this task alone (see `OutPtr`); `a` holds MR rows of KCP words.
        unsafe { tile.store(self.kernel, c, n, bias, first_block && !self.accumulate) };
    }
}

/// One micro-kernel tile's operands: `MR` rows of `pairs` activation pairs at stride `lda`
/// words (rows past `rows` are read but not stored), a panel's `pairs` steps, and the panel
/// columns to store (bit `j` of `cols`).
pub(crate) struct Tile<'a> {
    pub(crate) a: &'a [u32],
    pub(crate) lda: usize,
    pub(crate) b: &'a [u32],
    pub(crate) pairs: usize,
    pub(crate) rows: usize,
    pub(crate) cols: u32,
}

impl Tile<'_> {
    /// Stores the tile's sums at `c` (row stride `ldc`): `c = bias + sum` when `overwrite`,
    /// else `c += bias + sum` (no bias when `None`). Masked-off columns are not touched.
    ///
    /// # Safety
    /// `kernel` must run on this CPU; `a` must hold `(MR - 1) * lda + pairs` words and `b`
    /// `pairs * PANEL`; for every row `r < rows` and set bit `j` of `cols`, `c + r * ldc + j`
    /// must be valid for reads and writes by this thread alone, and `bias + j` for reads.
    pub(crate) unsafe fn store(
        &self,
        kernel: Bf16Kernel,
        c: *mut f32,
        ldc: usize,
        bias: Option<*const f32>,
        overwrite: bool,
    ) {
        debug_assert!(self.rows <= MR && self.a.len() >= (MR - 1) * self.lda + self.pairs);
        debug_assert!(self.b.len() >= self.pairs * PANEL);
        #[cfg(target_arch = "x86_64")]
        if kernel == Bf16Kernel::Avx512Bf16 {
            // SAFETY: forwarded contract.
            unsafe { x86::tile_store(self, c, ldc, bias, overwrite) };
            return;
        }
        let _ = kernel;
        let mut acc = [[0.0f32; PANEL]; MR];
        portable_acc(self.a, self.lda, self.b, self.pairs, &mut acc);
        for (r, row) in acc.iter().enumerate().take(self.rows) {
            for (j, &v) in row.iter().enumerate() {
                if self.cols & (1 << j) == 0 {
                    continue;
                }
                // SAFETY: row `r < rows` and a set column bit: inside the caller's output and
                // bias.
                unsafe {
                    let slot = c.add(r * ldc + j);
                    let bias = bias.map_or(0.0, |b| *b.add(j));
                    let base = if overwrite { 0.0 } else { *slot };
                    *slot = base + (v + bias);
                }
            }
        }
    }
}

/// The portable micro-kernel: `acc[r][j] += sum over pairs of a·b` (row `r`'s pairs at
/// `a[r * lda..]`), both products of a pair added in order (each is exact in f32).
fn portable_acc(a: &[u32], lda: usize, b: &[u32], pairs: usize, acc: &mut [[f32; PANEL]; MR]) {
    for p in 0..pairs {
        let bp = &b[p * PANEL..(p + 1) * PANEL];
        for (r, acc_row) in acc.iter_mut().enumerate() {
            let av = a[r * lda + p];
            let (a0, a1) = (from_bf16(av as u16), from_bf16((av >> 16) as u16));
            for (s, &bv) in acc_row.iter_mut().zip(bp) {
                let (b0, b1) = (from_bf16(bv as u16), from_bf16((bv >> 16) as u16));
                *s = (*s + a0 * b0) + a1 * b1;
            }
        }
    }
}
