use super::*;
use crate::reference;
use crate::testutil::{f32_vec, pool};
use crate::{MatMut, MatRef};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any shape (tails of rows, panels and feature blocks), column range, bias, accumulation
    /// and thread count gives the f64 reference product.
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
        let mut found = start.clone();
        pool(threads)
            .install(|| {
                linear_packed_f32(&mut found, &x, &packed, cols.clone(), bias.then_some(&b[..]), m, accumulate)
            })
            .unwrap();
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
        for (i, (f, e)) in found.iter().zip(&expected).enumerate() {
            prop_assert!((f - e).abs() <= 1e-5 * (1.0 + e.abs()) * (1.0 + k as f32).sqrt(), "{i}: {f} against {e}");
        }
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
