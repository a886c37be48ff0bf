//! CPU kernels for idlevit: GEMM, softmax, layer norm, GELU, element-wise arithmetic and top-k.
//!
//! Every kernel works on plain `f32` slices with sizes (and, for GEMM, strides) and knows
//! nothing of tensors or models. Each has a straightforward f64 twin in the `reference` module
//! that the tests hold it to.
//!
//! - GEMM ([`matmul`], [`linear`]) runs on the `gemm` crate's AVX-512 kernels or on
//!   `matrixmultiply`, chosen per shape from measurements (see the `gemm` module source).
//! - [`linear_bf16`] is the optional bfloat16 projection: a weight packed once
//!   ([`PackedBf16`]), activations rounded to bf16 as they are packed, f32 accumulation, on
//!   AMX tiles or AVX-512 BF16 where the CPU has them and a portable kernel with the same
//!   rounding elsewhere.
//! - The row-wise kernels ([`softmax_rows`], [`layer_norm_rows`], [`gelu`]) are written once and
//!   compiled for AVX-512, AVX2 + FMA and the portable target; [`Isa::detected`] picks one at
//!   run time, once.
//! - The fused inference kernels ([`mlp_half_in_place`], [`attention`]) run a block's MLP
//!   half in cache-sized row chunks and attention per (image, head), without storing the MLP
//!   activations or the attention map.
//! - Large calls split their work across rayon's *current* pool, so the caller's pool size
//!   (the CLI's `--threads`) is the thread count; small calls stay on the calling thread.
//!
//! One attention row, end to end: project a token, then softmax the scores.
//!
//! ```
//! use idlevit_kernels::{linear, softmax_rows};
//!
//! // Two tokens of width 3 projected to 2 outputs: y = x · w^T + bias, w stored (out, in).
//! let x = [1.0, 0.0, 2.0, 0.0, 1.0, 0.0];
//! let w = [1.0, 1.0, 1.0, 0.5, -1.0, 0.0];
//! let bias = [0.0, 1.0];
//! let mut y = [0.0; 4];
//! linear(&mut y, &x, &w, Some(&bias), 2, 3, 2)?;
//! assert_eq!(y, [3.0, 1.5, 1.0, 0.0]);
//!
//! softmax_rows(&mut y, 2);
//! assert!((y[0] + y[1] - 1.0).abs() < 1e-6 && y[0] > y[1]);
//! # Ok::<(), idlevit_kernels::KernelError>(())
//! ```

mod activation;
mod bf16;
mod elementwise;
mod error;
mod fused;
mod gemm;
mod layer_norm;
mod math;
mod matrix;
mod memory;
mod packed;
mod parallel;
#[doc(hidden)]
pub mod reference;
mod simd;
mod softmax;
#[cfg(test)]
mod testutil;
mod tiles;
mod top_k;

pub use activation::{gelu, gelu_backward, gelu_backward_with, gelu_with};
pub use bf16::{
    KERNEL_ENV as BF16_KERNEL_ENV, PANEL as BF16_PANEL, PackedBf16, bf16_expected_faster_than_f32,
    bf16_hardware, bf16_kernel_name, from_bf16, linear_bf16, linear_bf16_accumulate,
    linear_bf16_columns, to_bf16,
};
pub use elementwise::{add_assign, add_bias_rows, scale};
pub use error::KernelError;
pub use fused::{
    AttentionHalf, AttentionShape, HeadsRef, MlpHalf, Norm, PackedWeight, Proj, attention,
    attention_bf16, attention_half_in_place, linear_residual_in_place, mlp_half_in_place,
    norm_linear,
};
pub use gemm::{linear, linear_strided, matmul, padded_row_stride};
pub use layer_norm::{layer_norm_dot, layer_norm_rows, layer_norm_rows_with};
pub use matrix::{MatMut, MatRef};
pub use memory::keep_freed_memory;
pub use packed::{PackedF32, linear_packed_f32, packed_f32_available};
pub use simd::Isa;
pub use softmax::{softmax_rows, softmax_rows_with};
pub use top_k::top_k;
