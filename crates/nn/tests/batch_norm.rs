//! Batch norm with batch statistics (train mode): its forward normalises each channel over
//! batch and positions, its gradients (through the batch mean and variance, to the input and
//! to every parameter) agree with finite differences, and the running statistics follow
//! PyTorch's update.

use std::collections::BTreeMap;

use idlevit_autodiff::Tape;
use idlevit_nn::{
    Backend, BatchNormMode, Conv2dSpec, ConvBatchNorm, ConvShape, Eager, ParamVisitor, Params,
    SeededInit, Tensor,
};

/// Deterministic values in [-1, 1).
fn values(seed: u64, shape: &[usize]) -> Tensor {
    let mut state = seed;
    let n = shape.iter().product();
    let data = (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect();
    Tensor::from_vec(shape.to_vec(), data).unwrap()
}

const SHAPE: ConvShape = ConvShape {
    in_channels: 2,
    out_channels: 3,
    kernel: 3,
    spec: Conv2dSpec {
        stride: 2,
        padding: 1,
        groups: 1,
    },
};

fn layer(mode: BatchNormMode) -> ConvBatchNorm {
    let mut layer =
        ConvBatchNorm::load(&mut SeededInit::new(7), "conv", "bn", SHAPE).expect("seeded layer");
    layer.set_mode(mode);
    layer
}

/// `sum(out * c)` in f64, by the inference backend.
fn eager_loss(layer: &ConvBatchNorm, x: &Tensor, c: &Tensor) -> f64 {
    let out = layer.forward(&Eager, x).unwrap();
    out.to_vec()
        .iter()
        .zip(c.to_vec())
        .map(|(&o, c)| f64::from(o) * f64::from(c))
        .sum()
}

fn parameter(layer: &ConvBatchNorm, name: &str) -> Tensor {
    let mut found = None;
    let mut visit: &mut ParamVisitor<'_> = &mut |p| {
        if p.name() == name {
            found = Some(p.value().clone());
        }
    };
    layer.visit(&mut visit);
    layer.visit_buffers(&mut visit);
    found.unwrap_or_else(|| panic!("no parameter {name}"))
}

#[test]
fn each_channel_comes_out_with_the_learned_mean_and_scale() {
    let layer = layer(BatchNormMode::Train);
    let x = values(3, &[4, 2, 6, 6]);
    let out = layer.forward(&Eager, &x).unwrap();
    let [batch, channels, h, w] = out.shape().to_vec()[..] else {
        panic!("rank 4 expected")
    };
    let (gamma, beta) = (
        parameter(&layer, "bn.weight").to_vec(),
        parameter(&layer, "bn.bias").to_vec(),
    );
    let values = out.to_vec();
    for c in 0..channels {
        let channel: Vec<f64> = (0..batch)
            .flat_map(|b| (0..h * w).map(move |i| ((b * channels + c) * h * w) + i))
            .map(|i| f64::from(values[i]))
            .collect();
        let n = channel.len() as f64;
        let mean = channel.iter().sum::<f64>() / n;
        let var = channel.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        assert!((mean - f64::from(beta[c])).abs() < 1e-5, "channel {c} mean");
        // The variance of the normalised values is var / (var + eps), just below 1.
        let want = f64::from(gamma[c]).powi(2);
        assert!(
            (var - want).abs() < 1e-3 * want,
            "channel {c}: {var} vs {want}"
        );
    }
    // Frozen mode normalises with the running statistics instead.
    let frozen = self::layer(BatchNormMode::Frozen)
        .forward(&Eager, &x)
        .unwrap();
    assert!(frozen.max_abs_diff(&out).unwrap() > 1e-2);
}

#[test]
fn gradients_through_the_batch_statistics_match_finite_differences() {
    let layer = layer(BatchNormMode::Train);
    let x = values(5, &[3, 2, 5, 5]);
    let c = values(6, &[3, 3, 3, 3]);
    let tape = Tape::new();
    let input = tape.leaf("input", x.clone());
    let out = layer.forward(&tape, &input).unwrap();
    let loss = tape
        .sum_all(&tape.mul(&out, &tape.constant(c.clone())).unwrap())
        .unwrap();
    let grads: BTreeMap<String, Tensor> = tape.backward(&loss).unwrap().into_map();
    for name in ["input", "conv.weight", "bn.weight", "bn.bias"] {
        let grad = grads
            .get(name)
            .unwrap_or_else(|| panic!("no gradient {name}"));
        let d = values(11, grad.shape());
        let predicted: f64 = grad
            .to_vec()
            .iter()
            .zip(d.to_vec())
            .map(|(&g, d)| f64::from(g) * f64::from(d))
            .sum();
        let step = 1e-2f32;
        let shifted = |sign: f32| {
            let moved = |t: &Tensor| {
                let v = t
                    .to_vec()
                    .iter()
                    .zip(d.to_vec())
                    .map(|(&v, d)| v + sign * step * d)
                    .collect();
                Tensor::from_vec(t.shape().to_vec(), v).unwrap()
            };
            if name == "input" {
                return eager_loss(&layer, &moved(&x), &c);
            }
            let mut layer = layer.clone();
            layer.visit_mut(&mut |p| {
                if p.name() == name {
                    *p.value_mut() = moved(p.value());
                }
            });
            eager_loss(&layer, &x, &c)
        };
        let numeric = (shifted(1.0) - shifted(-1.0)) / (2.0 * f64::from(step));
        assert!(
            (numeric - predicted).abs() <= 2e-3 * predicted.abs().max(1.0),
            "{name}: finite difference {numeric}, gradient {predicted}"
        );
    }
    // The input's gradient runs through the mean and variance: without them it would be
    // the frozen layer's, a plain convolution transpose.
    let frozen = self::layer(BatchNormMode::Frozen);
    let tape = Tape::new();
    let input = tape.leaf("input", x.clone());
    let out = frozen.forward(&tape, &input).unwrap();
    let loss = tape
        .sum_all(&tape.mul(&out, &tape.constant(c)).unwrap())
        .unwrap();
    let frozen_grad = tape.backward(&loss).unwrap().into_map()["input"].clone();
    assert!(frozen_grad.max_abs_diff(&grads["input"]).unwrap() > 1e-2);
}

#[test]
fn running_statistics_follow_the_batch_at_the_momentum() {
    let mut layer = layer(BatchNormMode::Train);
    let before_mean = parameter(&layer, "bn.running_mean").to_vec();
    let before_var = parameter(&layer, "bn.running_var").to_vec();
    assert!(!layer.update_running(0.1).unwrap(), "no batch seen yet");
    let x = values(9, &[2, 2, 4, 4]);
    layer.forward(&Eager, &x).unwrap();
    assert!(layer.update_running(0.1).unwrap());
    assert!(!layer.update_running(0.1).unwrap(), "a batch counts once");
    // The convolution's own output, and its per-channel mean and unbiased variance in f64.
    let conv = Eager
        .conv2d(&x, &parameter(&layer, "conv.weight"), None, SHAPE.spec)
        .unwrap();
    let [batch, channels, h, w] = conv.shape().to_vec()[..] else {
        panic!("rank 4 expected")
    };
    let conv = conv.to_vec();
    let mean = parameter(&layer, "bn.running_mean").to_vec();
    let var = parameter(&layer, "bn.running_var").to_vec();
    for c in 0..channels {
        let channel: Vec<f64> = (0..batch)
            .flat_map(|b| (0..h * w).map(move |i| (b * channels + c) * h * w + i))
            .map(|i| f64::from(conv[i]))
            .collect();
        let n = channel.len() as f64;
        let batch_mean = channel.iter().sum::<f64>() / n;
        let batch_var = channel
            .iter()
            .map(|v| (v - batch_mean).powi(2))
            .sum::<f64>()
            / (n - 1.0);
        let want_mean = 0.9 * f64::from(before_mean[c]) + 0.1 * batch_mean;
        let want_var = 0.9 * f64::from(before_var[c]) + 0.1 * batch_var;
        assert!(
            (f64::from(mean[c]) - want_mean).abs() < 1e-6,
            "channel {c} mean"
        );
        assert!(
            (f64::from(var[c]) - want_var).abs() < 1e-6 * want_var.max(1.0),
            "channel {c} var"
        );
    }
    // The frozen forward now uses the moved statistics.
    let frozen = {
        let mut l = layer.clone();
        l.set_mode(BatchNormMode::Frozen);
        l.forward(&Eager, &x).unwrap()
    };
    let before = self::layer(BatchNormMode::Frozen)
        .forward(&Eager, &x)
        .unwrap();
    assert!(frozen.max_abs_diff(&before).unwrap() > 1e-4);
}
