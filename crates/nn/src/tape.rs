//! The training backend: layers run on an [`idlevit_autodiff::Tape`], which records every
//! operation for the backward pass.

use idlevit_autodiff::ops::Conv2dSpec;
use idlevit_autodiff::{Tape, Var};
use idlevit_tensor::Tensor;

use crate::{Backend, Param, Result};

/// Values are [`Var`]s; each operation is the tape's (the same forward maths as
/// [`Eager`](crate::Eager), plus a record). Parameters become tape leaves under their
/// checkpoint names, so [`Tape::backward`] reports gradients under timm's names.
impl Backend for Tape {
    type Value = Var;

    fn shape<'a>(&self, x: &'a Var) -> &'a [usize] {
        x.shape()
    }

    fn constant(&self, t: Tensor) -> Var {
        Tape::constant(self, t)
    }

    fn param(&self, p: &Param) -> Var {
        self.leaf(p.name(), p.value().clone())
    }

    fn to_tensor(&self, x: &Var) -> Tensor {
        Tape::to_tensor(self, x)
    }

    fn linear(&self, x: &Var, w: &Var, b: Option<&Var>) -> Result<Var> {
        Ok(Tape::linear(self, x, w, b)?)
    }

    fn layer_norm(&self, x: &Var, gamma: &Var, beta: &Var, eps: f32) -> Result<Var> {
        Ok(Tape::layer_norm(self, x, gamma, beta, eps)?)
    }

    fn gelu(&self, x: &Var) -> Result<Var> {
        Ok(Tape::gelu(self, x)?)
    }

    fn add(&self, a: &Var, b: &Var) -> Result<Var> {
        Ok(Tape::add(self, a, b)?)
    }

    fn sub(&self, a: &Var, b: &Var) -> Result<Var> {
        Ok(Tape::sub(self, a, b)?)
    }

    fn mul(&self, a: &Var, b: &Var) -> Result<Var> {
        Ok(Tape::mul(self, a, b)?)
    }

    fn scale(&self, x: &Var, factor: f32) -> Result<Var> {
        Ok(Tape::scale(self, x, factor)?)
    }

    fn matmul(&self, a: &Var, b: &Var) -> Result<Var> {
        Ok(Tape::matmul(self, a, b)?)
    }

    fn softmax(&self, x: &Var) -> Result<Var> {
        Ok(Tape::softmax(self, x)?)
    }

    fn log_softmax(&self, x: &Var) -> Result<Var> {
        Ok(Tape::log_softmax(self, x)?)
    }

    fn reshape(&self, x: &Var, shape: &[usize]) -> Result<Var> {
        Ok(Tape::reshape(self, x, shape)?)
    }

    fn permute(&self, x: &Var, axes: &[usize]) -> Result<Var> {
        Ok(Tape::permute(self, x, axes)?)
    }

    fn slice(&self, x: &Var, axis: usize, start: usize, end: usize) -> Result<Var> {
        Ok(Tape::slice(self, x, axis, start, end)?)
    }

    fn select(&self, x: &Var, axis: usize, index: usize) -> Result<Var> {
        Ok(Tape::select(self, x, axis, index)?)
    }

    fn broadcast_to(&self, x: &Var, shape: &[usize]) -> Result<Var> {
        Ok(Tape::broadcast_to(self, x, shape)?)
    }

    fn concat(&self, xs: &[Var], axis: usize) -> Result<Var> {
        Ok(Tape::concat(self, xs, axis)?)
    }

    fn gather_rows(&self, x: &Var, indices: &[Vec<usize>]) -> Result<Var> {
        Ok(Tape::gather_rows(self, x, indices)?)
    }

    fn scatter_rows(&self, x: &Var, indices: &[Vec<usize>], rows: &Var) -> Result<Var> {
        Ok(Tape::scatter_rows(self, x, indices, rows)?)
    }

    fn sum_axis(&self, x: &Var, axis: usize, keepdim: bool) -> Result<Var> {
        Ok(Tape::sum_axis(self, x, axis, keepdim)?)
    }

    fn sum_all(&self, x: &Var) -> Result<Var> {
        Ok(Tape::sum_all(self, x)?)
    }

    fn abs(&self, x: &Var) -> Result<Var> {
        Ok(Tape::abs(self, x)?)
    }

    fn square(&self, x: &Var) -> Result<Var> {
        Ok(Tape::square(self, x)?)
    }

    fn l2_normalize(&self, x: &Var, eps: f32) -> Result<Var> {
        Ok(Tape::l2_normalize(self, x, eps)?)
    }

    fn drop_path(&self, branch: &Var, rate: f32) -> Result<Var> {
        if rate <= 0.0 {
            return Ok(branch.clone());
        }
        let shape = branch.shape();
        let batch = shape.first().copied().unwrap_or(1);
        let Some(draws) = self.uniform(batch) else {
            return Ok(branch.clone());
        };
        let keep = 1.0 - rate;
        let factors = draws
            .into_iter()
            .map(|u| if u < keep { 1.0 / keep } else { 0.0 })
            .collect();
        let mut factor_shape = vec![1; shape.len()];
        if let Some(first) = factor_shape.first_mut() {
            *first = batch;
        }
        let factors = Tensor::from_vec(factor_shape, factors)?;
        Ok(Tape::mul(self, branch, &Tape::constant(self, factors))?)
    }

    fn conv2d(&self, x: &Var, w: &Var, b: Option<&Var>, spec: Conv2dSpec) -> Result<Var> {
        Ok(Tape::conv2d(self, x, w, b, spec)?)
    }

    fn relu(&self, x: &Var) -> Result<Var> {
        Ok(Tape::relu(self, x)?)
    }

    fn max_axis(&self, x: &Var, axis: usize) -> Result<Var> {
        Ok(Tape::max_axis(self, x, axis)?)
    }
}
