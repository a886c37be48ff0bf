//! Fused inference kernels for a transformer block: the MLP half computed in row chunks that
//! stay in cache, and attention per (image, head) with the scores in a per-thread buffer.
//!
//! Unfused, DeiT-S at batch 32 writes a 38 MB MLP hidden tensor and a 30 MB attention map in
//! every layer. Each is a fresh allocation (fresh, zeroed pages from the kernel: about a tenth
//! of the model's time in the profile) and a round trip through memory between the GEMM that
//! writes it and the one that reads it back. Here each thread reuses one scratch buffer, sized
//! for a chunk of rows or one head's scores, so nothing of that size is allocated per layer.
//!
//! The parameter types ([`Proj`], [`Norm`], [`MlpHalf`], [`AttentionHalf`]) are generic over
//! what holds a tensor: slices here, a backend's values in `idlevit_ops`, which maps them to
//! slices with their `map` methods.

mod attention;
mod mlp;
mod project;

pub use attention::{
    AttentionHalf, AttentionShape, HeadsRef, attention, attention_bf16, attention_half_in_place,
};
pub use mlp::{MlpHalf, mlp_half_in_place};
pub use project::{linear_residual_in_place, norm_linear};

use std::cell::RefCell;

use rayon::prelude::*;

use crate::bf16::PackedBf16;
use crate::error::check_lengths;
use crate::gemm::matmul_serial;
use crate::layer_norm::LayerNorm;
use crate::packed::PackedF32;
use crate::simd::{self, Isa};
use crate::{KernelError, MatMut, MatRef};

thread_local! {
    /// The calling thread's scratch buffer, kept between calls.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// The calling thread's buffer for one head's scores, apart from [`SCRATCH`] so that a
    /// head run inside a call that holds `SCRATCH` (the attention half at batch 1) finds one.
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on `len` floats of this thread's scratch (contents unspecified).
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    with_buffer(&SCRATCH, len, f)
}

/// Runs `f` on `len` floats of this thread's score buffer (contents unspecified).
fn with_scores<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    with_buffer(&SCORES, len, f)
}

/// Runs `f` on `len` floats of the thread-local buffer `key`, grown as needed.
///
/// The buffer is taken out while `f` runs: if `f` waits on rayon and this thread meanwhile
/// runs another task that wants the same buffer, that task gets a fresh one instead of a
/// second borrow of this one.
fn with_buffer<R>(
    key: &'static std::thread::LocalKey<RefCell<Vec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    let mut buffer = key.with(RefCell::take);
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
    let result = f(&mut buffer[..len]);
    key.with(|slot| {
        let mut slot = slot.borrow_mut();
        if slot.len() < buffer.len() {
            *slot = buffer;
        }
    });
    result
}

/// Rows of the MLP a task computes at once. 256 rows of DeiT-S keep the hidden activations
/// (1.5 MB) and the normalised input in L2/L3 between the two products, while the products
/// still run near full speed.
const MLP_CHUNK_ROWS: usize = 256;

/// Rows per task when chunks of rows run on separate threads: about [`MLP_CHUNK_ROWS`], cut
/// so that every thread gets the same number of chunks. With chunks of exactly 256 rows, an
/// idle layer's 4416 selected rows (batch 32) are 18 chunks, which 16 threads run in two
/// rounds, the second on two threads alone.
fn chunk_rows(rows: usize, threads: usize) -> usize {
    let threads = threads.max(1);
    let rounds = rows.div_ceil(threads * MLP_CHUNK_ROWS).max(1);
    rows.div_ceil(rounds * threads).max(1)
}

/// Rows per task when the pool's threads share one image's row-wise passes (batch 1).
const SHARED_BLOCK_ROWS: usize = 16;

/// A weight's copy packed once for a faster product than on its `(out, in)` f32 values.
#[derive(Clone, Copy, Debug)]
pub enum PackedWeight<'a> {
    /// f32, packed by [`PackedF32::pack`] (CPUs with AVX-512F or AVX2 and FMA).
    F32(&'a PackedF32),
    /// bf16, packed by [`PackedBf16::pack`]: the model runs in bf16.
    Bf16(&'a PackedBf16),
}

impl PackedWeight<'_> {
    /// The packed weight's `(out, in)` features.
    pub fn shape(&self) -> (usize, usize) {
        match self {
            Self::F32(w) => (w.out_features(), w.in_features()),
            Self::Bf16(w) => (w.out_features(), w.in_features()),
        }
    }
}

/// A layer norm's parameters: `gamma` and `beta` of `dim` entries each.
#[derive(Clone, Copy, Debug)]
pub struct Norm<T> {
    /// Scale.
    pub gamma: T,
    /// Shift.
    pub beta: T,
    /// Epsilon added to the variance.
    pub eps: f32,
}

impl<T> Norm<T> {
    /// The same parameters with each tensor passed through `f`.
    pub fn map<'b, U>(&'b self, mut f: impl FnMut(&'b T) -> U) -> Norm<U> {
        Norm {
            gamma: f(&self.gamma),
            beta: f(&self.beta),
            eps: self.eps,
        }
    }
}

impl Norm<&[f32]> {
    /// Checks both vectors against `dim`.
    fn check(&self, op: &'static str, dim: usize) -> Result<(), KernelError> {
        let checks = [
            ("norm gamma", dim, self.gamma.len()),
            ("norm beta", dim, self.beta.len()),
        ];
        check_lengths(op, checks)
    }
}

/// A projection's parameters, timm's `(out, in)` weight layout: `y = x W^T + b`.
#[derive(Clone, Copy, Debug)]
pub struct Proj<'a, T = &'a [f32]> {
    /// The weight `(out, in)`, unread by the kernels when there is a packed copy.
    pub weight: T,
    /// The bias, `out` entries.
    pub bias: Option<T>,
    /// The weight's packed copy, which the product runs on when there is one.
    pub packed: Option<PackedWeight<'a>>,
}

impl<'a, T> Proj<'a, T> {
    /// The same projection with each tensor passed through `f`.
    pub fn map<'b, U>(&'b self, mut f: impl FnMut(&'b T) -> U) -> Proj<'a, U> {
        Proj {
            weight: f(&self.weight),
            bias: self.bias.as_ref().map(f),
            packed: self.packed,
        }
    }
}

impl Proj<'_> {
    /// Checks the weight against `(out, in)` (a packed copy by its shape, f32 values by their
    /// length) and the bias against `out`, naming them `[weight, bias]` in errors.
    fn check(
        &self,
        op: &'static str,
        [weight, bias]: [&'static str; 2],
        out: usize,
        input: usize,
    ) -> Result<(), KernelError> {
        let expected = out.saturating_mul(input);
        let shape = self.packed.map(|w| w.shape());
        let found = shape.map_or(self.weight.len(), |(n, k)| n.saturating_mul(k));
        if expected != found || shape.is_some_and(|shape| shape != (out, input)) {
            return Err(KernelError::BufferLength {
                op,
                operand: weight,
                expected,
                found,
            });
        }
        check_lengths(op, [(bias, out, self.bias.map_or(out, <[f32]>::len))])
    }
}

/// Layer norm of every row of `x` into `out`: on the calling thread, or split across the pool
/// in blocks of rows when the threads share one image (batch 1), where a pass over every
/// token on one thread would leave the others waiting before each product.
fn normalise(isa: Isa, threads: Threads, out: &mut [f32], x: &[f32], p: &Norm<&[f32]>) {
    let dim = p.gamma.len().max(1);
    let norm = |out, x| {
        simd::dispatch(
            isa,
            LayerNorm {
                out,
                x,
                gamma: p.gamma,
                beta: p.beta,
                eps: p.eps,
            },
        )
    };
    match shared_block_rows(x.len() / dim, threads) {
        None => norm(out, x),
        Some(block) => out
            .par_chunks_mut(block * dim)
            .zip(x.par_chunks(block * dim))
            .for_each(|(out, x)| norm(out, x)),
    }
}

/// Rows per task of a row-wise pass that the pool's threads share (one image), or `None` to
/// keep it on the calling thread: on fewer than four threads such a pass (tens of
/// microseconds) is over before a hand-off pays.
fn shared_block_rows(rows: usize, threads: Threads) -> Option<usize> {
    let count = threads.count();
    (threads == Threads::Shared && count >= 4)
        .then(|| rows.div_ceil(2 * count).max(SHARED_BLOCK_ROWS))
}

/// Whether one product runs on the calling thread or on rayon's current pool.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Threads {
    One,
    Shared,
}

impl Threads {
    /// How many tasks a product may use.
    fn count(self) -> usize {
        match self {
            Threads::One => 1,
            Threads::Shared => rayon::current_num_threads(),
        }
    }
}

/// `c = alpha a·b + beta c` on one thread or on the pool.
fn product(
    threads: Threads,
    c: MatMut<'_>,
    a: MatRef<'_>,
    b: MatRef<'_>,
    alpha: f32,
    beta: f32,
) -> Result<(), KernelError> {
    match threads {
        Threads::One => matmul_serial(c, a, b, alpha, beta),
        Threads::Shared => crate::matmul(c, a, b, alpha, beta),
    }
}

#[cfg(test)]
mod tests;
