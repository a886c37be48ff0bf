//! `linear` on an f32 weight packed once, so no call re-packs it.
//!
//! The libraries behind [`linear`](crate::linear) pack the weight into cache-friendly panels on
//! every call. At batch 1 that packing is a tenth of DeiT-S's time in the profile (197 rows
//! reuse each packed panel too few times to hide it). Here the weight is cut into panels of
//! [`PANEL`] output columns once; within a panel, step `k` holds the 32 columns' weights for
//! input feature `k`, side by side (zero beyond N). The AVX-512 micro-kernel keeps a
//! 12 x 32 tile in 24 registers: per input feature it loads the panel's two vectors and
//! broadcasts one activation per row from the row-major input, which is read in place. On
//! CPUs with AVX2 and FMA but not AVX-512F, a kernel with half the vector width and half the
//! registers does the same per 6 x 16 half of a 6 x 32 tile (twelve ymm accumulators); the
//! layout is the same for both, and the kernel is chosen once per process.
//!
//! Blocking: a task owns a block of rows (up to [`MC`] when there are many; all of them,
//! with the panels cut into one range per thread, when there are few) and, for each block of
//! [`KC`] features, runs every panel over every group of tile rows, so a panel's `KC x 32`
//! slice (16 KiB) stays in L1 while the rows' block stays in L2. Only CPUs with AVX-512F, or
//! AVX2 and FMA, run it ([`packed_f32_available`]); elsewhere callers keep the libraries'
//! GEMM.

#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::cell::RefCell;
use std::ops::Range;
use std::sync::OnceLock;

use crate::KernelError;
use crate::gemm::check_linear_buffers;
use crate::tiles::{OutPtr, Tiling, for_each_tile};

/// Output columns per weight panel (two 16-lane vectors).
pub const PANEL: usize = 32;
/// Input features per cache block.
const KC: usize = 128;
/// Rows per task block: a multiple of both kernels' tile heights.
const MC: usize = 96;
/// Work (M·N·K) below which a call stays on the calling thread: 2^20 multiply-adds are about
/// 20 µs of one thread here, a few times what handing half the panels to a second worker
/// costs. (An idle layer at batch 1 projects 25 to 138 rows; at the libraries' threshold of
/// 2^24 most of those ran on one thread.)
const PAR_MIN_WORK: usize = 1 << 20;

/// Which micro-kernel runs the products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PackedKernel {
    /// 12 x 32 tiles (4 x 32 for a block's last rows) in 512-bit registers.
    Avx512,
    /// 6 x 32 tiles (2 x 32 for a block's last rows) in 256-bit registers, a 16-column half
    /// at a time.
    Avx2,
}

impl PackedKernel {
    /// Every kernel, fastest first.
    pub(crate) const ALL: [Self; 2] = [Self::Avx512, Self::Avx2];

    /// The fastest kernel this CPU runs, if any; detected once.
    pub(crate) fn detected() -> Option<Self> {
        static BEST: OnceLock<Option<PackedKernel>> = OnceLock::new();
        *BEST.get_or_init(|| Self::ALL.into_iter().find(|kernel| kernel.is_supported()))
    }

    /// Whether this CPU can run `self`.
    pub(crate) fn is_supported(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(not(target_arch = "x86_64"))]
            Self::Avx512 | Self::Avx2 => false,
        }
    }

    /// The instruction sets `self` needs, for [`KernelError::Unsupported`].
    fn needs(self) -> &'static str {
        match self {
            Self::Avx512 => "AVX-512F",
            Self::Avx2 => "AVX2 and FMA",
        }
    }
}

/// Whether this CPU runs a packed f32 kernel (it has AVX-512F, or AVX2 and FMA).
pub fn packed_f32_available() -> bool {
    PackedKernel::detected().is_some()
}

/// A `(N, K)` f32 weight packed once for [`linear_packed_f32`].
#[derive(Clone, Debug)]
pub struct PackedF32 {
    n: usize,
    k: usize,
    data: Vec<f32>,
    /// The micro-kernel its products run on: this CPU's best, unless a test or benchmark
    /// chose another (the layout is the same for all).
    kernel: Option<PackedKernel>,
}

impl PackedF32 {
    /// Packs a row-major `(n, k)` weight (`nn.Linear`'s `(out, in)`).
    pub fn pack(w: &[f32], n: usize, k: usize) -> Result<Self, KernelError> {
        let expected = n.saturating_mul(k);
        if w.len() != expected {
            return Err(KernelError::BufferLength {
                op: "PackedF32::pack",
                operand: "w",
                expected,
                found: w.len(),
            });
        }
        let panels = n.div_ceil(PANEL);
        let mut data = vec![0.0; panels * k * PANEL];
        for (p, panel) in data.chunks_exact_mut((k * PANEL).max(1)).enumerate() {
            for (j, row) in w
                .chunks_exact(k.max(1))
                .skip(p * PANEL)
                .take(PANEL)
                .enumerate()
            {
                for (step, &v) in row.iter().enumerate() {
                    panel[step * PANEL + j] = v;
                }
            }
        }
        Ok(Self {
            n,
            k,
            data,
            kernel: PackedKernel::detected(),
        })
    }

    /// The same weight, its products run by `kernel` (which fails if this CPU cannot).
    pub(crate) fn with_kernel(self, kernel: PackedKernel) -> Self {
        Self {
            kernel: Some(kernel),
            ..self
        }
    }

    /// The same weight, its products run by the AVX2 kernel whatever the CPU's best, so
    /// benchmarks can compare the kernels on one machine; not a stable API.
    #[doc(hidden)]
    pub fn with_avx2_kernel(self) -> Self {
        self.with_kernel(PackedKernel::Avx2)
    }

    /// Output features (N).
    pub fn out_features(&self) -> usize {
        self.n
    }

    /// Input features (K).
    pub fn in_features(&self) -> usize {
        self.k
    }

    /// Steps `k0..k0 + len` of panel `p`.
    fn panel(&self, p: usize, k0: usize, len: usize) -> &[f32] {
        let start = (p * self.k + k0) * PANEL;
        &self.data[start..start + len * PANEL]
    }
}

/// `y[M, cols] = x[M, K] · w[cols, K]^T + bias` (or, with `accumulate`, `y += ...`) for
/// output features `cols` of a packed weight; `x` and `y` contiguous row-major, `bias` (if
/// any) with `cols.len()` entries. Runs on rayon's current pool when large.
///
/// Fails if this CPU has neither AVX-512F nor AVX2 and FMA ([`packed_f32_available`]) or a
/// buffer does not fit.
#[allow(clippy::too_many_arguments)]
pub fn linear_packed_f32(
    y: &mut [f32],
    x: &[f32],
    w: &PackedF32,
    cols: Range<usize>,
    bias: Option<&[f32]>,
    m: usize,
    accumulate: bool,
) -> Result<(), KernelError> {
    let threads = parallel_threads(m, cols.len(), w.k);
    linear_packed_f32_on(threads, y, x, w, cols, bias, m, accumulate)
}

/// Tasks for an `m x n x k` product: rayon's pool when large, else the calling thread.
fn parallel_threads(m: usize, n: usize, k: usize) -> usize {
    if m.saturating_mul(n).saturating_mul(k) >= PAR_MIN_WORK {
        rayon::current_num_threads()
    } else {
        1
    }
}

/// [`linear_packed_f32`] on up to `threads` tasks (1: the calling thread only).
#[allow(clippy::too_many_arguments)]
pub(crate) fn linear_packed_f32_on(
    threads: usize,
    y: &mut [f32],
    x: &[f32],
    w: &PackedF32,
    cols: Range<usize>,
    bias: Option<&[f32]>,
    m: usize,
    accumulate: bool,
) -> Result<(), KernelError> {
    let kernel = match w.kernel {
        Some(kernel) if kernel.is_supported() => kernel,
        chosen => {
            return Err(KernelError::Unsupported {
                op: "linear_packed_f32",
                needs: chosen.map_or("AVX-512F, or AVX2 and FMA", PackedKernel::needs),
            });
        }
    };
    if cols.start > cols.end || cols.end > w.n {
        return Err(KernelError::BufferLength {
            op: "linear_packed_f32",
            operand: "column range end",
            expected: w.n,
            found: cols.end.max(cols.start),
        });
    }
    let (k, n) = (w.k, cols.len());
    check_linear_buffers("linear_packed_f32", y, x, bias, m, k, n)?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        for row in y.chunks_exact_mut(n) {
            for (j, v) in row.iter_mut().enumerate() {
                let b = bias.map_or(0.0, |b| b[j]);
                *v = if accumulate { *v + b } else { b };
            }
        }
        return Ok(());
    }
    let call = Call {
        kernel,
        x,
        w,
        bias,
        y: OutPtr(y.as_mut_ptr()),
        cols: cols.clone(),
        m,
        accumulate,
    };
    let first_panel = cols.start / PANEL;
    let panels = cols.end.div_ceil(PANEL) - first_panel;
    let (row_block, col_chunks) = split(m, panels, threads);
    let tiling = Tiling {
        rows: m,
        row_block,
        first_panel,
        panels,
        col_chunks,
    };
    for_each_tile(threads, tiling, |rows, panels| call.block(rows, panels));
    Ok(())
}

/// How a product of `m` rows over `panels` weight panels is cut into tasks for `threads`:
/// `(rows per task, panel ranges)`.
///
/// - Many rows (four blocks of [`MC`] rows per thread): blocks of `MC` rows, every panel
///   each; a block of `x` stays in cache while it meets every panel.
/// - Fewer, but at least four blocks (an idle layer's selected rows of a batch on a
///   many-core CPU): still blocks of `MC` rows, each with one range of the panels, so that
///   there are four tasks per thread. Giving every task all the rows instead would stream
///   thousands of rows through the cache once per panel.
/// - A few blocks (a batch of one image): every row in each task, the panels cut into one
///   range per thread, which balances exactly.
fn split(m: usize, panels: usize, threads: usize) -> (usize, usize) {
    let threads = threads.max(1);
    let row_blocks = m.div_ceil(MC);
    if row_blocks >= 4 * threads || threads == 1 {
        (MC, 1)
    } else if row_blocks >= 4 {
        (
            MC,
            (4 * threads).div_ceil(row_blocks).clamp(1, panels.max(1)),
        )
    } else {
        (m, threads.clamp(1, panels.max(1)))
    }
}

/// One checked call's operands, shared by its tasks.
struct Call<'a> {
    kernel: PackedKernel,
    x: &'a [f32],
    w: &'a PackedF32,
    bias: Option<&'a [f32]>,
    y: OutPtr,
    cols: Range<usize>,
    m: usize,
    accumulate: bool,
}

thread_local! {
    /// Each worker's zero-padded copy of a partial row group.
    static TAIL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

impl Call<'_> {
    /// Computes rows `rows` of the output for weight panels `panels`.
    fn block(&self, rows: Range<usize>, panels: Range<usize>) {
        // Tile heights: full tiles, and shorter ones for the last rows of a block so that
        // (say) 25 rows compute 28, not 36.
        match self.kernel {
            PackedKernel::Avx512 => self.block_in::<12, 4>(rows, panels),
            PackedKernel::Avx2 => self.block_in::<6, 2>(rows, panels),
        }
    }

    /// [`Call::block`] in tiles of `MR` rows, and `SHORT` for the last rows.
    fn block_in<const MR: usize, const SHORT: usize>(
        &self,
        rows: Range<usize>,
        panels: Range<usize>,
    ) {
        let k = self.w.k;
        let mut tail = TAIL.with(RefCell::take);
        for kb in (0..k).step_by(KC) {
            let kk = (k - kb).min(KC);
            for panel in panels.clone() {
                let b = self.w.panel(panel, kb, kk);
                for r0 in rows.clone().step_by(MR) {
                    let group = r0..(r0 + MR).min(rows.end);
                    if group.len() == MR {
                        let a = &self.x[r0 * k + kb..];
                        self.tile::<MR>(a, k, b, kk, group, panel, kb == 0);
                        continue;
                    }
                    for s0 in group.clone().step_by(SHORT) {
                        let short = s0..(s0 + SHORT).min(group.end);
                        if short.len() == SHORT {
                            let a = &self.x[s0 * k + kb..];
                            self.tile::<SHORT>(a, k, b, kk, short, panel, kb == 0);
                            continue;
                        }
                        // The kernel reads SHORT rows: the last few go to a zero-padded copy.
                        tail.clear();
                        tail.resize(SHORT * kk, 0.0);
                        for (i, row) in short.clone().enumerate() {
                            let src = &self.x[row * k + kb..row * k + kb + kk];
                            tail[i * kk..(i + 1) * kk].copy_from_slice(src);
                        }
                        self.tile::<SHORT>(&tail, kk, b, kk, short, panel, kb == 0);
                    }
                }
            }
        }
        TAIL.with(|slot| *slot.borrow_mut() = tail);
    }

    /// One `R x PANEL` tile over `kk` features: rows `a[r * lda..]`, panel steps `b`.
    #[allow(clippy::too_many_arguments)]
    fn tile<const R: usize>(
        &self,
        a: &[f32],
        lda: usize,
        b: &[f32],
        kk: usize,
        rows: Range<usize>,
        panel: usize,
        first_block: bool,
    ) {
        let n = self.cols.len();
        let out_col0 = (panel * PANEL) as isize - self.cols.start as isize;
        let valid = |j: usize| (0..n as isize).contains(&(out_col0 + j as isize));
        let cols = (0..PANEL)
            .filter(|&j| valid(j))
            .fold(0u32, |mask, j| mask | (1 << j));
        debug_assert!(rows.end <= self.m && a.len() >= (R - 1) * lda + kk);
        let c = self
            .y
            .0
            .wrapping_offset(rows.start as isize * n as isize + out_col0);
        let bias = self.bias.map(|b| b.as_ptr().wrapping_offset(out_col0));
        // The first feature block writes `bias + acc` (or adds it, accumulating); later
        // blocks add their sums.
        let overwrite = first_block && !self.accumulate;
        let with_bias = first_block;
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `linear_packed_f32_on` checked that the CPU runs `self.kernel` and that the
        // output is `m x n`; the set bits of `cols` are exactly the panel columns inside it, rows
        // `rows` lie inside it, so every element touched is in the output (and its bias), in
        // this task's tile, which no other task writes (see `OutPtr`). `a` holds R rows of
        // `kk` features at stride `lda` and `b` holds `kk` panel steps.
        unsafe {
            let ops = x86::TileIn { a, lda, b, kk };
            let out = x86::TileOut {
                c,
                ldc: n,
                rows: rows.len(),
                cols,
                bias: bias.filter(|_| with_bias),
                overwrite,
            };
            match self.kernel {
                PackedKernel::Avx512 => x86::tile::<R>(&ops, &out),
                PackedKernel::Avx2 => x86::tile_avx2::<R>(&ops, &out),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (a, lda, b, kk, c, bias, overwrite, with_bias);
    }
}
