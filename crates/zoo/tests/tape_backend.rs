//! The same DeiT `forward` on the inference backend and on the autodiff tape: identical
//! logits, and gradients for every parameter that agree with finite differences.

use std::collections::BTreeMap;

use idlevit_nn::{Eager, Tape, Tensor};
use idlevit_zoo::{DeiT, DeiTConfig, PolicyKind, Schedule, TokenPolicy};

mod common;
use common::{check_directional_derivatives, values};

fn config() -> DeiTConfig {
    DeiTConfig {
        img_size: 32,
        patch_size: 8,
        embed_dim: 24,
        depth: 3,
        num_heads: 3,
        mlp_ratio: 2.0,
        num_classes: 7,
        ..DeiTConfig::tiny()
    }
}

/// `sum(logits * c)` on the tape, and the gradient of every parameter by name.
fn loss_and_grads(model: &DeiT, images: &Tensor, c: &Tensor) -> (f32, BTreeMap<String, Tensor>) {
    let tape = Tape::new();
    let logits = model
        .forward(&tape, &tape.constant(images.clone()))
        .unwrap();
    let loss = tape
        .sum_all(&tape.mul(&logits, &tape.constant(c.clone())).unwrap())
        .unwrap();
    let grads = tape.backward(&loss).unwrap();
    (loss.value().to_vec()[0], grads.into_map())
}

/// `sum(logits * c)` by the inference backend, accumulated in f64.
fn eager_loss(model: &DeiT, images: &Tensor, c: &Tensor) -> f64 {
    let logits = model.forward(&Eager, images).unwrap();
    logits
        .to_vec()
        .iter()
        .zip(c.to_vec())
        .map(|(&l, c)| f64::from(l) * f64::from(c))
        .sum()
}

#[test]
fn tape_and_eager_give_identical_logits() {
    let images = values(3, &[2, 3, 32, 32]);
    let dense = DeiT::random(&config(), 11).unwrap();
    let idle = dense
        .clone()
        .with_policy(TokenPolicy::select(
            PolicyKind::Idle,
            Schedule::new(vec![1, 2], vec![0.5, 0.75]).unwrap(),
        ))
        .unwrap();
    for model in [&dense, &idle] {
        let eager = model.forward(&Eager, &images).unwrap();
        let tape = Tape::new();
        let recorded = model
            .forward(&tape, &tape.constant(images.clone()))
            .unwrap();
        assert!(recorded.requires_grad());
        assert_eq!(
            recorded.value().to_vec(),
            eager.to_vec(),
            "{:?}",
            model.policy()
        );

        let masked_eager = model.forward_masked(&Eager, &images).unwrap();
        let masked_tape = model
            .forward_masked(&tape, &tape.constant(images.clone()))
            .unwrap();
        assert_eq!(
            tape.to_tensor(&masked_tape.logits).to_vec(),
            masked_eager.logits.to_vec()
        );
    }
}

#[test]
fn backward_gives_every_parameter_a_gradient() {
    let model = DeiT::random(&config(), 5)
        .unwrap()
        .with_policy(TokenPolicy::select(
            PolicyKind::Idle,
            Schedule::new(vec![1], vec![0.5]).unwrap(),
        ))
        .unwrap();
    let images = values(8, &[2, 3, 32, 32]);
    let c = values(9, &[2, 7]);
    let (_, grads) = loss_and_grads(&model, &images, &c);
    let mut names = Vec::new();
    model.visit_params(&mut |p| names.push((p.name().to_string(), p.value().shape().to_vec())));
    assert_eq!(grads.len(), names.len());
    for (name, shape) in names {
        let g = grads
            .get(&name)
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        assert_eq!(g.shape(), shape, "{name}");
        let values = g.to_vec();
        assert!(values.iter().all(|v| v.is_finite()), "{name}");
        assert!(values.iter().any(|&v| v != 0.0), "{name}: all zero");
    }
}

/// For each parameter tensor, the derivative of the loss along a random unit direction in
/// that tensor, by central differences of the inference forward, against `<grad, d>`.
#[test]
fn parameter_gradients_match_finite_differences() {
    let model = DeiT::random(&config(), 21).unwrap();
    let images = values(4, &[2, 3, 32, 32]);
    let c = values(6, &[2, 7]);
    let (_, grads) = loss_and_grads(&model, &images, &c);
    check_directional_derivatives(&model, &grads, |m| eager_loss(m, &images, &c), 2e-3, 1e-4);
}
