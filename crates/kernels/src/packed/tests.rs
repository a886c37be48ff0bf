use super::*;
use crate::reference;
use crate::testutil::{f32_vec, pool};
use crate::{MatMut, MatRef};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any shape (tails of rows, panels and feature blocks), column range, bias, accumulation
    /// and thread count gives the f64 reference product, with every kernel this CPU runs and
    /// through the public entry point.
    #[test]
    fn packed_linear_matches_the_reference(
        m in 1usize..70,
        k in 0usize..300,
        n in 1usize..80,
        cut in (0usize..80, 0usize..80),
        bias in any::<bool>(),
        accumulate in any::<bool>(),
        threads in 1usize..4,
        seed in any::<u64>(),
    ) {
        prop_assume!(packed_f32_available());
        let (lo, hi) = (cut.0.min(cut.1) % (n + 1), cut.0.max(cut.1) % (n + 1));
        let cols = lo.min(hi)..lo.max(hi);
        let width = cols.len();
        let x = f32_vec(seed, m * k);
        let w = f32_vec(seed ^ 1, n * k);
        let b = f32_vec(seed ^ 2, width);
        let start = f32_vec(seed ^ 3, m * width);
        let packed = PackedF32::pack(&w, n, k).unwrap();
        let bias_slice = bias.then_some(&b[..]);
        let mut results = Vec::new();
        for kernel in PackedKernel::ALL.into_iter().filter(|kernel| kernel.is_supported()) {
            let mut found = start.clone();
            pool(threads)
                .install(|| {
                    linear_packed_f32_on(threads, &mut found, &x, &packed.clone().with_kernel(kernel), cols.clone(), bias_slice, m, accumulate)
                })
                .unwrap();
            results.push((format!("{kernel:?}"), found));
        }
        let mut found = start.clone();
        pool(threads)
            .install(|| linear_packed_f32(&mut found, &x, &packed, cols.clone(), bias_slice, m, accumulate))
            .unwrap();
        results.push(("public".into(), found));
        let mut expected = vec![0.0; m * width];
        let w_cols = MatRef {
            data: &w[cols.start * k..],
            rows: k,
            cols: width,
            row_stride: 1,
            col_stride: k,
        };
        if width > 0 {
            reference::matmul(
                MatMut::row_major(&mut expected, m, width),
                MatRef::row_major(&x, m, k),
                w_cols,
                1.0,
                0.0,
            )
            .unwrap();
        }
        for (i, e) in expected.iter_mut().enumerate() {
            *e += if bias { b[i % width.max(1)] } else { 0.0 };
            *e += if accumulate { start[i] } else { 0.0 };
        }
        for (kernel, found) in &results {
            for (i, (f, e)) in found.iter().zip(&expected).enumerate() {
                prop_assert!((f - e).abs() <= 1e-5 * (1.0 + e.abs()) * (1.0 + k as f32).sqrt(), "{kernel} {i}: {f} against {e}");
            }
        }
    }
}

/// On a DeiT-S qkv shape (a column range cutting panels at both ends, bias, accumulation,
/// several threads, and enough rows for whole row blocks) the kernels agree bit for bit:
/// both sum each output's features in the same order with fused multiply-adds, and add the
/// bias and the previous output the same way. Sampled outputs also match the f64 sums, so
/// two kernels that agreed on a wrong answer would still fail.
#[test]
fn kernels_agree_on_a_deit_shape() {
    let kernels: Vec<_> = PackedKernel::ALL
        .into_iter()
        .filter(|kernel| kernel.is_supported())
        .collect();
    let (k, n, cols) = (384, 1152, 37..1101);
    let width = cols.len();
    let w = f32_vec(11, n * k);
    let packed = PackedF32::pack(&w, n, k).unwrap();
    let b = f32_vec(12, width);
    for (m, threads, accumulate) in [(197, 2, false), (197, 1, true), (800, 2, true)] {
        let x = f32_vec(13 + m as u64, m * k);
        let start = f32_vec(14, m * width);
        let outputs: Vec<Vec<f32>> = kernels
            .iter()
            .map(|&kernel| {
                let mut y = start.clone();
                pool(threads)
                    .install(|| {
                        linear_packed_f32_on(
                            threads,
                            &mut y,
                            &x,
                            &packed.clone().with_kernel(kernel),
                            cols.clone(),
                            Some(&b),
                            m,
                            accumulate,
                        )
                    })
                    .unwrap();
                y
            })
            .collect();
        for (kernel, y) in kernels.iter().zip(&outputs) {
            for i in (0..m * width).step_by(997) {
                let (row, j) = (i / width, i % width);
                let dot: f64 = (0..k)
                    .map(|s| f64::from(x[row * k + s]) * f64::from(w[(cols.start + j) * k + s]))
                    .sum();
                let prior = if accumulate { f64::from(start[i]) } else { 0.0 };
                let e = dot + f64::from(b[j]) + prior;
                let f = f64::from(y[i]);
                assert!(
                    (f - e).abs() <= 1e-4 * (1.0 + e.abs()),
                    "{kernel:?} m={m} ({row}, {j}): {f} against {e}"
                );
            }
        }
        for (kernel, y) in kernels.iter().zip(&outputs).skip(1) {
            let differ = y
                .iter()
                .zip(&outputs[0])
                .position(|(a, b)| a.to_bits() != b.to_bits());
            assert_eq!(differ, None, "{kernel:?} against {:?}, m={m}", kernels[0]);
        }
    }
}

/// Every way of cutting a product into tasks computes each output exactly as one thread
/// does, the middle regime included (an idle layer's selected rows of a batch on many
/// threads: blocks of rows, each with a range of the panels).
#[test]
fn every_split_gives_one_threads_bits() {
    assert_eq!(split(6304, 36, 2), (MC, 1));
    assert_eq!(split(197, 36, 2), (197, 2));
    assert_eq!(split(197, 12, 16), (197, 12));
    // 4416 rows are 46 blocks: too few for four per thread on 16 threads, plenty on 4.
    assert_eq!(split(4416, 36, 16), (MC, 2));
    assert_eq!(split(4416, 36, 4), (MC, 1));
    assert_eq!(split(500, 3, 5), (MC, 3));
    let Some(kernel) = PackedKernel::ALL.into_iter().find(|k| k.is_supported()) else {
        return;
    };
    let (m, k, n) = (500, 40, 100);
    let (w, x, b) = (f32_vec(1, n * k), f32_vec(2, m * k), f32_vec(3, n));
    let packed = PackedF32::pack(&w, n, k).unwrap().with_kernel(kernel);
    let run = |threads: usize| {
        let mut y = vec![0.0; m * n];
        pool(threads)
            .install(|| {
                linear_packed_f32_on(threads, &mut y, &x, &packed, 0..n, Some(&b), m, false)
            })
            .unwrap();
        y
    };
    let one = run(1);
    for threads in [2, 3, 5, 8] {
        assert_eq!(run(threads), one, "{threads} threads");
    }
}

#[test]
fn bad_buffers_and_column_ranges_are_errors() {
    if !packed_f32_available() {
        return;
    }
    let w = vec![1.0; 6];
    let packed = PackedF32::pack(&w, 3, 2).unwrap();
    assert!(PackedF32::pack(&w, 4, 2).is_err());
    let x = vec![1.0; 4];
    let mut y = vec![0.0; 6];
    assert!(linear_packed_f32(&mut y, &x, &packed, 0..3, None, 2, false).is_ok());
    assert_eq!(y, vec![2.0; 6]);
    assert!(linear_packed_f32(&mut y, &x, &packed, 0..4, None, 2, false).is_err());
    assert!(linear_packed_f32(&mut y, &x, &packed, 0..3, None, 3, false).is_err());
    assert!(linear_packed_f32(&mut y[..5], &x, &packed, 0..3, None, 2, false).is_err());
    assert!(linear_packed_f32(&mut y, &x, &packed, 0..3, Some(&[1.0]), 2, false).is_err());
}
