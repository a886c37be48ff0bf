//! GEMM on strided matrices, and `linear` for timm's `(out, in)` weights.
//!
//! Two libraries do the arithmetic; which one runs is decided per call from the shape.
//! Throughput measured on the target machine (AMD EPYC Zen 4, 2 vCPUs; GFLOP/s, median of
//! repeated calls, best of three runs, `linear` layout: x row-major, B = w^T with strides
//! (1, K); single thread / two rayon threads):
//!
//! | M x K x N          | matrixmultiply | gemm, AVX2 kernels | gemm, AVX-512 kernels |
//! |--------------------|----------------|--------------------|-----------------------|
//! | 6304 x 384 x 1152  | 88 / 174       |  93 / 197          | 108 / 215             |
//! | 6304 x 384 x 384   | 90 / 180       |  95 / 197          | 107 / 216             |
//! | 6304 x 384 x 1536  | 91 / 183       |  95 / 205          | 110 / 217             |
//! | 6304 x 1536 x 384  | 92 / 189       |  96 / 191          | 106 / 209             |
//! |  197 x 384 x 1152  | 89 / 158       | 104 / 209          | 105 / 207             |
//! |  197 x 384 x 384   | 92 / 157       | 106 / 205          | 107 / 162             |
//! |  197 x 384 x 1536  | 90 / 154       | 104 / 210          | 105 / 203             |
//! |  197 x 1536 x 384  | 91 / 156       | 105 / 204          |  73 / 102             |
//! |  197 x 3072 x 768  | 80 / 131       |  92 / 185          |  63 /  84             |
//!
//! (matrixmultiply on two threads: C's rows split in two blocks, one call each; gemm:
//! `Parallelism::Rayon(2)`.) The AVX-512 kernels (gemm's `x86-v4` feature, detected at run
//! time) win everywhere except small M against a weight whose row stride is a multiple of 512
//! floats (K = 1024, 1536, 3072): there gemm reads the unpacked weight with 4 KiB-aliased
//! strides and drops to 60-70% (a weight stored with its rows padded by 16 floats runs at 104
//! again, see [`linear_strided`]). The two builds cannot be mixed in one binary, so: gemm with
//! AVX-512 by default, matrixmultiply split across threads for that one case. Two threads reach
//! about twice one thread here, so large calls use the whole pool.

use crate::matrix::{check_product, extent, normalized_strides};
use crate::{KernelError, MatMut, MatRef, parallel};

/// Work (M·N·K) below which a GEMM runs on the calling thread: about 150 µs of one thread's
/// time, where waking a second worker (tens of µs, more when the sibling vCPU is busy) no longer
/// dominates. Smaller products (one attention head) are better parallelised by the caller.
const PAR_MIN_WORK: usize = 1 << 24;

/// Below this many output rows, a weight with an aliasing stride goes to matrixmultiply.
const SMALL_M: usize = 512;

/// A weight stride (in floats) that is a multiple of this aliases in gemm's unpacked path.
const ALIASING_STRIDE: usize = 512;

/// Smallest block of rows (or columns) one matrixmultiply task gets.
const MIN_BLOCK: usize = 16;

/// The library that runs a GEMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    /// The `gemm` crate (AVX-512 kernels where the CPU has them).
    Gemm,
    /// The `matrixmultiply` crate, one call per block of C.
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
    let len = |a: usize, b: usize| a.saturating_mul(b);
    for (operand, expected, found) in [("y", len(m, n), y.len()), ("x", len(m, k), x.len())] {
        if expected != found {
            return Err(KernelError::BufferLength {
                op: "linear",
                operand,
                expected,
                found,
            });
        }
    }
    if let Some(bias) = bias
        && bias.len() != n
    {
        return Err(KernelError::BufferLength {
            op: "linear",
            operand: "bias",
            expected: n,
            found: bias.len(),
        });
    }
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

/// Runs a product that [`check_product`] accepted.
fn run_checked(
    backend: Backend,
    threads: usize,
    c: MatMut<'_>,
    a: MatRef<'_>,
    b: MatRef<'_>,
    alpha: f32,
    beta: f32,
) {
    if c.rows == 0 || c.cols == 0 {
        return;
    }
    if a.cols == 0 {
        scale_output(c, beta);
        return;
    }
    match backend {
        Backend::Gemm => gemm_serial_or_rayon(c, a, b, alpha, beta, threads),
        Backend::MatrixMultiply => {
            let along = if c.rows > 1 && (c.cols == 1 || c.row_stride > c.col_stride) {
                c.rows
            } else {
                c.cols
            };
            let blocks = threads.min(along / MIN_BLOCK).max(1);
            matrixmultiply_blocks(c, a, b, alpha, beta, blocks);
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

/// Splits C (and the matching rows of A or columns of B) into `blocks` parts along its outer
/// axis and runs one matrixmultiply call per part on rayon.
fn matrixmultiply_blocks(
    c: MatMut<'_>,
    a: MatRef<'_>,
    b: MatRef<'_>,
    alpha: f32,
    beta: f32,
    blocks: usize,
) {
    if blocks <= 1 {
        matrixmultiply_serial(c, a, b, alpha, beta);
        return;
    }
    let MatMut {
        data,
        rows,
        cols,
        row_stride,
        col_stride,
    } = c;
    let first = blocks / 2;
    // The overlap check guarantees the outer axis's stride exceeds the span of one row (or
    // column), so a cut at a multiple of it separates whole rows (or columns).
    if rows > 1 && (cols == 1 || row_stride > col_stride) {
        let mid = rows * first / blocks;
        let (top, bottom) = data.split_at_mut(mid * row_stride);
        let c1 = MatMut {
            data: top,
            rows: mid,
            cols,
            row_stride,
            col_stride,
        };
        let c2 = MatMut {
            data: bottom,
            rows: rows - mid,
            cols,
            row_stride,
            col_stride,
        };
        let (a1, a2) = (a.rows_range(0, mid), a.rows_range(mid, rows));
        rayon::join(
            || matrixmultiply_blocks(c1, a1, b, alpha, beta, first),
            || matrixmultiply_blocks(c2, a2, b, alpha, beta, blocks - first),
        );
    } else {
        let mid = cols * first / blocks;
        let (left, right) = data.split_at_mut(mid * col_stride);
        let c1 = MatMut {
            data: left,
            rows,
            cols: mid,
            row_stride,
            col_stride,
        };
        let c2 = MatMut {
            data: right,
            rows,
            cols: cols - mid,
            row_stride,
            col_stride,
        };
        let (b1, b2) = (b.cols_range(0, mid), b.cols_range(mid, cols));
        rayon::join(
            || matrixmultiply_blocks(c1, a, b1, alpha, beta, first),
            || matrixmultiply_blocks(c2, a, b2, alpha, beta, blocks - first),
        );
    }
}

fn matrixmultiply_serial(c: MatMut<'_>, a: MatRef<'_>, b: MatRef<'_>, alpha: f32, beta: f32) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let (ars, acs) = normalized_strides(a.rows, a.cols, a.row_stride, a.col_stride);
    let (brs, bcs) = normalized_strides(b.rows, b.cols, b.row_stride, b.col_stride);
    let (crs, ccs) = normalized_strides(c.rows, c.cols, c.row_stride, c.col_stride);
    // SAFETY: `check_product` proved that every element (i, j) of a, b and c lies inside its
    // slice and that c's elements are pairwise distinct; the blocks split off by
    // `matrixmultiply_blocks` keep both properties. Normalised strides only differ on
    // dimensions of length one, where no offset is taken. `c` is borrowed mutably, so nothing
    // else reads or writes it, and a and b are only read.
    unsafe {
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
            c.data.as_mut_ptr(),
            crs,
            ccs,
        );
    }
}

fn gemm_serial_or_rayon(
    c: MatMut<'_>,
    a: MatRef<'_>,
    b: MatRef<'_>,
    alpha: f32,
    beta: f32,
    threads: usize,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let (ars, acs) = normalized_strides(a.rows, a.cols, a.row_stride, a.col_stride);
    let (brs, bcs) = normalized_strides(b.rows, b.cols, b.row_stride, b.col_stride);
    let (crs, ccs) = normalized_strides(c.rows, c.cols, c.row_stride, c.col_stride);
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: as for `matrixmultiply_serial`: every addressed element is in bounds and c's
    // elements are distinct, so gemm's threads write disjoint memory. gemm computes
    // dst = alpha·dst + beta·lhs·rhs, hence our beta and alpha swap places; with
    // `read_dst == false` it never reads c.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.data.as_mut_ptr(),
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
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests;
