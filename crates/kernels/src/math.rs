//! Branch-free scalar maths that the loop vectoriser turns into SIMD code.
//!
//! No libm call appears here: each function is a handful of multiply-adds, compares and bit
//! casts, all `#[inline(always)]` so they vectorise inside the caller's loop.

/// Elements per accumulator block: one AVX-512 register, two AVX2 ones, four SSE ones.
pub(crate) const LANES: usize = 16;

/// `a * b + c`, fused where the instruction set has FMA (the portable build would otherwise
/// call a slow software fma).
#[inline(always)]
pub(crate) fn mul_add<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// `max(a, b)` for finite values; NaN in `b` is ignored, which is what a running maximum wants.
#[inline(always)]
pub(crate) fn max(a: f32, b: f32) -> f32 {
    if b > a { b } else { a }
}

/// Sum of `x`, accumulated in [`LANES`] independent partial sums.
#[inline(always)]
pub(crate) fn sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a += v;
        }
    }
    let mut total = reduce_sum(acc);
    for &v in tail {
        total += v;
    }
    total
}

/// Largest value of `x` (NaNs are skipped; `-inf` for an empty or all-NaN slice).
#[inline(always)]
pub(crate) fn max_of(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a = max(*a, v);
        }
    }
    let mut m = acc.into_iter().fold(f32::NEG_INFINITY, max);
    for &v in tail {
        m = max(m, v);
    }
    m
}

/// Pairwise sum of one accumulator block, so the rounding error grows with log of the lanes.
#[inline(always)]
pub(crate) fn reduce_sum(mut acc: [f32; LANES]) -> f32 {
    let mut width = LANES / 2;
    while width > 0 {
        for i in 0..width {
            acc[i] += acc[i + width];
        }
        width /= 2;
    }
    acc[0]
}

/// Below this, e^x is subnormal in f32 and is returned as zero.
const EXP_MIN_X: f32 = -87.336_55;
/// Above this the result is returned as +inf (it keeps 2^n within the normal exponents).
const EXP_MAX_X: f32 = 88.0;

/// e^x with a relative error of about 2 ulp on [-87.3, 88]; 0 below, +inf above, NaN for NaN.
///
/// x = n ln2 + r with n = round(x / ln2) and |r| <= ln2 / 2; e^r by its Taylor polynomial of
/// degree 7 (truncation error below 6e-9 relative), and 2^n built in the exponent bits.
#[inline(always)]
pub(crate) fn exp<const FMA: bool>(x: f32) -> f32 {
    // Adding 1.5 * 2^23 rounds to the nearest integer in the low mantissa bits, in one add.
    const ROUND: f32 = 12_582_912.0;
    // ln 2 split so that n * LN2_HI is exact for every n reached here.
    const LN2_HI: f32 = 355.0 / 512.0;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const C: [f32; 8] = [
        1.0,
        1.0,
        1.0 / 2.0,
        1.0 / 6.0,
        1.0 / 24.0,
        1.0 / 120.0,
        1.0 / 720.0,
        1.0 / 5040.0,
    ];

    let xc = if x < EXP_MIN_X { EXP_MIN_X } else { x };
    let xc = if xc > EXP_MAX_X { EXP_MAX_X } else { xc };
    let shifted = mul_add::<FMA>(xc, std::f32::consts::LOG2_E, ROUND);
    let n = shifted - ROUND;
    let r = mul_add::<FMA>(n, -LN2_HI, xc);
    let r = mul_add::<FMA>(n, -LN2_LO, r);
    let mut p = C[7];
    for &c in C[..7].iter().rev() {
        p = mul_add::<FMA>(p, r, c);
    }
    // The integer n sits in the low mantissa bits of `shifted`; move n + 127 to the exponent.
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let two_n = f32::from_bits(n_bits.wrapping_add(127) << 23);
    let e = p * two_n;
    if x < EXP_MIN_X {
        0.0
    } else if x > EXP_MAX_X {
        f32::INFINITY
    } else {
        e
    }
}

/// erfc(z) for z >= 0 by Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7).
#[inline(always)]
pub(crate) fn erfc_nonneg<const FMA: bool>(z: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_8,
        -1.453_152,
        1.061_405_4,
    ];
    let t = 1.0 / mul_add::<FMA>(P, z, 1.0);
    let mut poly = A[4];
    for &a in A[..4].iter().rev() {
        poly = mul_add::<FMA>(poly, t, a);
    }
    poly * t * exp::<FMA>(-(z * z))
}

/// GELU with the exact (erf) form, 0.5 x (1 + erf(x / sqrt 2)).
///
/// For negative x, 1 + erf(x / sqrt 2) is erfc(|x| / sqrt 2), computed directly so the result
/// keeps its small absolute error instead of losing it to cancellation.
#[inline(always)]
pub(crate) fn gelu<const FMA: bool>(x: f32) -> f32 {
    let q = erfc_nonneg::<FMA>(x.abs() * std::f32::consts::FRAC_1_SQRT_2);
    let one_plus_erf = if x >= 0.0 { 2.0 - q } else { q };
    0.5 * x * one_plus_erf
}

/// `1 / sqrt(2 pi)`, the peak of the standard normal density.
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// The derivative of the exact GELU, `Phi(x) + x phi(x)`: the normal CDF through the same
/// erfc as [`gelu`] (no cancellation for negative x), the density through [`exp`].
#[inline(always)]
pub(crate) fn gelu_grad<const FMA: bool>(x: f32) -> f32 {
    let q = erfc_nonneg::<FMA>(x.abs() * std::f32::consts::FRAC_1_SQRT_2);
    let cdf = 0.5 * if x >= 0.0 { 2.0 - q } else { q };
    let pdf = FRAC_1_SQRT_2PI * exp::<FMA>(-0.5 * x * x);
    mul_add::<FMA>(x, pdf, cdf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f64) -> f64 {
        let b32 = b as f32;
        let ulp = (f32::from_bits(b32.abs().to_bits() + 1) - b32.abs()) as f64;
        (a as f64 - b).abs() / ulp
    }

    /// Every 97th f32 in [-87.3, 88] against f64 exp.
    #[test]
    fn exp_is_within_three_ulp() {
        for fma in [false, true] {
            let mut worst = 0.0f64;
            let mut bits = 0u32;
            while bits < u32::MAX - 97 {
                let x = f32::from_bits(bits);
                bits += 97;
                if !(-87.3..=88.0).contains(&x) {
                    continue;
                }
                let got = if fma { exp::<true>(x) } else { exp::<false>(x) };
                worst = worst.max(ulps(got, (x as f64).exp()));
            }
            assert!(worst <= 3.0, "fma={fma}: worst error {worst} ulp");
        }
    }

    #[test]
    fn exp_edges() {
        assert_eq!(exp::<false>(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp::<false>(-100.0), 0.0);
        assert_eq!(exp::<false>(0.0), 1.0);
        assert_eq!(exp::<true>(f32::INFINITY), f32::INFINITY);
        assert!(exp::<false>(f32::NAN).is_nan());
    }

    #[test]
    fn gelu_is_within_its_bound() {
        for fma in [false, true] {
            let mut worst = 0.0f64;
            for i in -200_000..=200_000 {
                let x = i as f32 * 1e-4 * 1.7;
                let got = if fma {
                    gelu::<true>(x)
                } else {
                    gelu::<false>(x)
                } as f64;
                let xd = x as f64;
                let want = 0.5 * xd * (1.0 + libm::erf(xd / std::f64::consts::SQRT_2));
                worst = worst.max((got - want).abs() / xd.abs().max(1.0));
            }
            assert!(worst <= 2e-7, "fma={fma}: worst scaled error {worst}");
        }
    }

    #[test]
    fn gelu_grad_is_within_its_bound() {
        for fma in [false, true] {
            let mut worst = 0.0f64;
            for i in -200_000..=200_000 {
                let x = i as f32 * 1e-4 * 1.7;
                let got = if fma {
                    gelu_grad::<true>(x)
                } else {
                    gelu_grad::<false>(x)
                } as f64;
                let xd = x as f64;
                let cdf = 0.5 * libm::erfc(-xd / std::f64::consts::SQRT_2);
                let pdf = (-0.5 * xd * xd).exp() / (2.0 * std::f64::consts::PI).sqrt();
                worst = worst.max((got - (cdf + xd * pdf)).abs() / xd.abs().max(1.0));
            }
            assert!(worst <= 3e-7, "fma={fma}: worst scaled error {worst}");
        }
        assert_eq!(gelu_grad::<false>(-50.0), 0.0);
        assert_eq!(gelu_grad::<false>(50.0), 1.0);
        assert!(gelu_grad::<true>(f32::NAN).is_nan());
    }

    #[test]
    fn gelu_edges() {
        assert_eq!(gelu::<false>(0.0), 0.0);
        assert_eq!(gelu::<false>(f32::INFINITY), f32::INFINITY);
        assert_eq!(gelu::<false>(-50.0), 0.0);
        assert!(gelu::<false>(f32::NAN).is_nan());
    }
}
