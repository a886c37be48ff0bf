//! What each family keeps resident, counted from its config in f32 values: weights and
//! their packed copies, one forward pass's activations, what the tape saves, and the kernels'
//! scratch (the module's notes say what each count follows).

use super::{prod, sum};
use crate::{DeiTConfig, LvVitConfig, PvtConfig, ZooConfig};

/// Rows a fused MLP kernel normalises and projects at once, per thread (the kernels crate's
/// chunk size).
const MLP_CHUNK_ROWS: u64 = 256;

/// Output rows per panel of a packed weight: a packed copy pads `out` up to a multiple.
const PACK_PANEL: u64 = 32;

/// A family's memory, in f32 values, from which [`MemoryEstimate`](super::MemoryEstimate)
/// is assembled.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Profile {
    /// Learnable parameters (and buffers such as batch-norm statistics).
    pub(super) parameters: u64,
    /// Values of the packed f32 copies of the weight matrices (padded to whole panels).
    pub(super) packed: u64,
    /// Input values of one image.
    pub(super) image: u64,
    /// Peak values one image keeps alive in an inference forward pass, besides its input.
    pub(super) infer: u64,
    /// Values the tape saves for one image over the whole forward pass.
    pub(super) saved: u64,
    /// Values the tape saves for one image in its largest block (what the backward pass's
    /// gradients of activations amount to at a time).
    pub(super) saved_block: u64,
    /// Scratch of one image being worked on by one thread (fused attention's buffers,
    /// im2col matrices).
    pub(super) image_scratch: u64,
    /// Scratch every worker thread keeps (attention scores, an MLP chunk).
    pub(super) thread_scratch: u64,
}

/// The profile of `config`'s family, or `None` when a count overflows.
pub(super) fn of(config: &ZooConfig) -> Option<Profile> {
    match config {
        ZooConfig::DeiT(c) => deit_profile(c),
        ZooConfig::LvVit(c) => lvvit_profile(c),
        ZooConfig::Pvt(c) => pvt_profile(c),
    }
}

/// Values of the packed copy of an `(out, in)` weight: `out` padded to whole panels.
fn packed(out: u64, input: u64) -> Option<u64> {
    out.div_ceil(PACK_PANEL)
        .checked_mul(PACK_PANEL)?
        .checked_mul(input)
}

/// What a pre-norm ViT block (DeiT's and LV-ViT's) keeps for one image of `t` tokens of
/// width `c`, MLP width `m` and `h` heads: `(packed values of its four matrices, tape values
/// saved in its masked form, per-thread values of its fused inference kernels, per-image
/// scratch of fused attention)`.
fn vit_block(t: u64, c: u64, m: u64, h: u64) -> Option<(u64, u64, u64, u64)> {
    let packed = sum(&[
        packed(3 * c, c)?,
        packed(c, c)?,
        packed(m, c)?,
        packed(c, m)?,
    ])?;
    let (tc, tm, scores) = (prod(&[t, c])?, prod(&[t, m])?, prod(&[h, t, t])?);
    // The tape keeps: the block input, the normalised rows, q, k and v, the scaled queries,
    // the merged attention output, the residual between the halves, its normalised rows,
    // the MLP hidden before and after GELU, and the attention probabilities; an idle layer's
    // masked form also keeps its attention logits (for the cut loss) and both masked
    // branches. Every layer is counted as idle, the upper end.
    let saved = sum(&[
        tc.checked_mul(11)?,
        tm.checked_mul(2)?,
        scores.checked_mul(2)?,
    ])?;
    // Fused inference: each thread keeps one head's scores and a chunk of MLP rows; each
    // image in flight the normalised rows, q, k, v, per-head and merged outputs (6 t c).
    let thread = sum(&[prod(&[t, t])?, prod(&[MLP_CHUNK_ROWS, c.checked_add(m)?])?])?;
    Some((packed, saved, thread, tc.checked_mul(6)?))
}

fn deit_profile(c: &DeiTConfig) -> Option<Profile> {
    let [s, n, dim, m] =
        [c.img_size, c.num_patches(), c.embed_dim, c.mlp_hidden()].map(|v| v as u64);
    let [k, depth, heads] = [c.num_classes, c.depth, c.num_heads].map(|v| v as u64);
    let t = n.checked_add(1)?;
    let image = prod(&[3, s, s])?;
    let (block_packed, block_saved, thread, image_scratch) = vit_block(t, dim, m, heads)?;
    let tc = prod(&[t, dim])?;
    let patch_in = image;
    Some(Profile {
        parameters: c.parameter_count()? as u64,
        packed: sum(&[
            packed(dim, patch_in / n.max(1))?,
            block_packed.checked_mul(depth)?,
            packed(k, dim)?,
        ])?,
        image,
        // Embedding holds the patches' copy, their projection, the class token joined on and
        // the position embedding added; the blocks then update one stream in place.
        infer: sum(&[patch_in, tc.checked_mul(3)?])?,
        saved: sum(&[
            patch_in,
            tc.checked_mul(4)?,
            block_saved.checked_mul(depth)?,
        ])?,
        saved_block: block_saved,
        image_scratch,
        thread_scratch: thread,
    })
}

fn lvvit_profile(c: &LvVitConfig) -> Option<Profile> {
    let [s, n, dim, m] =
        [c.img_size, c.num_patches(), c.embed_dim, c.mlp_hidden()].map(|v| v as u64);
    let [stem, k, depth, heads] =
        [c.stem_channels, c.num_classes, c.depth, c.num_heads].map(|v| v as u64);
    let t = n.checked_add(1)?;
    let half = (s / 2).checked_pow(2)?;
    let image = prod(&[3, s, s])?;
    let (block_packed, block_saved, thread, attention_scratch) = vit_block(t, dim, m, heads)?;
    let tc = prod(&[t, dim])?;
    let stem_map = prod(&[stem, half])?;
    let kernel = (c.patch_size as u64 / 2).checked_pow(2)?;
    // One image's im2col matrix of the largest stem convolution (7x7 on 3 channels, 3x3 on
    // the stem's, the patch convolution).
    let im2col = prod(&[3 * 49, half])?
        .max(prod(&[stem, 9, half])?)
        .max(prod(&[stem, kernel, n])?);
    // The prediction: both heads' logits for every token.
    let aux = prod(&[n, k])?;
    Some(Profile {
        parameters: c.parameter_count()? as u64,
        packed: sum(&[
            block_packed.checked_mul(depth)?,
            packed(k, dim)?.checked_mul(2)?,
        ])?,
        image,
        // A stem convolution's input, output and activation, or the head's normalised
        // tokens and token logits, whichever is larger, beside the residual stream.
        infer: sum(&[stem_map.checked_mul(3)?.max(tc.checked_mul(3)?), aux, tc])?,
        saved: sum(&[
            stem_map.checked_mul(7)?,
            tc.checked_mul(5)?,
            aux.checked_mul(2)?,
            block_saved.checked_mul(depth)?,
        ])?,
        saved_block: block_saved.max(stem_map.checked_mul(3)?),
        image_scratch: attention_scratch.max(im2col),
        thread_scratch: thread,
    })
}

fn pvt_profile(c: &PvtConfig) -> Option<Profile> {
    let s = c.img_size as u64;
    let sides = c.grid_sides();
    let image = prod(&[3, s, s])?;
    let mut profile = Profile {
        parameters: c.parameter_count()? as u64,
        image,
        ..Profile::default()
    };
    let mut saved_blocks = 0u64;
    for (i, &side) in sides.iter().enumerate() {
        let [side, dim, m] = [side, c.embed_dims[i], c.mlp_hidden(i)].map(|v| v as u64);
        let [heads, sr, depth] = [c.num_heads[i], c.sr_ratios[i], c.depths[i]].map(|v| v as u64);
        let n = side.checked_mul(side)?;
        let reduced = (side / sr).checked_pow(2)?;
        let (nc, nm, rc) = (prod(&[n, dim])?, prod(&[n, m])?, prod(&[reduced, dim])?);
        let scores = prod(&[heads, n, reduced])?;
        // The stage's patch embedding: 7x7 on the image, or 3x3 on the last stage's map.
        let (in_dim, taps) = if i == 0 {
            (3, 49)
        } else {
            (c.embed_dims[i - 1] as u64, 9)
        };
        // q, kv, proj, fc1 and fc2 of each block.
        let block_packed = sum(&[
            packed(dim, dim)?,
            packed(2 * dim, dim)?,
            packed(dim, dim)?,
            packed(m, dim)?,
            packed(dim, m)?,
        ])?;
        profile.packed = sum(&[profile.packed, prod(&[depth, block_packed])?])?;
        // Inference: the stream, the normalised rows, q and the attention output, the
        // reduced keys and values, and the MLP hidden through its grid copy, depthwise
        // convolution and GELU.
        let infer = sum(&[nc.checked_mul(4)?, nm.checked_mul(4)?, rc.checked_mul(4)?])?;
        profile.infer = profile.infer.max(infer);
        // The tape: the stream, normalised rows, q, scaled q, the attention output, the
        // residual between halves and its normalised rows, both masked branches; the
        // reduction's grid copy, map and norm; k and v; probabilities (and the logits an
        // idle layer keeps); the MLP hidden, its grid copy, convolution output and GELU.
        let block = sum(&[
            nc.checked_mul(10)?,
            nm.checked_mul(4)?,
            rc.checked_mul(5)?,
            scores.checked_mul(2)?,
        ])?;
        // The stage's patch embedding: convolution output, token copy and normalised rows.
        let embed = nc.checked_mul(3)?;
        saved_blocks = sum(&[saved_blocks, block.checked_mul(depth)?, embed])?;
        profile.saved_block = profile.saved_block.max(block);
        let im2col = prod(&[in_dim, taps, n])?.max(prod(&[dim, sr, sr, reduced])?);
        profile.image_scratch = profile.image_scratch.max(im2col);
        // Fused attention keeps one (image, head)'s scores per thread.
        profile.thread_scratch = profile.thread_scratch.max(prod(&[n, reduced])?);
    }
    let last = *c.embed_dims.last()? as u64;
    profile.packed = sum(&[profile.packed, packed(c.num_classes as u64, last)?])?;
    profile.saved = saved_blocks;
    Some(profile)
}
