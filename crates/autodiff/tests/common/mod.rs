//! Finite-difference gradient checking.
//!
//! Every check is one expression written against [`Ops`], evaluated twice: on the tape (f32,
//! analytic gradients) and on [`Ref`], a direct f64 implementation of each operation on
//! `ndarray` arrays. The loss is a random projection `sum(y * R)`; its gradient with respect
//! to every input element is estimated by central differences of the f64 reference, where a
//! step of 1e-6 is both small enough for the truncation error and large enough for rounding,
//! and compared with the tape's.

#![allow(dead_code)]

use idlevit_autodiff::ops::Conv2dSpec;
use idlevit_autodiff::{Backend, Tape, Tensor, Var};
use ndarray::{ArrayD, Axis, Ix2, IxDyn, Slice};
use proptest::prelude::*;

/// An f64 array.
pub type Arr = ArrayD<f64>;

/// A small deterministic generator (SplitMix64).
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// A tensor of `shape` with values uniform in `[-scale, scale)`.
    pub fn tensor(&mut self, shape: &[usize], scale: f32) -> Tensor {
        let n = shape.iter().product();
        let values = (0..n).map(|_| self.uniform() * scale).collect();
        Tensor::from_vec(shape.to_vec(), values).unwrap()
    }

    /// A value below `n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// The operations, for the tape and for the f64 reference alike.
pub trait Ops {
    type V: Clone;
    fn constant(&self, t: &Tensor) -> Self::V;
    fn linear(&self, x: &Self::V, w: &Self::V, b: Option<&Self::V>) -> Self::V;
    fn layer_norm(&self, x: &Self::V, g: &Self::V, b: &Self::V, eps: f32) -> Self::V;
    fn gelu(&self, x: &Self::V) -> Self::V;
    fn add(&self, a: &Self::V, b: &Self::V) -> Self::V;
    fn sub(&self, a: &Self::V, b: &Self::V) -> Self::V;
    fn mul(&self, a: &Self::V, b: &Self::V) -> Self::V;
    fn scale(&self, x: &Self::V, f: f32) -> Self::V;
    fn matmul(&self, a: &Self::V, b: &Self::V) -> Self::V;
    fn softmax(&self, x: &Self::V) -> Self::V;
    fn log_softmax(&self, x: &Self::V) -> Self::V;
    fn reshape(&self, x: &Self::V, shape: &[usize]) -> Self::V;
    fn permute(&self, x: &Self::V, axes: &[usize]) -> Self::V;
    fn slice(&self, x: &Self::V, axis: usize, start: usize, end: usize) -> Self::V;
    fn select(&self, x: &Self::V, axis: usize, index: usize) -> Self::V;
    fn broadcast_to(&self, x: &Self::V, shape: &[usize]) -> Self::V;
    fn concat(&self, xs: &[Self::V], axis: usize) -> Self::V;
    fn gather_rows(&self, x: &Self::V, idx: &[Vec<usize>]) -> Self::V;
    fn scatter_rows(&self, x: &Self::V, idx: &[Vec<usize>], rows: &Self::V) -> Self::V;
    fn sum_axis(&self, x: &Self::V, axis: usize, keepdim: bool) -> Self::V;
    fn sum_all(&self, x: &Self::V) -> Self::V;
    fn abs(&self, x: &Self::V) -> Self::V;
    fn square(&self, x: &Self::V) -> Self::V;
    fn l2_normalize(&self, x: &Self::V, eps: f32) -> Self::V;
    fn conv2d(&self, x: &Self::V, w: &Self::V, b: Option<&Self::V>, spec: Conv2dSpec) -> Self::V;
    fn relu(&self, x: &Self::V) -> Self::V;
    fn max_axis(&self, x: &Self::V, axis: usize) -> Self::V;
}

/// The tape, seen through [`Ops`] (a wrapper, since `Tape`'s own methods return `Result`).
pub struct OnTape<'t>(pub &'t Tape);

impl Ops for OnTape<'_> {
    type V = Var;
    fn constant(&self, t: &Tensor) -> Var {
        self.0.constant(t.clone())
    }
    fn linear(&self, x: &Var, w: &Var, b: Option<&Var>) -> Var {
        self.0.linear(x, w, b).unwrap()
    }
    fn layer_norm(&self, x: &Var, g: &Var, b: &Var, eps: f32) -> Var {
        self.0.layer_norm(x, g, b, eps).unwrap()
    }
    fn gelu(&self, x: &Var) -> Var {
        self.0.gelu(x).unwrap()
    }
    fn add(&self, a: &Var, b: &Var) -> Var {
        self.0.add(a, b).unwrap()
    }
    fn sub(&self, a: &Var, b: &Var) -> Var {
        self.0.sub(a, b).unwrap()
    }
    fn mul(&self, a: &Var, b: &Var) -> Var {
        self.0.mul(a, b).unwrap()
    }
    fn scale(&self, x: &Var, f: f32) -> Var {
        self.0.scale(x, f).unwrap()
    }
    fn matmul(&self, a: &Var, b: &Var) -> Var {
        self.0.matmul(a, b).unwrap()
    }
    fn softmax(&self, x: &Var) -> Var {
        self.0.softmax(x).unwrap()
    }
    fn log_softmax(&self, x: &Var) -> Var {
        self.0.log_softmax(x).unwrap()
    }
    fn reshape(&self, x: &Var, shape: &[usize]) -> Var {
        self.0.reshape(x, shape).unwrap()
    }
    fn permute(&self, x: &Var, axes: &[usize]) -> Var {
        self.0.permute(x, axes).unwrap()
    }
    fn slice(&self, x: &Var, axis: usize, start: usize, end: usize) -> Var {
        self.0.slice(x, axis, start, end).unwrap()
    }
    fn select(&self, x: &Var, axis: usize, index: usize) -> Var {
        self.0.select(x, axis, index).unwrap()
    }
    fn broadcast_to(&self, x: &Var, shape: &[usize]) -> Var {
        self.0.broadcast_to(x, shape).unwrap()
    }
    fn concat(&self, xs: &[Var], axis: usize) -> Var {
        self.0.concat(xs, axis).unwrap()
    }
    fn gather_rows(&self, x: &Var, idx: &[Vec<usize>]) -> Var {
        self.0.gather_rows(x, idx).unwrap()
    }
    fn scatter_rows(&self, x: &Var, idx: &[Vec<usize>], rows: &Var) -> Var {
        self.0.scatter_rows(x, idx, rows).unwrap()
    }
    fn sum_axis(&self, x: &Var, axis: usize, keepdim: bool) -> Var {
        self.0.sum_axis(x, axis, keepdim).unwrap()
    }
    fn sum_all(&self, x: &Var) -> Var {
        self.0.sum_all(x).unwrap()
    }
    fn abs(&self, x: &Var) -> Var {
        self.0.abs(x).unwrap()
    }
    fn square(&self, x: &Var) -> Var {
        self.0.square(x).unwrap()
    }
    fn l2_normalize(&self, x: &Var, eps: f32) -> Var {
        self.0.l2_normalize(x, eps).unwrap()
    }
    fn conv2d(&self, x: &Var, w: &Var, b: Option<&Var>, spec: Conv2dSpec) -> Var {
        self.0.conv2d(x, w, b, spec).unwrap()
    }
    fn relu(&self, x: &Var) -> Var {
        self.0.relu(x).unwrap()
    }
    fn max_axis(&self, x: &Var, axis: usize) -> Var {
        self.0.max_axis(x, axis).unwrap()
    }
}

/// The f64 reference: each operation written directly from its definition.
pub struct Ref;

/// `a` with its elements (in logical order) under `shape`.
fn with_shape(a: &Arr, shape: &[usize]) -> Arr {
    ArrayD::from_shape_vec(IxDyn(shape), a.iter().copied().collect()).unwrap()
}

/// Applies `f` to every row of the last axis.
fn map_rows(a: &Arr, f: impl Fn(&[f64]) -> Vec<f64>) -> Arr {
    let n = *a.shape().last().unwrap();
    let values: Vec<f64> = a.iter().copied().collect();
    let out: Vec<f64> = if n == 0 {
        values
    } else {
        values.chunks(n).flat_map(&f).collect()
    };
    ArrayD::from_shape_vec(a.raw_dim(), out).unwrap()
}

/// The last two axes of `a` as matrices, and the leading shape.
fn matrices(a: &Arr) -> (Vec<usize>, Vec<ndarray::Array2<f64>>) {
    let r = a.ndim();
    let (m, n) = (a.shape()[r - 2], a.shape()[r - 1]);
    let lead = a.shape()[..r - 2].to_vec();
    let count = lead.iter().product::<usize>();
    let flat = with_shape(a, &[count, m, n]);
    let mats = (0..count)
        .map(|i| {
            flat.index_axis(Axis(0), i)
                .to_owned()
                .into_dimensionality::<Ix2>()
                .unwrap()
        })
        .collect();
    (lead, mats)
}

fn broadcast(b: &Arr, shape: &[usize]) -> Arr {
    b.broadcast(IxDyn(shape)).unwrap().to_owned()
}

impl Ops for Ref {
    type V = Arr;
    fn constant(&self, t: &Tensor) -> Arr {
        to_f64(t)
    }
    fn linear(&self, x: &Arr, w: &Arr, b: Option<&Arr>) -> Arr {
        let (out, inp) = (w.shape()[0], w.shape()[1]);
        let rows = x.len() / inp.max(1);
        let x2 = with_shape(x, &[rows, inp])
            .into_dimensionality::<Ix2>()
            .unwrap();
        let w2 = w.clone().into_dimensionality::<Ix2>().unwrap();
        let mut y = x2.dot(&w2.t());
        if let Some(b) = b {
            y += &b.clone().into_dimensionality::<ndarray::Ix1>().unwrap();
        }
        let mut shape = x.shape().to_vec();
        *shape.last_mut().unwrap() = out;
        with_shape(&y.into_dyn(), &shape)
    }
    fn layer_norm(&self, x: &Arr, g: &Arr, b: &Arr, eps: f32) -> Arr {
        let (g, b) = (g.as_slice().unwrap(), b.as_slice().unwrap());
        map_rows(x, |row| {
            let n = row.len() as f64;
            let mean = row.iter().sum::<f64>() / n;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
            let rstd = 1.0 / (var + eps as f64).sqrt();
            row.iter()
                .enumerate()
                .map(|(j, v)| (v - mean) * rstd * g[j] + b[j])
                .collect()
        })
    }
    fn gelu(&self, x: &Arr) -> Arr {
        x.mapv(|v| 0.5 * v * (1.0 + libm::erf(v / std::f64::consts::SQRT_2)))
    }
    fn add(&self, a: &Arr, b: &Arr) -> Arr {
        a + &broadcast(b, a.shape())
    }
    fn sub(&self, a: &Arr, b: &Arr) -> Arr {
        a - &broadcast(b, a.shape())
    }
    fn mul(&self, a: &Arr, b: &Arr) -> Arr {
        a * &broadcast(b, a.shape())
    }
    fn scale(&self, x: &Arr, f: f32) -> Arr {
        x * f as f64
    }
    fn matmul(&self, a: &Arr, b: &Arr) -> Arr {
        let (lead, am) = matrices(a);
        let (_, bm) = matrices(b);
        let (m, n) = (am[0].nrows(), bm[0].ncols());
        let values: Vec<f64> = am
            .iter()
            .zip(&bm)
            .flat_map(|(a, b)| a.dot(b).iter().copied().collect::<Vec<_>>())
            .collect();
        let mut shape = lead;
        shape.extend([m, n]);
        ArrayD::from_shape_vec(IxDyn(&shape), values).unwrap()
    }
    fn softmax(&self, x: &Arr) -> Arr {
        map_rows(x, |row| {
            let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = row.iter().map(|v| (v - max).exp()).collect();
            let s: f64 = e.iter().sum();
            e.iter().map(|v| v / s).collect()
        })
    }
    fn log_softmax(&self, x: &Arr) -> Arr {
        map_rows(x, |row| {
            let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
            row.iter().map(|v| v - lse).collect()
        })
    }
    fn reshape(&self, x: &Arr, shape: &[usize]) -> Arr {
        with_shape(x, shape)
    }
    fn permute(&self, x: &Arr, axes: &[usize]) -> Arr {
        x.clone()
            .permuted_axes(IxDyn(axes))
            .as_standard_layout()
            .to_owned()
    }
    fn slice(&self, x: &Arr, axis: usize, start: usize, end: usize) -> Arr {
        x.slice_axis(Axis(axis), Slice::from(start..end)).to_owned()
    }
    fn select(&self, x: &Arr, axis: usize, index: usize) -> Arr {
        x.index_axis(Axis(axis), index).to_owned()
    }
    fn broadcast_to(&self, x: &Arr, shape: &[usize]) -> Arr {
        broadcast(x, shape)
    }
    fn concat(&self, xs: &[Arr], axis: usize) -> Arr {
        let views: Vec<_> = xs.iter().map(|x| x.view()).collect();
        ndarray::concatenate(Axis(axis), &views).unwrap()
    }
    fn gather_rows(&self, x: &Arr, idx: &[Vec<usize>]) -> Arr {
        let (b, c) = (x.shape()[0], x.shape()[2]);
        let p = idx[0].len();
        let mut out = ArrayD::zeros(IxDyn(&[b, p, c]));
        for (bi, item) in idx.iter().enumerate() {
            for (i, &r) in item.iter().enumerate() {
                for j in 0..c {
                    out[[bi, i, j]] = x[[bi, r, j]];
                }
            }
        }
        out
    }
    fn scatter_rows(&self, x: &Arr, idx: &[Vec<usize>], rows: &Arr) -> Arr {
        let mut out = x.clone();
        for (bi, item) in idx.iter().enumerate() {
            for (i, &r) in item.iter().enumerate() {
                for j in 0..x.shape()[2] {
                    out[[bi, r, j]] = rows[[bi, i, j]];
                }
            }
        }
        out
    }
    fn sum_axis(&self, x: &Arr, axis: usize, keepdim: bool) -> Arr {
        let s = x.sum_axis(Axis(axis));
        if keepdim {
            s.insert_axis(Axis(axis))
        } else {
            s
        }
    }
    fn sum_all(&self, x: &Arr) -> Arr {
        ArrayD::from_elem(IxDyn(&[]), x.sum())
    }
    fn abs(&self, x: &Arr) -> Arr {
        x.mapv(f64::abs)
    }
    fn square(&self, x: &Arr) -> Arr {
        x.mapv(|v| v * v)
    }
    fn l2_normalize(&self, x: &Arr, eps: f32) -> Arr {
        map_rows(x, |row| {
            let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
            let d = norm.max(eps as f64);
            row.iter().map(|v| v / d).collect()
        })
    }
    /// The convolution sum written out: every output, every tap, zero padding by skipping.
    fn conv2d(&self, x: &Arr, w: &Arr, b: Option<&Arr>, spec: Conv2dSpec) -> Arr {
        let (batch, cin, h, wd) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
        let (cout, cig, kh, kw) = (w.shape()[0], w.shape()[1], w.shape()[2], w.shape()[3]);
        let (s, p, g) = (spec.stride, spec.padding as isize, spec.groups);
        let oh = (h + 2 * spec.padding - kh) / s + 1;
        let ow = (wd + 2 * spec.padding - kw) / s + 1;
        let cog = cout / g;
        assert_eq!(cig * g, cin);
        let mut out = ArrayD::zeros(IxDyn(&[batch, cout, oh, ow]));
        for n in 0..batch {
            for o in 0..cout {
                let grp = o / cog;
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = b.map_or(0.0, |b| b[[o]]);
                        for c in 0..cig {
                            for i in 0..kh {
                                for j in 0..kw {
                                    let y = (oy * s + i) as isize - p;
                                    let xx = (ox * s + j) as isize - p;
                                    if y >= 0 && xx >= 0 && (y as usize) < h && (xx as usize) < wd {
                                        acc += w[[o, c, i, j]]
                                            * x[[n, grp * cig + c, y as usize, xx as usize]];
                                    }
                                }
                            }
                        }
                        out[[n, o, oy, ox]] = acc;
                    }
                }
            }
        }
        out
    }
    fn relu(&self, x: &Arr) -> Arr {
        x.mapv(|v| v.max(0.0))
    }
    fn max_axis(&self, x: &Arr, axis: usize) -> Arr {
        x.map_axis(Axis(axis), |lane| {
            lane.iter().copied().fold(f64::NEG_INFINITY, f64::max)
        })
    }
}

pub fn to_f64(t: &Tensor) -> Arr {
    t.view().mapv(f64::from)
}

/// Writes `$o` and `$x` once, as the tape and the reference: `check!(label, inputs, leaves,
/// seed, |o, x| expression)`.
#[macro_export]
macro_rules! check {
    ($label:expr, $inputs:expr, $leaves:expr, $seed:expr, |$o:ident, $x:ident| $body:expr) => {
        $crate::common::check(
            $label,
            &$inputs,
            &$leaves,
            $seed,
            |$o: &$crate::common::OnTape, $x: &[idlevit_autodiff::Var]| $body,
            |$o: &$crate::common::Ref, $x: &[$crate::common::Arr]| $body,
        )
    };
}

/// Relative tolerance of the gradient as a whole (norm of the error over norm of the
/// gradient), and of each element against the largest gradient element.
const GRAD_TOL: f64 = 1e-4;

/// Checks the forward value against the reference and every leaf input's gradient of
/// `sum(y * R)` against central differences of the reference. `leaves[i]` says whether input
/// `i` is a parameter (named `in{i}`) or a constant (which must then get no gradient).
pub fn check(
    label: &str,
    inputs: &[Tensor],
    leaves: &[bool],
    seed: u64,
    on_tape: impl Fn(&OnTape, &[Var]) -> Var,
    reference: impl Fn(&Ref, &[Arr]) -> Arr,
) -> Result<(), TestCaseError> {
    let tape = Tape::new();
    let vars: Vec<Var> = inputs
        .iter()
        .zip(leaves)
        .enumerate()
        .map(|(i, (t, &leaf))| {
            if leaf {
                tape.leaf(&format!("in{i}"), t.clone())
            } else {
                tape.constant(t.clone())
            }
        })
        .collect();
    let y = on_tape(&OnTape(&tape), &vars);
    let xs: Vec<Arr> = inputs.iter().map(to_f64).collect();
    let want = reference(&Ref, &xs);
    prop_assert_eq!(y.shape(), want.shape(), "{}: forward shape", label);
    let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    for (got, want) in y.value().view().iter().zip(want.iter()) {
        prop_assert!(
            (f64::from(*got) - want).abs() <= 1e-4 * scale,
            "{}: forward {} vs reference {}",
            label,
            got,
            want
        );
    }

    let r = Rng(seed ^ 0xABCD).tensor(y.shape(), 1.0);
    let loss = tape
        .sum_all(&tape.mul(&y, &tape.constant(r.clone())).unwrap())
        .unwrap();
    let grads = tape.backward(&loss).unwrap();
    let r64 = to_f64(&r);
    let objective = |xs: &[Arr]| (reference(&Ref, xs) * &r64).sum();

    const STEP: f64 = 1e-6;
    for (i, leaf) in leaves.iter().enumerate() {
        let name = format!("in{i}");
        if !leaf {
            prop_assert!(
                grads.get(&name).is_none(),
                "{}: constant {} has a gradient",
                label,
                i
            );
            continue;
        }
        let analytic = grads.get(&name).unwrap();
        prop_assert_eq!(
            analytic.shape(),
            inputs[i].shape(),
            "{}: gradient shape",
            label
        );
        let analytic: Vec<f64> = analytic.to_vec().into_iter().map(f64::from).collect();
        let mut numeric = Vec::with_capacity(analytic.len());
        let mut probe = xs.clone();
        let flat_len = probe[i].len();
        for j in 0..flat_len {
            let original = probe[i].as_slice().unwrap()[j];
            probe[i].as_slice_mut().unwrap()[j] = original + STEP;
            let up = objective(&probe);
            probe[i].as_slice_mut().unwrap()[j] = original - STEP;
            let down = objective(&probe);
            probe[i].as_slice_mut().unwrap()[j] = original;
            numeric.push((up - down) / (2.0 * STEP));
        }
        let norm = numeric.iter().map(|v| v * v).sum::<f64>().sqrt();
        let largest = numeric.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let err = analytic
            .iter()
            .zip(&numeric)
            .map(|(a, n)| (a - n).powi(2))
            .sum::<f64>()
            .sqrt();
        prop_assert!(
            err <= GRAD_TOL * norm + 1e-6,
            "{}: gradient of input {}: |analytic - numeric| = {:e}, |numeric| = {:e}\nanalytic {:?}\nnumeric  {:?}",
            label,
            i,
            err,
            norm,
            analytic,
            numeric
        );
        for (j, (a, n)) in analytic.iter().zip(&numeric).enumerate() {
            prop_assert!(
                (a - n).abs() <= GRAD_TOL * (largest + n.abs()) + 1e-6,
                "{}: gradient of input {} element {}: analytic {} numeric {}",
                label,
                i,
                j,
                a,
                n
            );
        }
    }
    Ok(())
}
