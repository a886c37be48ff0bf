//! Element-wise arithmetic, with the second operand broadcast to the first one's shape.

use idlevit_kernels as kernels;
use idlevit_tensor::Tensor;

use crate::{OpsError, Result};

/// `f(a, b)` element by element, with `b` broadcast to `a`'s shape, into a fresh tensor.
pub fn zip_broadcast(
    a: &Tensor,
    b: &Tensor,
    op: &str,
    f: impl Fn(f32, f32) -> f32,
) -> Result<Tensor> {
    let b = b.broadcast_to(a.shape()).map_err(|_| {
        OpsError::shape(
            op,
            format!("a shape that broadcasts to {:?}", a.shape()),
            b.shape(),
        )
    })?;
    if let (Some(x), Some(y)) = (a.as_slice(), b.as_slice()) {
        let out = x.iter().zip(y).map(|(&x, &y)| f(x, y)).collect();
        return Ok(Tensor::from_vec(a.shape().to_vec(), out)?);
    }
    let out = ndarray::Zip::from(&a.view())
        .and(&b.view())
        .map_collect(|&x, &y| f(x, y));
    Ok(Tensor::from_array(out))
}

/// `a + b`, with `b` broadcast to `a`'s shape (size-1 axes or missing leading axes).
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.shape() == b.shape()
        && let (Some(_), Some(y)) = (a.as_slice(), b.as_slice())
    {
        // `as_mut_slice` copies the shared storage once; the sum then runs in place on it.
        let mut out = a.clone();
        kernels::add_assign(out.as_mut_slice(), y);
        return Ok(out);
    }
    zip_broadcast(a, b, "add", |x, y| x + y)
}

/// `a - b`, with `b` broadcast to `a`'s shape.
pub fn sub(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    zip_broadcast(a, b, "sub", |x, y| x - y)
}

/// `a * b` element-wise, with `b` broadcast to `a`'s shape.
pub fn mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    zip_broadcast(a, b, "mul", |x, y| x * y)
}

/// `x * factor`.
pub fn scale(x: &Tensor, factor: f32) -> Result<Tensor> {
    let mut y = x.contiguous();
    kernels::scale(y.as_mut_slice(), factor);
    Ok(y)
}

/// GELU with the exact erf, `0.5 x (1 + erf(x / sqrt 2))`.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    let mut y = x.contiguous();
    kernels::gelu(y.as_mut_slice());
    Ok(y)
}

/// `|x|`.
pub fn abs(x: &Tensor) -> Result<Tensor> {
    Ok(x.map(f32::abs))
}

/// `x * x`.
pub fn square(x: &Tensor) -> Result<Tensor> {
    Ok(x.map(|v| v * v))
}

/// `max(x, 0)`.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    Ok(x.map(|v| v.max(0.0)))
}
