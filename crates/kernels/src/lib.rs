#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

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
    KERNEL_ENV as BF16_KERNEL_ENV, PANEL as BF16_PANEL, PackedBf16, amx_status,
    bf16_expected_faster_than_f32, bf16_hardware, bf16_kernel_name, from_bf16, linear_bf16,
    linear_bf16_accumulate, linear_bf16_columns, to_bf16,
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
