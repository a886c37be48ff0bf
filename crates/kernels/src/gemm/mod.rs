//! GEMM on strided matrices, and `linear` for timm's `(out, in)` weights.
//!
//! Two libraries do the arithmetic; which one runs is decided per call from the shape.
//! Throughput measured on the target machine (AMD EPYC Zen 4, 2 vCPUs; GFLOP/s, median of
//! repeated calls, best of three runs; `linear` layout: x row-major, B = w^T with strides
//! (1, K); one thread / two rayon threads; matrixmultiply on two threads = C's rows cut in two,
//! one call each; gemm on two threads = its own `Parallelism::Rayon(2)`):
//!
//! | M x K x N         | matrixmultiply | gemm, AVX2 kernels | gemm, AVX-512 kernels |
//! |-------------------|----------------|--------------------|-----------------------|
//! | 6304 x 384 x 1152 | 88 / 174       |  93 / 197          | 108 / 215             |
//! | 6304 x 384 x 384  | 90 / 180       |  95 / 197          | 107 / 216             |
//! | 6304 x 384 x 1536 | 91 / 183       |  95 / 205          | 110 / 217             |
//! | 6304 x 1536 x 384 | 92 / 189       |  96 / 191          | 106 / 209             |
//! | 197 x 384 x 1152  | 89 / 158       | 104 / 209          | 105 / 207             |
//! | 197 x 384 x 384   | 92 / 157       | 106 / 205          | 107 / 162             |
//! | 197 x 384 x 1536  | 90 / 154       | 104 / 210          | 105 / 203             |
//! | 197 x 1536 x 384  | 91 / 156       | 105 / 204          |  73 / 102             |
//! | 197 x 3072 x 768  | 80 / 131       |  92 / 185          |  63 /  84             |
//!
//! The AVX-512 kernels (gemm's `x86-v4` feature, detected at run time) win everywhere except
//! small M against a weight whose row stride is a multiple of 512 floats (K = 1024, 1536,
//! 3072): there gemm reads the unpacked weight with 4 KiB-aliased strides and drops to 60-70%;
//! padding the weight's rows by 16 floats brings it back to 104 ([`linear_strided`],
//! [`padded_row_stride`]). One binary cannot hold both gemm builds, so gemm runs with AVX-512,
//! and matrixmultiply takes that one case. Threads: two threads reach about twice one here, and
//! cutting C into one block per thread, each a single-threaded call, is as fast as gemm's own
//! threading at large M and faster at small M (see [`Split`]).
//!
//! What `linear` (no bias) reaches with these choices, same conditions:
//! 6304 x {384x1152, 384x384, 384x1536, 1536x384}: 109/213, 108/216, 109/216, 107/208;
//! 197 x the same: 105/212, 107/212, 105/211, 91/175 (104/200 with a padded weight). A bias
//! costs 1-5% more: it is written into y first and the product accumulates onto it.
//! Re-measure with `cargo bench -p idlevit-benches --bench gemm`.

use crate::matrix::{check_product, extent, normalized_strides};
use crate::{KernelError, MatMut, MatRef, parallel};
use rayon::prelude::*;

/// Work (M·N·K) below which a GEMM stays on the calling thread. 2^24 is about 300 µs of one
/// thread's work; waking a second worker costs tens of µs (more when the sibling vCPU is busy),
/// so splitting pays only above it. Smaller products (one attention head) are better
/// parallelised by the caller, across heads.
const PAR_MIN_WORK: usize = 1 << 24;

/// Below this many output rows, a weight with an aliasing stride goes to matrixmultiply (at
/// 197 x 1536 x 384 on two threads, cut by columns: 175 GFLOP/s against gemm's 145).
const SMALL_M: usize = 512;

/// A weight stride (in floats) that is a multiple of this aliases in gemm's unpacked path.
const ALIASING_STRIDE: usize = 512;

/// The library that runs a GEMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    /// The `gemm` crate (AVX-512 kernels where the CPU has them).
    Gemm,
    /// The `matrixmultiply` crate.
    MatrixMultiply,
}

/// `c = alpha * a·b + beta * c` on strided matrices; with `beta == 0` the old `c` is ignored
/// (even NaN), as in BLAS.
///
/// Fails without touching `c` if the shapes disagree, a view reaches past its slice, or `c`'s
/// strides make elements overlap or rows and columns interleave. Large products run on rayon's
/// current pool.
pub fn matmul(
    c: MatMut<'_>,
    a: MatRef<'_>,
    b: MatRef<'_>,
    alpha: f32,
    beta: f32,
) -> Result<(), KernelError> {
    check_product("matmul", &c, &a, &b)?;
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let threads = if m.saturating_mul(n).saturating_mul(k) >= PAR_MIN_WORK {
        rayon::current_num_threads()
    } else {
        1
    };
    run_checked(choose_backend(m, &b), threads, c, a, b, alpha, beta);
    Ok(())
}

/// [`matmul`] on the calling thread whatever the size: for callers that already run one
/// product per rayon task.
pub(crate) fn matmul_serial(
    c: MatMut<'_>,
    a: MatRef<'_>,
    b: MatRef<'_>,
    alpha: f32,
    beta: f32,
) -> Result<(), KernelError> {
    check_product("matmul", &c, &a, &b)?;
    run_checked(choose_backend(a.rows, &b), 1, c, a, b, alpha, beta);
    Ok(())
}

/// `y[M,N] = x[M,K] · w[N,K]^T + bias[N]`: `nn.Linear` with its row-major `(out, in)` weight;
/// `y` and `x` are contiguous row-major.
pub fn linear(
    y: &mut [f32],
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    m: usize,
    k: usize,
    n: usize,
) -> Result<(), KernelError> {
    let expected = n.saturating_mul(k);
    if w.len() != expected {
        return Err(KernelError::BufferLength {
            op: "linear",
            operand: "w",
            expected,
            found: w.len(),
        });
    }
    linear_strided(y, x, w, k, bias, m, k, n)
}

/// [`linear`] with a weight whose rows lie `w_row_stride` floats apart (`w` must reach element
/// `(n - 1) * w_row_stride + k - 1`).
///
/// Storing a weight with [`padded_row_stride`] keeps small-batch products on the fastest GEMM
/// path when K is a multiple of 512.
#[allow(clippy::too_many_arguments)]
pub fn linear_strided(
    y: &mut [f32],
    x: &[f32],
    w: &[f32],
    w_row_stride: usize,
    bias: Option<&[f32]>,
    m: usize,
    k: usize,
    n: usize,
) -> Result<(), KernelError> {
    check_linear_buffers("linear", y, x, bias, m, k, n)?;
    let needed = extent(n, k, w_row_stride, 1);
    if needed.is_none_or(|needed| needed > w.len()) {
        return Err(KernelError::OutOfBounds {
            op: "linear",
            operand: "w",
            rows: n,
            cols: k,
            row_stride: w_row_stride,
            col_stride: 1,
            needed: needed.unwrap_or(usize::MAX),
            found: w.len(),
        });
    }
    let a = MatRef::row_major(x, m, k);
    let b = MatRef {
        data: w,
        rows: k,
        cols: n,
        row_stride: 1,
        col_stride: w_row_stride,
    };
    let beta = match bias {
        Some(bias) if m > 0 && n > 0 => {
            parallel::for_row_blocks(y, n, |block| {
                for row in block.chunks_exact_mut(n) {
                    row.copy_from_slice(bias);
                }
            });
            1.0
        }
        _ => 0.0,
    };
    matmul(MatMut::row_major(y, m, n), a, b, 1.0, beta)
}

/// Checks that `y` is `m x n`, `x` is `m x k` and `bias` (if any) has `n` entries.
pub(crate) fn check_linear_buffers(
    op: &'static str,
    y: &[f32],
    x: &[f32],
    bias: Option<&[f32]>,
    m: usize,
    k: usize,
    n: usize,
) -> Result<(), KernelError> {
    let len = |a: usize, b: usize| a.saturating_mul(b);
    let bias = bias.map(|b| ("bias", n, b.len()));
    let checks = [("y", len(m, n), y.len()), ("x", len(m, k), x.len())];
    crate::error::check_lengths(op, checks.into_iter().chain(bias))?;
    Ok(())
}

/// A row stride for a `(N, K)` weight that avoids the aliasing described in the module docs:
/// `k` itself unless it is a multiple of 512, then `k + 16` (one 64-byte line more).
pub fn padded_row_stride(k: usize) -> usize {
    if k > 0 && k.is_multiple_of(ALIASING_STRIDE) {
        k + 16
    } else {
        k
    }
}

fn choose_backend(m: usize, b: &MatRef<'_>) -> Backend {
    let aliasing_weight =
        b.cols > 1 && b.row_stride == 1 && b.col_stride.is_multiple_of(ALIASING_STRIDE);
    if m < SMALL_M && aliasing_weight {
        Backend::MatrixMultiply
    } else {
        Backend::Gemm
    }
}

/// [`matmul`] with the backend and thread count forced, so tests reach every path.
#[cfg(test)]
pub(crate) fn matmul_using(
    backend: Backend,
    threads: usize,
    c: MatMut<'_>,
    a: MatRef<'_>,
    b: MatRef<'_>,
    alpha: f32,
    beta: f32,
) -> Result<(), KernelError> {
    check_product("matmul", &c, &a, &b)?;
    run_checked(backend, threads, c, a, b, alpha, beta);
    Ok(())
}

/// Runs a product that [`check_product`] accepted, on up to `threads` rayon tasks.
fn run_checked(
    backend: Backend,
    threads: usize,
    c: MatMut<'_>,
    a: MatRef<'_>,
    b: MatRef<'_>,
    alpha: f32,
    beta: f32,
) {
    let (m, n) = (c.rows, c.cols);
    if m == 0 || n == 0 {
        return;
    }
    if a.cols == 0 {
        scale_output(c, beta);
        return;
    }
    // From here on C is written only through `out`, until every block has finished.
    let out = Out::new(c);
    match Split::choose(m, n, threads) {
        Split::Serial => run_block(backend, out, a, b, alpha, beta),
        Split::Rows(blocks) => (0..blocks).into_par_iter().for_each(|i| {
            let (start, end) = (m * i / blocks, m * (i + 1) / blocks);
            let block = out.offset(start, 0);
            run_block(backend, block, a.rows_range(start, end), b, alpha, beta);
        }),
        Split::Cols(blocks) => (0..blocks).into_par_iter().for_each(|j| {
            let (start, end) = (n * j / blocks, n * (j + 1) / blocks);
            let block = out.offset(0, start);
            run_block(backend, block, a, b.cols_range(start, end), alpha, beta);
        }),
    }
}

/// How a product is cut into blocks of C, one single-threaded library call each.
///
/// Cutting and calling each library on one thread measured as fast as gemm's own threading at
/// large M, and faster at M = 197 (209 against 163 GFLOP/s at 197 x 384 x 384 on two
/// threads): rows when each block keeps at least [`ROW_BLOCK`] of them, columns otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Split {
    /// One call on the calling thread.
    Serial,
    /// This many blocks of consecutive rows.
    Rows(usize),
    /// This many blocks of consecutive columns.
    Cols(usize),
}

/// Rows per block below which cutting by columns is faster (394 rows on two threads: rows 214,
/// columns 209 GFLOP/s; 197 rows: rows 197, columns 209).
const ROW_BLOCK: usize = 192;

/// Fewest rows or columns a block is cut to.
const MIN_BLOCK: usize = 16;

impl Split {
    fn choose(m: usize, n: usize, threads: usize) -> Split {
        if threads <= 1 {
            Split::Serial
        } else if m >= ROW_BLOCK * threads {
            Split::Rows(threads)
        } else if n >= 4 * MIN_BLOCK * threads {
            Split::Cols(threads)
        } else if m >= 2 * MIN_BLOCK {
            Split::Rows(threads.min(m / MIN_BLOCK))
        } else if n >= 2 * MIN_BLOCK {
            Split::Cols(threads.min(n / MIN_BLOCK))
        } else {
            Split::Serial
        }
    }
}

/// C of a checked product as a base pointer and strides, so that disjoint blocks of it can be
/// written from several threads (a `&mut` slice cannot be cut into interleaved column blocks).
#[derive(Clone, Copy)]
struct Out {
    ptr: *mut f32,
    row_stride: isize,
    col_stride: isize,
}

// SAFETY: an `Out` is only created by `run_checked` from a C that `check_product` accepted,
// whose mutable borrow lasts until every block is done; the blocks handed to different threads
// cover disjoint sets of C's elements (ranges of rows, or of columns, of a layout whose
// elements are pairwise distinct), so no element is written by two threads or read by another.
unsafe impl Send for Out {}
// SAFETY: as for `Send`: shared access only ever hands out disjoint blocks.
unsafe impl Sync for Out {}

impl Out {
    fn new(c: MatMut<'_>) -> Self {
        let (row_stride, col_stride) =
            normalized_strides(c.rows, c.cols, c.row_stride, c.col_stride);
        Out {
            ptr: c.data.as_mut_ptr(),
            row_stride,
            col_stride,
        }
    }

    /// The block whose top-left element is C's (i, j); (i, j) lies inside C.
    fn offset(self, i: usize, j: usize) -> Self {
        let at = i as isize * self.row_stride + j as isize * self.col_stride;
        Out {
            ptr: self.ptr.wrapping_offset(at),
            ..self
        }
    }
}

/// `c = beta * c` (an empty inner dimension), with `beta == 0` clearing NaN too.
fn scale_output(c: MatMut<'_>, beta: f32) {
    for i in 0..c.rows {
        for j in 0..c.cols {
            let v = &mut c.data[i * c.row_stride + j * c.col_stride];
            *v = if beta == 0.0 { 0.0 } else { beta * *v };
        }
    }
}

/// One single-threaded library call computing the `a.rows x b.cols` block of C at `out`.
fn run_block(backend: Backend, out: Out, a: MatRef<'_>, b: MatRef<'_>, alpha: f32, beta: f32) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let (ars, acs) = normalized_strides(a.rows, a.cols, a.row_stride, a.col_stride);
    let (brs, bcs) = normalized_strides(b.rows, b.cols, b.row_stride, b.col_stride);
    let (crs, ccs) = (out.row_stride, out.col_stride);
    match backend {
        // SAFETY: `check_product` proved that every element (i, j) of a, b and the whole of C
        // lies inside its slice, and `a`, `b` and `out` here are sub-blocks of those views, so
        // every address the library forms is in bounds. Normalised strides differ from the
        // given ones only on dimensions of length one, where no offset is taken. This call
        // writes only its block of C, disjoint from every other block (see `Out`), and only
        // reads a and b, which are shared borrows that cannot alias C's mutable one.
        Backend::MatrixMultiply => unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                n,
                alpha,
                a.data.as_ptr(),
                ars,
                acs,
                b.data.as_ptr(),
                brs,
                bcs,
                beta,
                out.ptr,
                crs,
                ccs,
            );
        },
        // SAFETY: as for matrixmultiply above. gemm computes dst = alpha·dst + beta·lhs·rhs,
        // hence our beta and alpha swap places; with `read_dst == false` it never reads C.
        Backend::Gemm => unsafe {
            gemm::gemm(
                m,
                n,
                k,
                out.ptr,
                ccs,
                crs,
                beta != 0.0,
                a.data.as_ptr(),
                acs,
                ars,
                b.data.as_ptr(),
                bcs,
                brs,
                beta,
                alpha,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        },
    }
}

#[cfg(test)]
mod tests;
