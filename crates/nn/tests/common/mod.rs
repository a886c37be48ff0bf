//! Inputs shared by the integration tests.

use idlevit_nn::Tensor;

/// A tensor of `shape` with deterministic values in [-1, 1), different for each `seed`.
pub fn values(seed: u32, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let data = (0..n as u32)
        .map(|i| ((i.wrapping_mul(2_654_435_761) ^ seed) % 2000) as f32 / 1000.0 - 1.0)
        .collect();
    Tensor::from_vec(shape.to_vec(), data).unwrap()
}
