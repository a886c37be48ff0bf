//! Reading the golden fixtures the zoo's tests share.

#![allow(dead_code)]

use std::path::PathBuf;

use safetensors::SafeTensors;
use serde::Deserialize;

/// The repository's `fixtures/` directory.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// The selections stored as I64 `selected.layer{i}` tensors `(batch, K + 1)`.
pub fn stored_selection(bytes: &[u8], layer: usize) -> Vec<Vec<usize>> {
    let file = SafeTensors::deserialize(bytes).unwrap();
    let view = file.tensor(&format!("selected.layer{layer}")).unwrap();
    assert_eq!(view.dtype(), safetensors::Dtype::I64);
    let values: Vec<usize> = view
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as usize)
        .collect();
    values
        .chunks(view.shape()[1])
        .map(<[usize]>::to_vec)
        .collect()
}

/// One entry of a fixture's `schedules.json`: a policy and its schedule.
#[derive(Deserialize)]
pub struct Case {
    /// `idle`, `masked`, `prune` or `evit`.
    pub policy: String,
    /// The selecting layers.
    pub idle_layers: Vec<usize>,
    /// The keep ratio of each.
    pub keep_ratios: Vec<f64>,
}

/// Deterministic images `(batch, 3, side, side)` with values in [-2, 2).
pub fn images(batch: usize, side: usize, seed: u64) -> idlevit_tensor::Tensor {
    let mut state = seed | 1;
    let values = (0..batch * 3 * side * side)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect();
    idlevit_tensor::Tensor::from_vec(vec![batch, 3, side, side], values).unwrap()
}
