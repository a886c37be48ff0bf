//! The MLP half of a pre-norm block, in row chunks that stay in cache.

use rayon::prelude::*;

use super::project::{project, project_onto};
use super::{MLP_CHUNK_ROWS, Norm, Proj, Threads, chunk_rows, normalise, with_scratch};
use crate::KernelError;
use crate::activation::Gelu;
use crate::error::check_lengths;
use crate::simd::{self, Isa};

/// The parameters of a pre-norm MLP half-block, `x + branch_scale * fc2(gelu(fc1(norm(x))))`:
/// slices for the kernel, a backend's values for `idlevit_ops`' `Fused::mlp_half`.
#[derive(Clone, Copy, Debug)]
pub struct MlpHalf<'a, T = &'a [f32]> {
    /// The layer norm, `dim` entries.
    pub norm: Norm<T>,
    /// `fc1`, `(hidden, dim)`.
    pub fc1: Proj<'a, T>,
    /// `fc2`, `(dim, hidden)`.
    pub fc2: Proj<'a, T>,
    /// Factor on the branch before it is added (LV-ViT's `1 / skip_lam`; 1 for timm's ViT).
    pub branch_scale: f32,
    /// Stochastic-depth rate of the branch (a training backend's; inference ignores it).
    pub drop_path: f32,
}

impl<'a, T> MlpHalf<'a, T> {
    /// The same parameters with each tensor passed through `f`.
    pub fn map<'b, U>(&'b self, mut f: impl FnMut(&'b T) -> U) -> MlpHalf<'a, U> {
        MlpHalf {
            norm: self.norm.map(&mut f),
            fc1: self.fc1.map(&mut f),
            fc2: self.fc2.map(f),
            branch_scale: self.branch_scale,
            drop_path: self.drop_path,
        }
    }
}

impl MlpHalf<'_> {
    /// Checks every buffer against `dim` and `hidden`, and `x` against whole rows.
    fn check(&self, x_len: usize, (dim, hidden): (usize, usize)) -> Result<(), KernelError> {
        let op = "mlp_half";
        self.fc1
            .check(op, ["fc1 weight", "fc1 bias"], hidden, dim)?;
        self.fc2
            .check(op, ["fc2 weight", "fc2 bias"], dim, hidden)?;
        self.norm.check(op, dim)?;
        let whole_rows = if dim == 0 {
            0
        } else {
            x_len.next_multiple_of(dim)
        };
        check_lengths(op, [("x", whole_rows, x_len)])
    }
}

/// `x += branch_scale * fc2(gelu(fc1(layer_norm(x))))` on every row of `x` (`rows x dim`,
/// row-major, `fc1` of `hidden` outputs): the MLP half of a pre-norm transformer block,
/// residual included.
///
/// Chunks of rows run in parallel on rayon's current pool; each chunk is normalised, projected,
/// activated and projected back while it is in cache, in the calling thread's scratch buffer.
/// The bias of `fc2` is added to `x` before the product accumulates onto it, so results agree
/// with the unfused layers up to rounding.
pub fn mlp_half_in_place(
    x: &mut [f32],
    mlp: &MlpHalf<'_>,
    (dim, hidden): (usize, usize),
) -> Result<(), KernelError> {
    mlp.check(x.len(), (dim, hidden))?;
    if x.is_empty() {
        return Ok(());
    }
    let rows = x.len() / dim;
    let threads = rayon::current_num_threads().max(1);
    let isa = Isa::detected();
    if threads > 1 && rows < threads * MLP_CHUNK_ROWS {
        // Too few rows for a chunk per thread (batch 1): the threads share each product
        // instead, which keeps the column split that small products run fastest with.
        return mlp_rows(isa, x, mlp, (dim, hidden), Threads::Shared);
    }
    x.par_chunks_mut(chunk_rows(rows, threads) * dim)
        .try_for_each(|chunk| mlp_rows(isa, chunk, mlp, (dim, hidden), Threads::One))
}

/// [`mlp_half_in_place`] on the rows of `x`, in the calling thread's scratch.
fn mlp_rows(
    isa: Isa,
    x: &mut [f32],
    mlp: &MlpHalf<'_>,
    (dim, hidden): (usize, usize),
    threads: Threads,
) -> Result<(), KernelError> {
    let rows = x.len() / dim;
    with_scratch(rows * (dim + hidden), |scratch| {
        let (normed, activations) = scratch.split_at_mut(rows * dim);
        normalise(isa, threads, normed, x, &mlp.norm);
        project(threads, activations, normed, &mlp.fc1, (rows, dim, hidden))?;
        match threads {
            Threads::One => simd::dispatch(isa, Gelu { x: activations }),
            Threads::Shared => crate::gelu_with(isa, activations),
        }
        // The normalised rows are no longer needed: a scaled branch may go there first.
        let fc2 = (&mlp.fc2, mlp.branch_scale);
        project_onto(threads, x, activations, fc2, (rows, hidden, dim), normed)
    })
}
