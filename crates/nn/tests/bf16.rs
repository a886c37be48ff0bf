//! A linear layer with a packed bf16 weight: the eager backend runs the bf16 product (whole
//! layer and a slice of its outputs), the tape keeps f32.

use idlevit_autodiff::Backend;
use idlevit_autodiff::Tape;
use idlevit_kernels::{from_bf16, to_bf16};
use idlevit_nn::{Eager, Linear, Param, Precision, Tensor};

mod common;
use common::values;

/// `x W^T + b` over bf16-rounded x and W, summed in f64, for output features `cols`.
fn reference(x: &Tensor, w: &Tensor, b: &Tensor, cols: std::ops::Range<usize>) -> Vec<f32> {
    let round = |v: f32| f64::from(from_bf16(to_bf16(v)));
    let (k, x, w, b) = (w.shape()[1], x.to_vec(), w.to_vec(), b.to_vec());
    x.chunks(k)
        .flat_map(|row| {
            cols.clone().map(|j| {
                let dot: f64 = (0..k).map(|p| round(row[p]) * round(w[j * k + p])).sum();
                (dot + f64::from(b[j])) as f32
            })
        })
        .collect()
}

#[test]
fn eager_runs_the_packed_product_and_the_tape_stays_f32() {
    let (w, b) = (values(1, &[70, 45]), values(2, &[70]));
    let mut weight = Param::new("weight", w.clone());
    weight.set_precision(Precision::Bf16).unwrap();
    let layer = Linear::from_params(weight, Some(Param::new("bias", b.clone()))).unwrap();
    let plain = Linear::new(w.clone(), Some(b.clone())).unwrap();
    let x = values(3, &[2, 5, 45]);

    let y = layer.forward(&Eager, &x).unwrap();
    assert_eq!(y.shape(), &[2, 5, 70]);
    let slice = layer.forward_outputs(&Eager, &x, 20, 61).unwrap();
    assert_eq!(slice.shape(), &[2, 5, 41]);
    for (got, want) in [
        (&y, reference(&x, &w, &b, 0..70)),
        (&slice, reference(&x, &w, &b, 20..61)),
    ] {
        for (g, r) in got.to_vec().iter().zip(&want) {
            assert!((g - r).abs() <= 1e-5 * (1.0 + r.abs()), "{g} vs {r}");
        }
    }
    let f32_y = plain.forward(&Eager, &x).unwrap();
    assert!(y.max_abs_diff(&f32_y).unwrap() > 0.0);

    let tape = Tape::new();
    let taped = layer.forward(&tape, &tape.constant(x.clone())).unwrap();
    assert_eq!(taped.value().to_vec(), f32_y.to_vec());
}
