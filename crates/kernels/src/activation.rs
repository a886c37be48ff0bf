//! Element-wise activations.

use crate::math;
use crate::parallel;
use crate::simd::{self, Isa, SimdKernel};

/// Exact (erf) GELU in place, `0.5 x (1 + erf(x / sqrt 2))`, as `nn.GELU()` computes it.
///
/// The erf is a rational-times-exponential approximation evaluated in f32: the absolute error
/// against an f64 GELU stays below about `2e-7 * max(1, |x|)`. Large buffers are split across
/// rayon's current pool.
pub fn gelu(x: &mut [f32]) {
    gelu_with(Isa::detected(), x);
}

/// [`gelu`] compiled for a given instruction set (for tests and benchmarks); falls back to the
/// portable build if the CPU lacks it.
pub fn gelu_with(isa: Isa, x: &mut [f32]) {
    parallel::for_row_blocks(x, 1, |block| simd::dispatch(isa, Gelu { x: block }));
}

/// Multiplies `grad` in place by the exact GELU's derivative at `x`, `Phi(x) + x phi(x)`:
/// the backward pass of [`gelu`], with the same erfc (absolute error below about
/// `3e-7 * max(1, |x|)`). Large buffers are split across rayon's current pool.
///
/// # Panics
/// If the lengths differ.
pub fn gelu_backward(x: &[f32], grad: &mut [f32]) {
    gelu_backward_with(Isa::detected(), x, grad);
}

/// [`gelu_backward`] compiled for a given instruction set (for tests and benchmarks).
pub fn gelu_backward_with(isa: Isa, x: &[f32], grad: &mut [f32]) {
    assert_eq!(
        x.len(),
        grad.len(),
        "gelu_backward: x and grad lengths differ"
    );
    parallel::for_row_blocks2(grad, x, 1, |grad, x| {
        simd::dispatch(isa, GeluGrad { x, grad })
    });
}

struct GeluGrad<'a> {
    x: &'a [f32],
    grad: &'a mut [f32],
}

impl SimdKernel for GeluGrad<'_> {
    type Output = ();

    #[inline(always)]
    fn run<const FMA: bool>(self) {
        for (g, &x) in self.grad.iter_mut().zip(self.x) {
            *g *= math::gelu_grad::<FMA>(x);
        }
    }
}

pub(crate) struct Gelu<'a> {
    pub(crate) x: &'a mut [f32],
}

impl SimdKernel for Gelu<'_> {
    type Output = ();

    #[inline(always)]
    fn run<const FMA: bool>(self) {
        for v in self.x.iter_mut() {
            *v = math::gelu::<FMA>(*v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference;
    use crate::testutil::{f32_vec, pool};
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn matches_reference(len in 0usize..70, seed in any::<u64>(), spread in prop_oneof![Just(1.0f32), Just(4.0), Just(12.0)]) {
            let input: Vec<f32> = f32_vec(seed, len).iter().map(|v| v * spread).collect();
            let mut want = input.clone();
            reference::gelu(&mut want);
            for isa in Isa::supported() {
                let mut got = input.clone();
                gelu_with(isa, &mut got);
                for ((g, w), x) in got.iter().zip(&want).zip(&input) {
                    let tol = 5e-7 * x.abs().max(1.0) as f64 + 1e-12;
                    prop_assert!(
                        (*g as f64 - *w as f64).abs() <= tol,
                        "{:?}: gelu({}) = {} want {}", isa, x, g, w
                    );
                }
            }
        }
    }

    proptest! {
        #[test]
        fn backward_matches_the_f64_derivative(len in 0usize..70, seed in any::<u64>(), spread in prop_oneof![Just(1.0f32), Just(4.0), Just(12.0)]) {
            let x: Vec<f32> = f32_vec(seed, len).iter().map(|v| v * spread).collect();
            let g: Vec<f32> = f32_vec(seed ^ 1, len);
            for isa in Isa::supported() {
                let mut got = g.clone();
                gelu_backward_with(isa, &x, &mut got);
                for ((got, &g), &x) in got.iter().zip(&g).zip(&x) {
                    let xd = f64::from(x);
                    let cdf = 0.5 * libm::erfc(-xd / std::f64::consts::SQRT_2);
                    let pdf = (-0.5 * xd * xd).exp() / (2.0 * std::f64::consts::PI).sqrt();
                    let want = f64::from(g) * (cdf + xd * pdf);
                    let tol = 4e-7 * xd.abs().max(1.0) * f64::from(g).abs() + 1e-12;
                    prop_assert!((f64::from(*got) - want).abs() <= tol, "{:?}: x {} g {}: {} want {}", isa, x, g, got, want);
                }
            }
        }
    }

    #[test]
    fn isas_agree_with_portable() {
        let input: Vec<f32> = f32_vec(21, 1001).iter().map(|v| v * 6.0).collect();
        let mut portable = input.clone();
        gelu_with(Isa::Portable, &mut portable);
        for isa in Isa::supported() {
            let mut got = input.clone();
            gelu_with(isa, &mut got);
            for (g, p) in got.iter().zip(&portable) {
                assert!(
                    (g - p).abs() <= 1e-6 * p.abs().max(1.0),
                    "{isa:?}: {g} vs portable {p}"
                );
            }
        }
    }

    #[test]
    fn large_buffers_split_across_threads_identically() {
        let input = f32_vec(8, 300_001);
        let mut serial = input.clone();
        for chunk in serial.chunks_mut(1000) {
            gelu(chunk);
        }
        let mut par = input;
        pool(3).install(|| gelu(&mut par));
        assert_eq!(serial, par);
    }
}
