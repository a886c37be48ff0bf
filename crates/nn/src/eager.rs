//! The inference backend: each operation computes its result at once on plain tensors.

use idlevit_autodiff::ops::{self, Conv2dSpec};
use idlevit_tensor::Tensor;

use idlevit_kernels::PackedBf16;
use std::ops::Range;

use crate::precision::linear_bf16_tensor;
use crate::{Backend, Param, Result};

/// Runs layer maths directly on [`Tensor`]s with the operations of
/// [`idlevit_autodiff::ops`] (the same functions a tape records); records nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct Eager;

impl Backend for Eager {
    type Value = Tensor;

    fn shape<'a>(&self, x: &'a Tensor) -> &'a [usize] {
        x.shape()
    }

    fn constant(&self, t: Tensor) -> Tensor {
        t
    }

    fn param(&self, p: &Param) -> Tensor {
        p.value().clone()
    }

    fn to_tensor(&self, x: &Tensor) -> Tensor {
        x.clone()
    }

    fn linear(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        Ok(ops::linear(x, w, b)?)
    }

    fn layer_norm(&self, x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<Tensor> {
        Ok(ops::layer_norm(x, gamma, beta, eps)?)
    }

    fn gelu(&self, x: &Tensor) -> Result<Tensor> {
        Ok(ops::gelu(x)?)
    }

    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        Ok(ops::add(a, b)?)
    }

    fn sub(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        Ok(ops::sub(a, b)?)
    }

    fn mul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        Ok(ops::mul(a, b)?)
    }

    fn scale(&self, x: &Tensor, factor: f32) -> Result<Tensor> {
        Ok(ops::scale(x, factor)?)
    }

    fn matmul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        Ok(ops::matmul(a, b)?)
    }

    fn softmax(&self, x: &Tensor) -> Result<Tensor> {
        Ok(ops::softmax(x)?)
    }

    fn log_softmax(&self, x: &Tensor) -> Result<Tensor> {
        Ok(ops::log_softmax(x)?)
    }

    fn reshape(&self, x: &Tensor, shape: &[usize]) -> Result<Tensor> {
        Ok(ops::reshape(x, shape)?)
    }

    fn permute(&self, x: &Tensor, axes: &[usize]) -> Result<Tensor> {
        Ok(ops::permute(x, axes)?)
    }

    fn slice(&self, x: &Tensor, axis: usize, start: usize, end: usize) -> Result<Tensor> {
        Ok(ops::slice(x, axis, start, end)?)
    }

    fn select(&self, x: &Tensor, axis: usize, index: usize) -> Result<Tensor> {
        Ok(ops::select(x, axis, index)?)
    }

    fn broadcast_to(&self, x: &Tensor, shape: &[usize]) -> Result<Tensor> {
        Ok(ops::broadcast_to(x, shape)?)
    }

    fn concat(&self, xs: &[Tensor], axis: usize) -> Result<Tensor> {
        Ok(ops::concat(xs, axis)?)
    }

    fn gather_rows(&self, x: &Tensor, indices: &[Vec<usize>]) -> Result<Tensor> {
        Ok(ops::gather_rows(x, indices)?)
    }

    fn scatter_rows(&self, x: &Tensor, indices: &[Vec<usize>], rows: &Tensor) -> Result<Tensor> {
        Ok(ops::scatter_rows(x, indices, rows)?)
    }

    fn sum_axis(&self, x: &Tensor, axis: usize, keepdim: bool) -> Result<Tensor> {
        Ok(ops::sum_axis(x, axis, keepdim)?)
    }

    fn sum_all(&self, x: &Tensor) -> Result<Tensor> {
        Ok(ops::sum_all(x)?)
    }

    fn abs(&self, x: &Tensor) -> Result<Tensor> {
        Ok(ops::abs(x)?)
    }

    fn square(&self, x: &Tensor) -> Result<Tensor> {
        Ok(ops::square(x)?)
    }

    fn l2_normalize(&self, x: &Tensor, eps: f32) -> Result<Tensor> {
        Ok(ops::l2_normalize(x, eps)?)
    }

    fn conv2d(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        spec: Conv2dSpec,
    ) -> Result<Tensor> {
        Ok(ops::conv2d(x, w, b, spec)?)
    }

    fn relu(&self, x: &Tensor) -> Result<Tensor> {
        Ok(ops::relu(x)?)
    }

    fn max_axis(&self, x: &Tensor, axis: usize) -> Result<Tensor> {
        Ok(ops::max_axis(x, axis)?)
    }

    fn linear_packed(
        &self,
        x: &Tensor,
        packed: &PackedBf16,
        cols: Range<usize>,
        _w: &Tensor,
        b: Option<&Tensor>,
    ) -> Result<Tensor> {
        linear_bf16_tensor(x, packed, cols, b)
    }
}
