//! Attention with the heads merged, one (image, head) at a time with its scores in a
//! per-thread buffer, and the whole attention half of a pre-norm block per image.

use rayon::prelude::*;

use super::project::{project, project_onto};
use super::{Norm, Proj, Threads, normalise, shared_block_rows, with_scores, with_scratch};
use crate::bf16::Bf16Kernel;
use crate::error::check_lengths;
use crate::gemm::matmul_serial;
use crate::simd::{self, Isa};
use crate::softmax::Softmax;
use crate::{KernelError, MatMut, MatRef};

/// Per-head matrices `(batch, heads, tokens, head_dim)` as strides into a slice: a strided
/// view such as one third of a fused qkv projection with its heads split.
#[derive(Clone, Copy, Debug)]
pub struct HeadsRef<'a> {
    /// The storage.
    pub data: &'a [f32],
    /// Storage index of element (0, 0, 0, 0).
    pub offset: usize,
    /// Tokens of each matrix.
    pub tokens: usize,
    /// Distance between images, heads, tokens and features, in that order.
    pub strides: [usize; 4],
}

impl<'a> HeadsRef<'a> {
    /// The `tokens x head_dim` matrix of image `b`, head `h`.
    pub(super) fn matrix(&self, b: usize, h: usize, head_dim: usize) -> MatRef<'a> {
        let [batch_stride, head_stride, token_stride, feature_stride] = self.strides;
        let start = self.offset + b * batch_stride + h * head_stride;
        MatRef {
            data: self.data.get(start..).unwrap_or_default(),
            rows: self.tokens,
            cols: head_dim,
            row_stride: token_stride,
            col_stride: feature_stride,
        }
    }
}

/// `out = softmax(scale · q k^T) v` for one head on the calling thread, in f32 or (given a
/// kernel) bf16, with `scores` (`q.rows x k.rows`) as the score buffer; views checked.
fn one_head(
    isa: Isa,
    bf16: Option<Bf16Kernel>,
    [q, k, v]: [MatRef<'_>; 3],
    scale: f32,
    scores: &mut [f32],
    out: MatMut<'_>,
) -> Result<(), KernelError> {
    if let Some(kernel) = bf16 {
        crate::bf16::attention::head(kernel, isa, q, k, v, scale, scores, out);
        return Ok(());
    }
    let (nq, nk) = (q.rows, k.rows);
    matmul_serial(MatMut::row_major(scores, nq, nk), q, k.t(), scale, 0.0)?;
    if nk > 0 {
        simd::dispatch(
            isa,
            Softmax {
                x: scores,
                row_len: nk,
            },
        );
    }
    matmul_serial(out, MatRef::row_major(scores, nq, nk), v, 1.0, 0.0)
}

/// The parameters of a pre-norm attention half-block,
/// `x + branch_scale * proj(attention(qkv(layer_norm(x))))`, with timm's layouts (qkv's
/// outputs are `[q; k; v]`, heads contiguous inside each): slices for the kernel, a backend's
/// values for `idlevit_ops`' `Fused::attention_half`.
#[derive(Clone, Copy, Debug)]
pub struct AttentionHalf<'a, T = &'a [f32]> {
    /// The layer norm, `dim` entries.
    pub norm: Norm<T>,
    /// The qkv projection, `(3 dim, dim)`.
    pub qkv: Proj<'a, T>,
    /// The output projection, `(dim, dim)`.
    pub proj: Proj<'a, T>,
    /// Heads; `dim = heads * head_dim`.
    pub heads: usize,
    /// Softmax temperature applied to the logits.
    pub scale: f32,
    /// Both attention products in bf16 ([`attention_bf16`]).
    pub bf16_attention: bool,
    /// Factor on the branch before it is added (LV-ViT's `1 / skip_lam`; 1 for timm's ViT).
    pub branch_scale: f32,
    /// Stochastic-depth rate of the branch (a training backend's; inference ignores it).
    pub drop_path: f32,
}

impl<'a, T> AttentionHalf<'a, T> {
    /// The same parameters with each tensor passed through `f`.
    pub fn map<'b, U>(&'b self, mut f: impl FnMut(&'b T) -> U) -> AttentionHalf<'a, U> {
        AttentionHalf {
            norm: self.norm.map(&mut f),
            qkv: self.qkv.map(&mut f),
            proj: self.proj.map(f),
            heads: self.heads,
            scale: self.scale,
            bf16_attention: self.bf16_attention,
            branch_scale: self.branch_scale,
            drop_path: self.drop_path,
        }
    }
}

/// `x += branch_scale * proj(attention(qkv(layer_norm(x))))` for every image of `x`
/// (`images x tokens x dim`, row-major, `dim = heads * head_dim`): the attention half of a pre-norm transformer block,
/// residual included, one image per task of rayon's current pool.
///
/// Each image is normalised, projected to q, k and v, attended head by head and projected
/// back onto its own rows inside the calling thread's scratch buffer (for DeiT-S about 1.9 MB,
/// which stays in L2/L3), so a layer stores no normalised input, qkv or attention output.
/// With fewer images than threads (batch 1) the images run one at a time, the threads
/// sharing each product and the heads. Buffers that do not fit are an error and nothing is
/// written.
pub fn attention_half_in_place(
    x: &mut [f32],
    p: &AttentionHalf<'_>,
    (tokens, head_dim): (usize, usize),
) -> Result<(), KernelError> {
    let dim = p.heads.saturating_mul(head_dim);
    let op = "attention_half";
    p.qkv.check(op, ["qkv weight", "qkv bias"], 3 * dim, dim)?;
    p.proj.check(op, ["proj weight", "proj bias"], dim, dim)?;
    p.norm.check(op, dim)?;
    let image = tokens.saturating_mul(dim);
    let whole_images = x.len().checked_next_multiple_of(image);
    check_lengths(op, [("x", whole_images.unwrap_or(usize::MAX), x.len())])?;
    if x.is_empty() || image == 0 {
        return Ok(());
    }
    let isa = Isa::detected();
    let bf16 = p.bf16_attention.then(Bf16Kernel::detected);
    let threads = rayon::current_num_threads().max(1);
    if threads > 1 && x.len() / image < threads {
        // Fewer images than threads (batch 1): one image at a time, the threads sharing its
        // products and its heads.
        return x.chunks_mut(image).try_for_each(|x| {
            attention_half_image(isa, bf16, x, p, (tokens, head_dim), Threads::Shared)
        });
    }
    x.par_chunks_mut(image)
        .try_for_each(|x| attention_half_image(isa, bf16, x, p, (tokens, head_dim), Threads::One))
}

/// [`attention_half_in_place`] for one image, in the calling thread's scratch: on the calling
/// thread alone ([`Threads::One`]), or with the pool's threads sharing each product and the
/// heads ([`Threads::Shared`]). Each head's scores sit in its own thread's score buffer.
fn attention_half_image(
    isa: Isa,
    bf16: Option<Bf16Kernel>,
    x: &mut [f32],
    p: &AttentionHalf<'_>,
    (tokens, d): (usize, usize),
    threads: Threads,
) -> Result<(), KernelError> {
    let dim = p.heads * d;
    with_scratch(tokens * 6 * dim, |scratch| {
        let (normed, rest) = scratch.split_at_mut(tokens * dim);
        let (qkv, rest) = rest.split_at_mut(3 * tokens * dim);
        let (per_head, mixed) = rest.split_at_mut(tokens * dim);
        normalise(isa, threads, normed, x, &p.norm);
        project(threads, qkv, normed, &p.qkv, (tokens, dim, 3 * dim))?;
        let qkv = &*qkv;
        let head = |h: usize, out: MatMut<'_>| {
            let part = |third: usize| MatRef {
                data: &qkv[third * dim + h * d..],
                rows: tokens,
                cols: d,
                row_stride: 3 * dim,
                col_stride: 1,
            };
            with_scores(tokens * tokens, |scores| {
                one_head(isa, bf16, [part(0), part(1), part(2)], p.scale, scores, out)
            })
        };
        match threads {
            // One thread: each head straight into its columns.
            Threads::One => (0..p.heads).try_for_each(|h| {
                let columns = MatMut {
                    data: &mut mixed[h * d..],
                    rows: tokens,
                    cols: d,
                    row_stride: dim,
                    col_stride: 1,
                };
                head(h, columns)
            })?,
            // Heads in parallel interleave column-wise: each writes its own block first.
            Threads::Shared => {
                per_head
                    .par_chunks_mut((tokens * d).max(1))
                    .enumerate()
                    .try_for_each(|(h, block)| head(h, MatMut::row_major(block, tokens, d)))?;
                let per_head = &*per_head;
                let interleave = |first: usize, rows: &mut [f32]| {
                    for (k, row) in rows.chunks_exact_mut(dim).enumerate() {
                        for (h, columns) in row.chunks_exact_mut(d).enumerate() {
                            let t = first + k;
                            columns.copy_from_slice(&per_head[(h * tokens + t) * d..][..d]);
                        }
                    }
                };
                match shared_block_rows(tokens, threads) {
                    None => interleave(0, mixed),
                    Some(block) => mixed
                        .par_chunks_mut(block * dim)
                        .enumerate()
                        .for_each(|(i, rows)| interleave(i * block, rows)),
                }
            }
        }
        // The normalised rows are no longer needed: a scaled branch may go there first.
        let proj = (&p.proj, p.branch_scale);
        project_onto(threads, x, mixed, proj, (tokens, dim, dim), normed)
    })
}

/// Checks that a view's last element lies inside its storage.
fn check_view(m: &MatRef<'_>) -> Result<(), KernelError> {
    let needed = crate::matrix::extent(m.rows, m.cols, m.row_stride, m.col_stride);
    if needed.is_none_or(|needed| needed > m.data.len()) {
        return Err(KernelError::OutOfBounds {
            op: "attention_bf16",
            operand: "q, k or v",
            rows: m.rows,
            cols: m.cols,
            row_stride: m.row_stride,
            col_stride: m.col_stride,
            needed: needed.unwrap_or(usize::MAX),
            found: m.data.len(),
        });
    }
    Ok(())
}

/// The shape of an attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    /// Images.
    pub batch: usize,
    /// Heads.
    pub heads: usize,
    /// Width of one head.
    pub head_dim: usize,
}

/// Scaled dot-product attention with the heads merged: for every image `b` and head `h`,
/// `out[b, :, h*d..(h+1)*d] = softmax(scale · q_bh k_bh^T) v_bh`, `out` row-major
/// `(batch, q.tokens, heads * head_dim)`.
///
/// Each (image, head) runs on one thread of rayon's current pool with its `q.tokens x k.tokens`
/// scores in that thread's scratch, so no attention map is ever stored. Every view is bounds
/// checked; a view that does not fit its slice is an error and nothing is written.
pub fn attention(
    out: &mut [f32],
    q: HeadsRef<'_>,
    k: HeadsRef<'_>,
    v: HeadsRef<'_>,
    shape: AttentionShape,
    scale: f32,
) -> Result<(), KernelError> {
    attention_in(out, q, k, v, shape, scale, None)
}

/// [`attention`] with both products in bf16: `scale · q`, `k`, `v` and the attention weights
/// are rounded to bf16 and every sum is accumulated in f32 (softmax stays f32), on the same
/// micro-kernel as [`linear_bf16`](crate::linear_bf16).
pub fn attention_bf16(
    out: &mut [f32],
    q: HeadsRef<'_>,
    k: HeadsRef<'_>,
    v: HeadsRef<'_>,
    shape: AttentionShape,
    scale: f32,
) -> Result<(), KernelError> {
    attention_in(out, q, k, v, shape, scale, Some(Bf16Kernel::detected()))
}

/// [`attention`], its products in f32 or (given a kernel) in bf16.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_in(
    out: &mut [f32],
    q: HeadsRef<'_>,
    k: HeadsRef<'_>,
    v: HeadsRef<'_>,
    shape: AttentionShape,
    scale: f32,
    bf16: Option<Bf16Kernel>,
) -> Result<(), KernelError> {
    let AttentionShape {
        batch,
        heads,
        head_dim,
    } = shape;
    let width = heads.saturating_mul(head_dim);
    let expected = batch.saturating_mul(q.tokens).saturating_mul(width);
    if out.len() != expected {
        return Err(KernelError::BufferLength {
            op: "attention",
            operand: "out",
            expected,
            found: out.len(),
        });
    }
    if v.tokens != k.tokens {
        return Err(KernelError::BufferLength {
            op: "attention",
            operand: "v tokens",
            expected: k.tokens,
            found: v.tokens,
        });
    }
    let (nq, nk) = (q.tokens, k.tokens);
    if out.is_empty() {
        return Ok(());
    }
    let isa = Isa::detected();
    // One (image, head) on the calling thread: scores in scratch, the result into `out`.
    let head = |b: usize, h: usize, out: MatMut<'_>| -> Result<(), KernelError> {
        let (qm, km, vm) = (
            q.matrix(b, h, head_dim),
            k.matrix(b, h, head_dim),
            v.matrix(b, h, head_dim),
        );
        for view in [&qm, &km, &vm] {
            check_view(view)?;
        }
        with_scores(nq * nk, |scores| {
            one_head(isa, bf16, [qm, km, vm], scale, scores, out)
        })
    };
    if batch >= rayon::current_num_threads() {
        // An image per task, its heads one after another straight into their columns.
        return out
            .par_chunks_mut(nq * width)
            .enumerate()
            .try_for_each(|(b, image)| {
                (0..heads).try_for_each(|h| {
                    let columns = MatMut {
                        data: &mut image[h * head_dim..],
                        rows: nq,
                        cols: head_dim,
                        row_stride: width,
                        col_stride: 1,
                    };
                    head(b, h, columns)
                })
            });
    }
    // Fewer images than threads (batch 1): a task per head. Heads interleave column-wise in
    // `out` and cannot be handed to threads as slices, so each writes its own block first.
    let mut per_head = vec![0.0; expected];
    per_head
        .par_chunks_mut(nq * head_dim)
        .enumerate()
        .try_for_each(|(job, block)| {
            head(
                job / heads,
                job % heads,
                MatMut::row_major(block, nq, head_dim),
            )
        })?;
    out.par_chunks_mut(nq * width)
        .zip(per_head.par_chunks(heads * nq * head_dim))
        .for_each(|(image_out, image_heads)| {
            for (h, head) in image_heads.chunks_exact(nq * head_dim).enumerate() {
                for (row_out, row) in image_out
                    .chunks_exact_mut(width)
                    .zip(head.chunks_exact(head_dim))
                {
                    row_out[h * head_dim..(h + 1) * head_dim].copy_from_slice(row);
                }
            }
        });
    Ok(())
}
