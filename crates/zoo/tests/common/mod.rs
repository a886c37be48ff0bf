//! Helpers shared by the zoo's gradient tests.

use std::collections::BTreeMap;

use idlevit_nn::Tensor;
use idlevit_zoo::DeiT;

/// Deterministic values in [-1, 1).
pub fn values(seed: u64, shape: &[usize]) -> Tensor {
    let mut state = seed;
    let data = (0..shape.iter().product())
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect();
    Tensor::from_vec(shape.to_vec(), data).unwrap()
}

/// For each parameter of `grads`, the derivative of `loss` along a seeded random unit
/// direction by central differences (step `1e-2`), against `<grad, d>`; the two must agree
/// within `relative * |grad| + absolute`.
pub fn check_directional_derivatives(
    model: &DeiT,
    grads: &BTreeMap<String, Tensor>,
    loss: impl Fn(&DeiT) -> f64,
    relative: f64,
    absolute: f64,
) {
    const STEP: f32 = 1e-2;
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
            moved.visit_params_mut(&mut |p| {
                if p.name() == name {
                    let values = p
                        .value()
                        .to_vec()
                        .iter()
                        .zip(d.to_vec())
                        .map(|(&v, d)| v + sign * STEP * d)
                        .collect();
                    *p.value_mut() = Tensor::from_vec(p.value().shape().to_vec(), values).unwrap();
                }
            });
            loss(&moved)
        };
        let numeric = (shifted(1.0) - shifted(-1.0)) / (2.0 * f64::from(STEP));
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
