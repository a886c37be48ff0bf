use super::*;
use crate::reference;
use crate::testutil::{f32_vec, pool};
use proptest::prelude::*;

/// The kernels this CPU can run (the portable one and the modelled tiles always).
pub(super) fn kernels() -> Vec<Bf16Kernel> {
    [
        Bf16Kernel::Portable,
        Bf16Kernel::Avx512Bf16,
        Bf16Kernel::Amx,
        Bf16Kernel::AmxModel,
    ]
    .into_iter()
    .filter(|k| k.is_supported())
    .collect()
}

/// Bound on the f32 accumulation error of one output: `k` roundings of partial sums no larger
/// than the sum of absolute products (plus the bias), with a factor 2 of slack.
pub(super) fn bound(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    i: usize,
    j: usize,
    k: usize,
) -> f32 {
    let round = |v: f32| from_bf16(to_bf16(v)).abs();
    let abs: f32 = (0..k)
        .map(|p| round(x[i * k + p]) * round(w[j * k + p]))
        .sum();
    let total = abs + bias.map_or(0.0, |b| b[j].abs());
    2.0 * (k + 2) as f32 * f32::EPSILON / 2.0 * total + 1e-30
}

/// Runs `kernel` on `threads` threads for output features `cols` and checks every output
/// against the f64 reference on bf16-rounded inputs.
#[allow(clippy::too_many_arguments)]
fn check(
    kernel: Bf16Kernel,
    threads: usize,
    m: usize,
    k: usize,
    n: usize,
    cols: Range<usize>,
    with_bias: bool,
    accumulate: bool,
    seed: u64,
) -> Result<(), TestCaseError> {
    let x = f32_vec(seed, m * k);
    let w = f32_vec(seed ^ 7, n * k);
    let bias = with_bias.then(|| f32_vec(seed ^ 11, n));
    let packed = PackedBf16::pack(&w, n, k).unwrap();
    let width = cols.len();
    // Overwriting must ignore what is there (NaN would show); accumulating must add to it.
    let start = if accumulate {
        f32_vec(seed ^ 13, m * width)
    } else {
        vec![f32::NAN; m * width]
    };
    let mut y = start.clone();
    let b = bias.as_ref().map(|b| &b[cols.clone()]);
    let call = Bf16Call {
        cols: cols.clone(),
        bias: b,
        m,
        accumulate,
    };
    pool(threads).install(|| run(kernel, threads, &mut y, &x, &packed, call));
    let expected = reference::linear_bf16(&x, &w, bias.as_deref(), m, k, n);
    for i in 0..m {
        for (jj, j) in cols.clone().enumerate() {
            let before = if accumulate {
                start[i * width + jj]
            } else {
                0.0
            };
            let (got, want) = (y[i * width + jj], before + expected[i * n + j]);
            let tol = bound(&x, &w, bias.as_deref(), i, j, k) + 4.0 * f32::EPSILON * want.abs();
            prop_assert!(
                (got - want).abs() <= tol,
                "{kernel:?} {threads}t m={m} k={k} n={n} cols={cols:?}: y[{i},{j}] = {got}, \
                 reference {want}, tolerance {tol}"
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn rounding_matches_half(bits in any::<u32>()) {
        let x = f32::from_bits(bits);
        let ours = to_bf16(x);
        let theirs = half::bf16::from_f32(x);
        if x.is_nan() {
            prop_assert!(from_bf16(ours).is_nan());
        } else {
            prop_assert_eq!(ours, theirs.to_bits(), "{:e}", x);
        }
    }

    #[test]
    fn matches_reference_on_small_shapes(
        m in 1usize..30,
        k in 1usize..70,
        n in 1usize..90,
        start_frac in 0.0f64..1.0,
        len_frac in 0.0f64..=1.0,
        with_bias in any::<bool>(),
        accumulate in any::<bool>(),
        threads in 1usize..=2,
        seed in any::<u64>(),
    ) {
        let start = ((n as f64 * start_frac) as usize).min(n - 1);
        let end = start + ((n - start) as f64 * len_frac).ceil().max(1.0) as usize;
        for kernel in kernels() {
            check(kernel, threads, m, k, n, 0..n, with_bias, accumulate, seed)?;
            check(kernel, threads, m, k, n, start..end.min(n), with_bias, accumulate, seed)?;
        }
    }
}

#[test]
fn matches_reference_across_cache_blocks_and_tasks() {
    // Three row blocks (the last partial), three feature blocks with an odd tail, a panel
    // tail, and a column range starting inside a panel.
    let (m, k, n) = (2 * MC + 17, 2 * KC + 9, 3 * PANEL + 5);
    for kernel in kernels() {
        for threads in [1, 2] {
            check(kernel, threads, m, k, n, 0..n, true, false, 5).unwrap();
            check(kernel, threads, m, k, n, 40..n - 3, false, false, 6).unwrap();
            check(kernel, threads, m, k, n, 7..n, true, true, 7).unwrap();
        }
    }
}

#[test]
fn kernels_agree_closely() {
    let (m, k, n) = (MC + 5, 384, 2 * PANEL);
    let x = f32_vec(1, m * k);
    let packed = PackedBf16::pack(&f32_vec(2, n * k), n, k).unwrap();
    let outputs: Vec<Vec<f32>> = kernels()
        .into_iter()
        .map(|kernel| {
            let mut y = vec![0.0; m * n];
            let call = Bf16Call {
                cols: 0..n,
                bias: None,
                m,
                accumulate: false,
            };
            run(kernel, 1, &mut y, &x, &packed, call);
            y
        })
        .collect();
    for y in &outputs[1..] {
        for (a, b) in y.iter().zip(&outputs[0]) {
            assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }
}

#[test]
fn public_entry_points_check_lengths() {
    let packed = PackedBf16::pack(&[1.0; 6], 2, 3).unwrap();
    let mut y = [0.0; 4];
    let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    linear_bf16(&mut y, &x, &packed, Some(&[0.5, -0.5]), 2).unwrap();
    assert_eq!(y, [6.5, 5.5, 15.5, 14.5]);
    let err = linear_bf16(&mut y, &x[..5], &packed, None, 2).unwrap_err();
    assert!(
        err.to_string().contains("x must have 6 elements, found 5"),
        "{err}"
    );
    let err = linear_bf16(&mut y, &x, &packed, Some(&[1.0]), 2).unwrap_err();
    assert!(err.to_string().contains("bias must have 2"), "{err}");
    let err = linear_bf16_columns(&mut y, &x, &packed, 1..3, None, 2).unwrap_err();
    assert!(err.to_string().contains("column range end"), "{err}");
    assert!(PackedBf16::pack(&[1.0; 5], 2, 3).is_err());
}

#[test]
fn empty_inner_dimension_gives_the_bias() {
    let packed = PackedBf16::pack(&[], 2, 0).unwrap();
    let mut y = [f32::NAN; 6];
    linear_bf16(&mut y, &[], &packed, Some(&[1.0, 2.0]), 3).unwrap();
    assert_eq!(y, [1.0, 2.0, 1.0, 2.0, 1.0, 2.0]);
}

#[test]
fn strided_packing_equals_packing_a_copy() {
    // A (k, n) row-major matrix packed as its (n, k) transpose, as attention's `weights · v`.
    let (m, k, n) = (19, 37, 45);
    let kn = f32_vec(3, k * n);
    let transposed: Vec<f32> = (0..n * k).map(|i| kn[(i % k) * n + i / k]).collect();
    let strided = PackedBf16::pack_strided(&kn, n, k, 1, n).unwrap();
    let copied = PackedBf16::pack(&transposed, n, k).unwrap();
    let x = f32_vec(4, m * k);
    let (mut a, mut b) = (vec![0.0; m * n], vec![0.0; m * n]);
    linear_bf16(&mut a, &x, &strided, None, m).unwrap();
    linear_bf16(&mut b, &x, &copied, None, m).unwrap();
    assert_eq!(a, b);
    let err = PackedBf16::pack_strided(&kn[1..], n, k, 1, n).unwrap_err();
    assert!(err.to_string().contains("needs"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The hardware's conversion packs the same words as the software rounding, except that
    /// it flushes subnormal inputs to zero (which the software may round up to the smallest
    /// normal value); NaN stays NaN either way.
    #[test]
    fn hardware_packing_matches_software_rounding(
        bits in proptest::collection::vec(any::<u32>(), 1..300),
        rows in 1usize..15,
    ) {
        prop_assume!(Bf16Kernel::Avx512Bf16.is_supported());
        let k = bits.len().div_ceil(rows);
        let x: Vec<f32> = (0..rows * k).map(|i| f32::from_bits(bits[i % bits.len()])).collect();
        let words = MR.max(rows).div_ceil(MR) * k.div_ceil(KC) * MR * KCP;
        let (mut hw, mut sw) = (vec![7u32; words], vec![7u32; words]);
        pack::pack_rows(Bf16Kernel::Avx512Bf16, &mut hw, &x, k, 0..rows);
        pack::pack_rows(Bf16Kernel::Portable, &mut sw, &x, k, 0..rows);
        let halves = |w: u32| [w as u16, (w >> 16) as u16];
        for (i, (&h, &s)) in hw.iter().zip(&sw).enumerate() {
            for (a, b) in halves(h).into_iter().zip(halves(s)) {
                let (a, b) = (from_bf16(a), from_bf16(b));
                let same = a.to_bits() == b.to_bits()
                    || (a.is_nan() && b.is_nan())
                    || (a == 0.0 && b.abs() <= f32::MIN_POSITIVE);
                prop_assert!(same, "word {i}: hardware {a:e}, software {b:e}");
            }
        }
    }
}
