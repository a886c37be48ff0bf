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

/// Deterministic values in [-1, 1).
pub fn values(seed: u64, shape: &[usize]) -> idlevit_nn::Tensor {
    let mut state = seed;
    let data = (0..shape.iter().product())
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect();
    idlevit_nn::Tensor::from_vec(shape.to_vec(), data).unwrap()
}

/// A model whose parameters the finite-difference check can move.
pub trait Tunable: Clone {
    /// Visits every parameter mutably.
    fn visit_mut(&mut self, f: &mut idlevit_nn::ParamVisitorMut<'_>);
}

impl Tunable for idlevit_zoo::DeiT {
    fn visit_mut(&mut self, f: &mut idlevit_nn::ParamVisitorMut<'_>) {
        self.visit_params_mut(f);
    }
}

impl Tunable for idlevit_zoo::ZooModel {
    fn visit_mut(&mut self, f: &mut idlevit_nn::ParamVisitorMut<'_>) {
        self.visit_params_mut(f);
    }
}

/// For each parameter of `grads`, the derivative of `loss` along a seeded random unit
/// direction by central differences of size `step`, against `<grad, d>`; the two must agree
/// within `relative * |grad| + absolute`.
pub fn check_directional_derivatives<M: Tunable>(
    model: &M,
    grads: &std::collections::BTreeMap<String, idlevit_nn::Tensor>,
    loss: impl Fn(&M) -> f64,
    step: f32,
    (relative, absolute): (f64, f64),
) {
    for (i, (name, grad)) in grads.iter().enumerate() {
        let d = values(101 + i as u64, grad.shape());
        let norm = d.to_vec().iter().map(|v| v * v).sum::<f32>().sqrt();
        let d = d.map(|v| v / norm);
        let predicted: f64 = grad
            .to_vec()
            .iter()
            .zip(d.to_vec())
            .map(|(&g, d)| f64::from(g) * f64::from(d))
            .sum();
        let shifted = |sign: f32| {
            let mut moved = model.clone();
            moved.visit_mut(&mut |p| {
                if p.name() == name {
                    let values = p
                        .value()
                        .to_vec()
                        .iter()
                        .zip(d.to_vec())
                        .map(|(&v, d)| v + sign * step * d)
                        .collect();
                    *p.value_mut() =
                        idlevit_nn::Tensor::from_vec(p.value().shape().to_vec(), values).unwrap();
                }
            });
            loss(&moved)
        };
        let numeric = (shifted(1.0) - shifted(-1.0)) / (2.0 * f64::from(step));
        let scale = grad
            .to_vec()
            .iter()
            .map(|&g| f64::from(g).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!(
            (numeric - predicted).abs() <= relative * scale + absolute,
            "{name}: finite difference {numeric}, gradient {predicted} (|grad| {scale})"
        );
    }
}
