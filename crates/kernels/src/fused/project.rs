//! Projections inside the fused kernels: onto a residual, after a layer norm, and the product
//! on whichever form of the weight a [`Proj`] holds.

use rayon::prelude::*;

use super::{
    MLP_CHUNK_ROWS, Norm, PackedWeight, Proj, Threads, chunk_rows, normalise, product, with_scratch,
};
use crate::bf16::{Bf16Call, Bf16Kernel, PackedBf16};
use crate::error::check_lengths;
use crate::packed::linear_packed_f32_on;
use crate::simd::Isa;
use crate::{KernelError, MatMut, MatRef};

/// `out = input · w^T + bias` for `(rows, in, out)` shapes already checked, on one thread or
/// on the pool.
pub(super) fn project(
    threads: Threads,
    out: &mut [f32],
    input: &[f32],
    p: &Proj<'_>,
    (rows, inputs, outputs): (usize, usize, usize),
) -> Result<(), KernelError> {
    match p.packed {
        None => {
            let beta = fill_rows(out, p.bias, 1.0);
            product(
                threads,
                MatMut::row_major(out, rows, outputs),
                MatRef::row_major(input, rows, inputs),
                MatRef::row_major(p.weight, outputs, inputs).t(),
                1.0,
                beta,
            )
        }
        Some(PackedWeight::Bf16(w)) => {
            bf16_product(threads, out, input, w, p.bias, rows, false);
            Ok(())
        }
        Some(PackedWeight::F32(w)) => {
            let (threads, cols) = (threads.count(), 0..w.out_features());
            linear_packed_f32_on(threads, out, input, w, cols, p.bias, rows, false)
        }
    }
}

/// `x += branch_scale * (input · w^T + bias)` for `(rows, in, out)` shapes already checked,
/// on one thread or on the pool: a projection closing a residual. The product accumulates
/// onto `x` where the kernel can; a scaled packed or bf16 branch goes to `spare`
/// (`rows x out`) first.
pub(super) fn project_onto(
    threads: Threads,
    x: &mut [f32],
    input: &[f32],
    (p, branch_scale): (&Proj<'_>, f32),
    (rows, inputs, outputs): (usize, usize, usize),
    spare: &mut [f32],
) -> Result<(), KernelError> {
    match p.packed {
        None => {
            if let Some(bias) = p.bias {
                for row in x.chunks_exact_mut(outputs.max(1)) {
                    for (v, b) in row.iter_mut().zip(bias) {
                        *v += branch_scale * b;
                    }
                }
            }
            product(
                threads,
                MatMut::row_major(x, rows, outputs),
                MatRef::row_major(input, rows, inputs),
                MatRef::row_major(p.weight, outputs, inputs).t(),
                branch_scale,
                1.0,
            )
        }
        Some(PackedWeight::F32(w)) if branch_scale == 1.0 => {
            linear_packed_f32_on(threads.count(), x, input, w, 0..outputs, p.bias, rows, true)
        }
        Some(PackedWeight::Bf16(w)) if branch_scale == 1.0 => {
            bf16_product(threads, x, input, w, p.bias, rows, true);
            Ok(())
        }
        _ => {
            let spare = &mut spare[..rows * outputs];
            project(threads, spare, input, p, (rows, inputs, outputs))?;
            add_scaled(x, spare, branch_scale);
            Ok(())
        }
    }
}

/// `x += branch_scale * (input · W^T + bias)` on every row of `x` (`rows x out`, row-major)
/// with `input` `rows x in`: a projection closing a residual (attention's output projection),
/// accumulated onto `x` where the kernel can, on rayon's current pool. Buffers that do not fit
/// are an error and nothing is written.
pub fn linear_residual_in_place(
    x: &mut [f32],
    input: &[f32],
    p: &Proj<'_>,
    (inputs, outputs): (usize, usize),
    branch_scale: f32,
) -> Result<(), KernelError> {
    let op = "linear_residual";
    p.check(op, ["weight", "bias"], outputs, inputs)?;
    let rows = x.len().checked_div(outputs).unwrap_or(0);
    let checks = [
        ("x", rows * outputs, x.len()),
        ("input", rows * inputs, input.len()),
    ];
    check_lengths(op, checks)?;
    if x.is_empty() {
        return Ok(());
    }
    // Only a scaled packed or bf16 branch needs the spare rows.
    let direct = p.packed.is_none() || branch_scale == 1.0;
    let spare = if direct { 0 } else { rows * outputs };
    with_scratch(spare, |spare| {
        let shape = (rows, inputs, outputs);
        project_onto(Threads::Shared, x, input, (p, branch_scale), shape, spare)
    })
}

/// `y = layer_norm(x) W^T + b` on every row of `x` (`rows x dim`, row-major) into `y`
/// (`rows x out`): a pre-norm projection (attention's qkv after `norm1`).
///
/// Chunks of rows run in parallel on rayon's current pool, each normalised into the calling
/// thread's scratch buffer and projected while it is in cache, so the normalised input is
/// never stored whole. Buffers that do not fit are an error and nothing is written.
pub fn norm_linear(
    y: &mut [f32],
    x: &[f32],
    norm: &Norm<&[f32]>,
    p: &Proj<'_>,
    (dim, out): (usize, usize),
) -> Result<(), KernelError> {
    let op = "norm_linear";
    p.check(op, ["weight", "bias"], out, dim)?;
    norm.check(op, dim)?;
    let rows = x.len().checked_div(dim).unwrap_or(0);
    check_lengths(op, [("x", rows * dim, x.len()), ("y", rows * out, y.len())])?;
    if y.is_empty() {
        return Ok(());
    }
    let threads = rayon::current_num_threads().max(1);
    let isa = Isa::detected();
    let rows_of = |threads, y: &mut [f32], x: &[f32]| {
        with_scratch(x.len(), |normed| {
            normalise(isa, threads, normed, x, norm);
            project(threads, y, normed, p, (x.len() / dim, dim, out))
        })
    };
    if threads > 1 && rows < threads * MLP_CHUNK_ROWS {
        return rows_of(Threads::Shared, y, x);
    }
    let chunk = chunk_rows(rows, threads);
    y.par_chunks_mut(chunk * out)
        .zip(x.par_chunks(chunk * dim))
        .try_for_each(|(y, x)| rows_of(Threads::One, y, x))
}

/// `x += scale * branch`, element by element.
fn add_scaled(x: &mut [f32], branch: &[f32], scale: f32) {
    for (v, b) in x.iter_mut().zip(branch) {
        *v += scale * b;
    }
}

/// `y = bf16(x) · w^T + bias` (or `y += ...`, accumulating) for `rows` rows whose shapes
/// were checked.
fn bf16_product(
    threads: Threads,
    y: &mut [f32],
    x: &[f32],
    w: &PackedBf16,
    bias: Option<&[f32]>,
    rows: usize,
    accumulate: bool,
) {
    let call = Bf16Call {
        cols: 0..w.out_features(),
        bias,
        m: rows,
        accumulate,
    };
    crate::bf16::run(Bf16Kernel::detected(), threads.count(), y, x, w, call);
}

/// Writes `scale * bias` into every row of `out` and returns 1 (the GEMM then accumulates
/// onto it), or returns 0 without touching `out` when there is no bias.
fn fill_rows(out: &mut [f32], bias: Option<&[f32]>, scale: f32) -> f32 {
    match bias {
        Some(bias) if !bias.is_empty() => {
            for row in out.chunks_exact_mut(bias.len()) {
                for (v, b) in row.iter_mut().zip(bias) {
                    *v = scale * b;
                }
            }
            1.0
        }
        _ => 0.0,
    }
}
