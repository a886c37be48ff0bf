//! Fused inference kernels for a transformer block: the MLP half computed in row chunks that
//! stay in cache, and attention per (image, head) with the scores in a per-thread buffer.
//!
//! Unfused, DeiT-S at batch 32 writes a 38 MB MLP hidden tensor and a 30 MB attention map in
//! every layer. Each is a fresh allocation (fresh, zeroed pages from the kernel: about a tenth
//! of the model's time in the profile) and a round trip through memory between the GEMM that
//! writes it and the one that reads it back. Here each thread reuses one scratch buffer, sized
//! for a chunk of rows or one head's scores, so nothing of that size is allocated per layer.

use std::cell::RefCell;

use rayon::prelude::*;

use crate::activation::Gelu;
use crate::bf16::{Bf16Call, Bf16Kernel, PackedBf16};
use crate::error::check_lengths;
use crate::gemm::matmul_serial;
use crate::layer_norm::LayerNorm;
use crate::packed::{PackedF32, linear_packed_f32_on};
use crate::simd::{self, Isa};
use crate::softmax::Softmax;
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

/// A projection weight of the fused kernels: f32 in timm's `(out, in)` layout, or a copy
/// packed once for the f32 or bf16 product.
#[derive(Clone, Copy, Debug)]
pub enum ProjWeight<'a> {
    /// Row-major `(out, in)`.
    F32(&'a [f32]),
    /// Packed once by [`PackedBf16::pack`].
    Bf16(&'a PackedBf16),
    /// f32, packed once by [`PackedF32::pack`] (CPUs with AVX-512F or AVX2 and FMA).
    PackedF32(&'a PackedF32),
}

impl ProjWeight<'_> {
    /// Checks the weight against `(out, in)`: packed weights by their shape, f32 weights by
    /// length only.
    fn check(
        &self,
        op: &'static str,
        name: &'static str,
        out: usize,
        input: usize,
    ) -> Result<(), KernelError> {
        let expected = out.saturating_mul(input);
        let packed = |n: usize, k: usize| (n.saturating_mul(k), (n, k) != (out, input));
        let (found, shape_differs) = match self {
            ProjWeight::F32(w) => (w.len(), false),
            ProjWeight::Bf16(w) => packed(w.out_features(), w.in_features()),
            ProjWeight::PackedF32(w) => packed(w.out_features(), w.in_features()),
        };
        if expected != found || shape_differs {
            return Err(KernelError::BufferLength {
                op,
                operand: name,
                expected,
                found,
            });
        }
        Ok(())
    }
}

/// The parameters of a pre-norm MLP half-block, `x + branch_scale * fc2(gelu(fc1(norm(x))))`,
/// with timm's `(out, in)` weight layout.
#[derive(Clone, Copy, Debug)]
pub struct MlpHalf<'a> {
    /// Layer-norm scale, `dim` entries.
    pub norm_gamma: &'a [f32],
    /// Layer-norm shift, `dim` entries.
    pub norm_beta: &'a [f32],
    /// Layer-norm epsilon.
    pub norm_eps: f32,
    /// `fc1` weight, `(hidden, dim)`.
    pub fc1_weight: ProjWeight<'a>,
    /// `fc1` bias, `hidden` entries.
    pub fc1_bias: Option<&'a [f32]>,
    /// `fc2` weight, `(dim, hidden)`.
    pub fc2_weight: ProjWeight<'a>,
    /// `fc2` bias, `dim` entries.
    pub fc2_bias: Option<&'a [f32]>,
    /// Token width.
    pub dim: usize,
    /// Hidden width.
    pub hidden: usize,
    /// Factor on the branch before it is added (LV-ViT's `1 / skip_lam`; 1 for timm's ViT).
    pub branch_scale: f32,
}

impl MlpHalf<'_> {
    /// Checks every buffer against `dim` and `hidden`, and `x` against whole rows.
    fn check(&self, x_len: usize) -> Result<(), KernelError> {
        let (dim, hidden) = (self.dim, self.hidden);
        self.fc1_weight
            .check("mlp_half", "fc1 weight", hidden, dim)?;
        self.fc2_weight
            .check("mlp_half", "fc2 weight", dim, hidden)?;
        let biases = [
            ("fc1 bias", hidden, self.fc1_bias.map(<[f32]>::len)),
            ("fc2 bias", dim, self.fc2_bias.map(<[f32]>::len)),
        ];
        let checks = [
            ("norm gamma", dim, self.norm_gamma.len()),
            ("norm beta", dim, self.norm_beta.len()),
            (
                "x",
                if dim == 0 {
                    0
                } else {
                    x_len.next_multiple_of(dim)
                },
                x_len,
            ),
        ]
        .into_iter()
        .chain(
            biases
                .into_iter()
                .filter_map(|(name, expected, found)| Some((name, expected, found?))),
        );
        check_lengths("mlp_half", checks)
    }
}

/// `x += branch_scale * fc2(gelu(fc1(layer_norm(x))))` on every row of `x` (`rows x dim`,
/// row-major): the MLP half of a pre-norm transformer block, residual included.
///
/// Chunks of rows run in parallel on rayon's current pool; each chunk is normalised, projected,
/// activated and projected back while it is in cache, in the calling thread's scratch buffer.
/// The bias of `fc2` is added to `x` before the product accumulates onto it, so results agree
/// with the unfused layers up to rounding.
pub fn mlp_half_in_place(x: &mut [f32], mlp: &MlpHalf<'_>) -> Result<(), KernelError> {
    mlp.check(x.len())?;
    if x.is_empty() {
        return Ok(());
    }
    let rows = x.len() / mlp.dim;
    let threads = rayon::current_num_threads().max(1);
    let isa = Isa::detected();
    if threads > 1 && rows < threads * MLP_CHUNK_ROWS {
        // Too few rows for a chunk per thread (batch 1): the threads share each product
        // instead, which keeps the column split that small products run fastest with.
        return mlp_rows(isa, x, mlp, Threads::Shared);
    }
    x.par_chunks_mut(MLP_CHUNK_ROWS * mlp.dim)
        .try_for_each(|chunk| mlp_rows(isa, chunk, mlp, Threads::One))
}

/// Rows per task when the pool's threads share one image's row-wise passes (batch 1).
const SHARED_BLOCK_ROWS: usize = 16;

/// Layer norm of every row of `x` into `out`, `(gamma, beta, eps)` as given: on the calling
/// thread, or split across the pool in blocks of rows when the threads share one image
/// (batch 1), where a pass over every token on one thread would leave the others waiting
/// before each product.
fn normalise(
    isa: Isa,
    threads: Threads,
    out: &mut [f32],
    x: &[f32],
    (gamma, beta, eps): (&[f32], &[f32], f32),
) {
    let dim = gamma.len().max(1);
    let norm = |out, x| {
        simd::dispatch(
            isa,
            LayerNorm {
                out,
                x,
                gamma,
                beta,
                eps,
            },
        )
    };
    match threads {
        Threads::One => norm(out, x),
        Threads::Shared => {
            let rows = x.len() / dim;
            let block = rows.div_ceil(2 * threads.count()).max(SHARED_BLOCK_ROWS) * dim;
            out.par_chunks_mut(block)
                .zip(x.par_chunks(block))
                .for_each(|(out, x)| norm(out, x));
        }
    }
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

/// [`mlp_half_in_place`] on the rows of `x`, in the calling thread's scratch.
fn mlp_rows(
    isa: Isa,
    x: &mut [f32],
    mlp: &MlpHalf<'_>,
    threads: Threads,
) -> Result<(), KernelError> {
    let (dim, hidden) = (mlp.dim, mlp.hidden);
    let rows = x.len() / dim;
    with_scratch(rows * (dim + hidden), |scratch| {
        let (normed, activations) = scratch.split_at_mut(rows * dim);
        let norm = (mlp.norm_gamma, mlp.norm_beta, mlp.norm_eps);
        normalise(isa, threads, normed, x, norm);
        let shape = (rows, dim, hidden);
        project(
            threads,
            activations,
            normed,
            mlp.fc1_weight,
            mlp.fc1_bias,
            shape,
        )?;
        match threads {
            Threads::One => simd::dispatch(isa, Gelu { x: activations }),
            Threads::Shared => crate::gelu_with(isa, activations),
        }
        // The normalised rows are no longer needed: a scaled branch may go there first.
        let fc2 = (mlp.fc2_weight, mlp.fc2_bias, mlp.branch_scale);
        project_onto(threads, x, activations, fc2, (rows, hidden, dim), normed)
    })
}

/// `x += branch_scale * (input · w^T + bias)` for `(rows, in, out)` shapes already checked,
/// on one thread or on the pool: a projection closing a residual. The product accumulates
/// onto `x` where the kernel can; a scaled packed or bf16 branch goes to `spare`
/// (`rows x out`) first.
fn project_onto(
    threads: Threads,
    x: &mut [f32],
    input: &[f32],
    (weight, bias, branch_scale): (ProjWeight<'_>, Option<&[f32]>, f32),
    (rows, inputs, outputs): (usize, usize, usize),
    spare: &mut [f32],
) -> Result<(), KernelError> {
    match weight {
        ProjWeight::F32(w) => {
            if let Some(bias) = bias {
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
                MatRef::row_major(w, outputs, inputs).t(),
                branch_scale,
                1.0,
            )
        }
        ProjWeight::PackedF32(w) if branch_scale == 1.0 => {
            linear_packed_f32_on(threads.count(), x, input, w, 0..outputs, bias, rows, true)
        }
        ProjWeight::Bf16(w) if branch_scale == 1.0 => {
            bf16_product(threads, x, input, w, bias, rows, true);
            Ok(())
        }
        _ => {
            let spare = &mut spare[..rows * outputs];
            project(threads, spare, input, weight, bias, (rows, inputs, outputs))?;
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
    weight: ProjWeight<'_>,
    bias: Option<&[f32]>,
    (inputs, outputs): (usize, usize),
    branch_scale: f32,
) -> Result<(), KernelError> {
    let op = "linear_residual";
    weight.check(op, "weight", outputs, inputs)?;
    let rows = x.len().checked_div(outputs).unwrap_or(0);
    let checks = [
        ("x", rows * outputs, x.len()),
        ("input", rows * inputs, input.len()),
        ("bias", outputs, bias.map_or(outputs, <[f32]>::len)),
    ];
    check_lengths(op, checks)?;
    if x.is_empty() {
        return Ok(());
    }
    // Only a scaled packed or bf16 branch needs the spare rows.
    let direct = matches!(weight, ProjWeight::F32(_)) || branch_scale == 1.0;
    let spare = if direct { 0 } else { rows * outputs };
    let branch = (weight, bias, branch_scale);
    with_scratch(spare, |spare| {
        project_onto(
            Threads::Shared,
            x,
            input,
            branch,
            (rows, inputs, outputs),
            spare,
        )
    })
}

/// `out = input · w^T + bias` for `(rows, in, out)` shapes already checked, on one thread or
/// on the pool.
fn project(
    threads: Threads,
    out: &mut [f32],
    input: &[f32],
    weight: ProjWeight<'_>,
    bias: Option<&[f32]>,
    (rows, inputs, outputs): (usize, usize, usize),
) -> Result<(), KernelError> {
    match weight {
        ProjWeight::F32(w) => {
            let beta = fill_rows(out, bias, 1.0);
            product(
                threads,
                MatMut::row_major(out, rows, outputs),
                MatRef::row_major(input, rows, inputs),
                MatRef::row_major(w, outputs, inputs).t(),
                1.0,
                beta,
            )
        }
        ProjWeight::Bf16(w) => {
            bf16_product(threads, out, input, w, bias, rows, false);
            Ok(())
        }
        ProjWeight::PackedF32(w) => {
            let (threads, cols) = (threads.count(), 0..w.out_features());
            linear_packed_f32_on(threads, out, input, w, cols, bias, rows, false)
        }
    }
}

/// A pre-norm projection `y = layer_norm(x) W^T + b` (attention's qkv after `norm1`), with
/// timm's `(out, in)` weight layout.
#[derive(Clone, Copy, Debug)]
pub struct NormLinear<'a> {
    /// Layer-norm scale, `dim` entries.
    pub norm_gamma: &'a [f32],
    /// Layer-norm shift, `dim` entries.
    pub norm_beta: &'a [f32],
    /// Layer-norm epsilon.
    pub norm_eps: f32,
    /// The weight, `(out, dim)`.
    pub weight: ProjWeight<'a>,
    /// The bias, `out` entries.
    pub bias: Option<&'a [f32]>,
    /// Input width.
    pub dim: usize,
    /// Output width.
    pub out: usize,
}

/// `y = layer_norm(x) W^T + b` on every row of `x` (`rows x dim`, row-major) into `y`
/// (`rows x out`).
///
/// Chunks of rows run in parallel on rayon's current pool, each normalised into the calling
/// thread's scratch buffer and projected while it is in cache, so the normalised input is
/// never stored whole. Buffers that do not fit are an error and nothing is written.
pub fn norm_linear(y: &mut [f32], x: &[f32], p: &NormLinear<'_>) -> Result<(), KernelError> {
    let (dim, out) = (p.dim, p.out);
    p.weight.check("norm_linear", "weight", out, dim)?;
    let rows = x.len().checked_div(dim).unwrap_or(0);
    let checks = [
        ("norm gamma", dim, p.norm_gamma.len()),
        ("norm beta", dim, p.norm_beta.len()),
        ("x", rows * dim, x.len()),
        ("y", rows * out, y.len()),
        ("bias", out, p.bias.map_or(out, <[f32]>::len)),
    ];
    check_lengths("norm_linear", checks)?;
    if y.is_empty() {
        return Ok(());
    }
    let threads = rayon::current_num_threads().max(1);
    let isa = Isa::detected();
    if threads > 1 && rows < threads * MLP_CHUNK_ROWS {
        return norm_linear_rows(isa, y, x, p, Threads::Shared);
    }
    y.par_chunks_mut(MLP_CHUNK_ROWS * out)
        .zip(x.par_chunks(MLP_CHUNK_ROWS * dim))
        .try_for_each(|(y, x)| norm_linear_rows(isa, y, x, p, Threads::One))
}

/// [`norm_linear`] on the rows of `x`, normalised in the calling thread's scratch.
fn norm_linear_rows(
    isa: Isa,
    y: &mut [f32],
    x: &[f32],
    p: &NormLinear<'_>,
    threads: Threads,
) -> Result<(), KernelError> {
    let rows = x.len() / p.dim;
    with_scratch(x.len(), |normed| {
        simd::dispatch(
            isa,
            LayerNorm {
                out: normed,
                x,
                gamma: p.norm_gamma,
                beta: p.norm_beta,
                eps: p.norm_eps,
            },
        );
        project(threads, y, normed, p.weight, p.bias, (rows, p.dim, p.out))
    })
}

/// `x += scale * branch`, element by element.
fn add_scaled(x: &mut [f32], branch: &[f32], scale: f32) {
    for (v, b) in x.iter_mut().zip(branch) {
        *v += scale * b;
    }
}

/// `y = bf16(x) · w^T + bias` (or `y += ...`, accumulating) for `rows` rows whose shapes
/// [`MlpHalf::check`] accepted.
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
    fn matrix(&self, b: usize, h: usize, head_dim: usize) -> MatRef<'a> {
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
/// `x + branch_scale * proj(attention(qkv(layer_norm(x))))`, with timm's layouts: qkv's
/// outputs are `[q; k; v]`, heads contiguous inside each.
#[derive(Clone, Copy, Debug)]
pub struct AttentionHalf<'a> {
    /// Layer-norm scale, `dim` entries.
    pub norm_gamma: &'a [f32],
    /// Layer-norm shift, `dim` entries.
    pub norm_beta: &'a [f32],
    /// Layer-norm epsilon.
    pub norm_eps: f32,
    /// The qkv weight, `(3 dim, dim)`.
    pub qkv_weight: ProjWeight<'a>,
    /// The qkv bias, `3 dim` entries.
    pub qkv_bias: Option<&'a [f32]>,
    /// The output projection's weight, `(dim, dim)`.
    pub proj_weight: ProjWeight<'a>,
    /// The output projection's bias, `dim` entries.
    pub proj_bias: Option<&'a [f32]>,
    /// Tokens per image.
    pub tokens: usize,
    /// Heads; `dim = heads * head_dim`.
    pub heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Softmax temperature applied to the logits.
    pub scale: f32,
    /// Both attention products in bf16 ([`attention_bf16`]).
    pub bf16_attention: bool,
    /// Factor on the branch before it is added (LV-ViT's `1 / skip_lam`; 1 for timm's ViT).
    pub branch_scale: f32,
}

/// `x += branch_scale * proj(attention(qkv(layer_norm(x))))` for every image of `x`
/// (`images x tokens x dim`, row-major): the attention half of a pre-norm transformer block,
/// residual included, one image per task of rayon's current pool.
///
/// Each image is normalised, projected to q, k and v, attended head by head and projected
/// back onto its own rows inside the calling thread's scratch buffer (for DeiT-S about 1.9 MB,
/// which stays in L2/L3), so a layer stores no normalised input, qkv or attention output.
/// With fewer images than threads (batch 1) the images run one at a time, the threads
/// sharing each product and the heads. Buffers that do not fit are an error and nothing is
/// written.
pub fn attention_half_in_place(x: &mut [f32], p: &AttentionHalf<'_>) -> Result<(), KernelError> {
    let dim = p.heads.saturating_mul(p.head_dim);
    let op = "attention_half";
    p.qkv_weight.check(op, "qkv weight", 3 * dim, dim)?;
    p.proj_weight.check(op, "proj weight", dim, dim)?;
    let image = p.tokens.saturating_mul(dim);
    let checks = [
        ("norm gamma", dim, p.norm_gamma.len()),
        ("norm beta", dim, p.norm_beta.len()),
        (
            "qkv bias",
            3 * dim,
            p.qkv_bias.map_or(3 * dim, <[f32]>::len),
        ),
        ("proj bias", dim, p.proj_bias.map_or(dim, <[f32]>::len)),
        (
            "x",
            x.len()
                .checked_next_multiple_of(image)
                .unwrap_or(usize::MAX),
            x.len(),
        ),
    ];
    check_lengths(op, checks)?;
    if x.is_empty() || image == 0 {
        return Ok(());
    }
    let isa = Isa::detected();
    let bf16 = p.bf16_attention.then(Bf16Kernel::detected);
    let threads = rayon::current_num_threads().max(1);
    if threads > 1 && x.len() / image < threads {
        // Fewer images than threads (batch 1): one image at a time, the threads sharing its
        // products and its heads.
        return x
            .chunks_mut(image)
            .try_for_each(|x| attention_half_image(isa, bf16, x, p, Threads::Shared));
    }
    x.par_chunks_mut(image)
        .try_for_each(|x| attention_half_image(isa, bf16, x, p, Threads::One))
}

/// [`attention_half_in_place`] for one image, in the calling thread's scratch: on the calling
/// thread alone ([`Threads::One`]), or with the pool's threads sharing each product and the
/// heads ([`Threads::Shared`]). Each head's scores sit in its own thread's score buffer.
fn attention_half_image(
    isa: Isa,
    bf16: Option<Bf16Kernel>,
    x: &mut [f32],
    p: &AttentionHalf<'_>,
    threads: Threads,
) -> Result<(), KernelError> {
    let (tokens, d) = (p.tokens, p.head_dim);
    let dim = p.heads * d;
    with_scratch(tokens * 6 * dim, |scratch| {
        let (normed, rest) = scratch.split_at_mut(tokens * dim);
        let (qkv, rest) = rest.split_at_mut(3 * tokens * dim);
        let (per_head, mixed) = rest.split_at_mut(tokens * dim);
        let norm = (p.norm_gamma, p.norm_beta, p.norm_eps);
        normalise(isa, threads, normed, x, norm);
        let shape = (tokens, dim, 3 * dim);
        project(threads, qkv, normed, p.qkv_weight, p.qkv_bias, shape)?;
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
                let block_rows = SHARED_BLOCK_ROWS.min(tokens.max(1));
                mixed
                    .par_chunks_mut(block_rows * dim)
                    .enumerate()
                    .for_each(|(i, rows)| {
                        for (k, row) in rows.chunks_exact_mut(dim).enumerate() {
                            let t = i * block_rows + k;
                            for (h, columns) in row.chunks_exact_mut(d).enumerate() {
                                columns.copy_from_slice(&per_head[(h * tokens + t) * d..][..d]);
                            }
                        }
                    });
            }
        }
        // The normalised rows are no longer needed: a scaled branch may go there first.
        let proj = (p.proj_weight, p.proj_bias, p.branch_scale);
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

#[cfg(test)]
mod tests;
