//! Gradients of the element-wise functions: `dx = dy * f'(x)`.

use idlevit_tensor::Tensor;

use crate::parallel::for_row_blocks;
use crate::{AutodiffError, Result};

/// `out[i] = f(x[i], g[i])` into a fresh tensor of `x`'s shape, in parallel when large.
fn zip_map(x: &Tensor, g: &Tensor, f: impl Fn(f32, f32) -> f32 + Sync + Send) -> Result<Tensor> {
    if x.shape() != g.shape() {
        return Err(AutodiffError::shape(
            "element-wise gradient",
            format!("{:?}", x.shape()),
            g.shape(),
        ));
    }
    let (x, g) = (x.contiguous(), g.contiguous());
    let (xs, gs) = (&x.contiguous_values(), &g.contiguous_values());
    let mut out = vec![0.0; xs.len()];
    for_row_blocks(&mut out, 1, |start, block| {
        let end = start + block.len();
        for ((o, &x), &g) in block.iter_mut().zip(&xs[start..end]).zip(&gs[start..end]) {
            *o = f(x, g);
        }
    });
    Ok(Tensor::from_vec(x.shape().to_vec(), out)?)
}

/// GELU: `d/dx [x Phi(x)] = Phi(x) + x phi(x)`, by the vectorised kernel.
pub(super) fn gelu(x: &Tensor, g: &Tensor) -> Result<Tensor> {
    if x.shape() != g.shape() {
        return Err(AutodiffError::shape(
            "GELU gradient",
            format!("{:?}", x.shape()),
            g.shape(),
        ));
    }
    let x = x.contiguous();
    let mut out = g.contiguous();
    idlevit_kernels::gelu_backward(&x.contiguous_values(), out.as_mut_slice());
    Ok(out)
}

/// `|x|`: the sign of `x`, taking 0 at 0 (the subgradient torch uses); NaN stays NaN.
pub(super) fn abs(x: &Tensor, g: &Tensor) -> Result<Tensor> {
    zip_map(x, g, |x, g| {
        let sign = if x > 0.0 {
            1.0
        } else if x < 0.0 {
            -1.0
        } else {
            // 0 for ±0, NaN for NaN.
            x * 0.0
        };
        g * sign
    })
}

/// `x^2`: `2 x`.
pub(super) fn square(x: &Tensor, g: &Tensor) -> Result<Tensor> {
    zip_map(x, g, |x, g| 2.0 * x * g)
}

/// ReLU from its output `y`: the gradient passes where `y > 0` (0 at the kink, as torch).
pub(super) fn relu(y: &Tensor, g: &Tensor) -> Result<Tensor> {
    zip_map(y, g, |y, g| if y > 0.0 { g } else { 0.0 })
}
