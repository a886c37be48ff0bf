use super::*;
use crate::reference;
use crate::testutil::{f32_vec, pool};
use proptest::prelude::*;

/// One operand's layout: row- or column-major, with `gap` unused elements between lines, or a
/// zero stride on one axis (broadcast; inputs only).
#[derive(Debug, Clone, Copy)]
enum Layout {
    RowMajor { gap: usize },
    ColMajor { gap: usize },
    BroadcastRows,
}

fn layout(allow_broadcast: bool) -> impl Strategy<Value = Layout> {
    let dense = prop_oneof![
        (0usize..4).prop_map(|gap| Layout::RowMajor { gap }),
        (0usize..4).prop_map(|gap| Layout::ColMajor { gap }),
    ];
    if allow_broadcast {
        prop_oneof![4 => dense, 1 => Just(Layout::BroadcastRows)].boxed()
    } else {
        dense.boxed()
    }
}

/// Strides and slice length for a `rows x cols` matrix in `layout`, plus `tail` spare elements.
fn strides(layout: Layout, rows: usize, cols: usize, tail: usize) -> (usize, usize, usize) {
    let (rs, cs) = match layout {
        Layout::RowMajor { gap } => (cols + gap, 1),
        Layout::ColMajor { gap } => (1, rows + gap),
        Layout::BroadcastRows => (0, 1),
    };
    let len = crate::matrix::extent(rows, cols, rs, cs).unwrap() + tail;
    (rs, cs, len)
}

/// Everything one product needs, built from a seed.
struct Case {
    m: usize,
    k: usize,
    n: usize,
    a: (Vec<f32>, usize, usize),
    b: (Vec<f32>, usize, usize),
    c: (Vec<f32>, usize, usize),
    alpha: f32,
    beta: f32,
}

impl Case {
    #[allow(clippy::too_many_arguments)]
    fn new(
        m: usize,
        k: usize,
        n: usize,
        la: Layout,
        lb: Layout,
        lc: Layout,
        alpha: f32,
        beta: f32,
        seed: u64,
    ) -> Self {
        let (ars, acs, alen) = strides(la, m, k, 1);
        let (brs, bcs, blen) = strides(lb, k, n, 2);
        let (crs, ccs, clen) = strides(lc, m, n, 3);
        let mut c = f32_vec(seed ^ 3, clen);
        if beta == 0.0 {
            // With beta == 0 the old contents must be ignored, NaN included.
            for i in 0..m {
                for j in 0..n {
                    c[i * crs + j * ccs] = f32::NAN;
                }
            }
        }
        Case {
            m,
            k,
            n,
            a: (f32_vec(seed ^ 1, alen), ars, acs),
            b: (f32_vec(seed ^ 2, blen), brs, bcs),
            c: (c, crs, ccs),
            alpha,
            beta,
        }
    }

    fn a(&self) -> MatRef<'_> {
        MatRef {
            data: &self.a.0,
            rows: self.m,
            cols: self.k,
            row_stride: self.a.1,
            col_stride: self.a.2,
        }
    }

    fn b(&self) -> MatRef<'_> {
        MatRef {
            data: &self.b.0,
            rows: self.k,
            cols: self.n,
            row_stride: self.b.1,
            col_stride: self.b.2,
        }
    }

    /// Runs `f` on a fresh copy of C and checks it against the f64 reference, element by
    /// element, and that no element outside the view changed.
    fn check(
        &self,
        what: &str,
        f: impl FnOnce(MatMut<'_>, MatRef<'_>, MatRef<'_>),
    ) -> Result<(), TestCaseError> {
        let (c0, crs, ccs) = &self.c;
        let mut got = c0.clone();
        f(
            MatMut {
                data: &mut got,
                rows: self.m,
                cols: self.n,
                row_stride: *crs,
                col_stride: *ccs,
            },
            self.a(),
            self.b(),
        );
        let mut want = c0.clone();
        reference::matmul(
            MatMut {
                data: &mut want,
                rows: self.m,
                cols: self.n,
                row_stride: *crs,
                col_stride: *ccs,
            },
            self.a(),
            self.b(),
            self.alpha,
            self.beta,
        )
        .unwrap();
        let mut inside = vec![false; c0.len()];
        let (a, b) = (self.a(), self.b());
        for i in 0..self.m {
            for j in 0..self.n {
                let at = i * crs + j * ccs;
                inside[at] = true;
                // Error grows like sqrt(K) ulps of the sum of |terms| for blocked f32 sums.
                let terms: f64 = (0..self.k)
                    .map(|p| (a.get(i, p).unwrap() * b.get(p, j).unwrap()).abs() as f64)
                    .sum();
                let old = if self.beta == 0.0 {
                    0.0
                } else {
                    (self.beta * c0[at]).abs() as f64
                };
                let scale = self.alpha.abs() as f64 * terms + old;
                let tol = 2e-6 * (self.k.max(1) as f64).sqrt() * scale + 1e-30;
                let err = (got[at] as f64 - want[at] as f64).abs();
                prop_assert!(
                    err <= tol,
                    "{}: {}x{}x{} c[{},{}] = {} want {} (err {:e}, tol {:e})",
                    what,
                    self.m,
                    self.k,
                    self.n,
                    i,
                    j,
                    got[at],
                    want[at],
                    err,
                    tol
                );
            }
        }
        for (at, _) in inside.iter().enumerate().filter(|(_, inside)| !**inside) {
            prop_assert_eq!(
                got[at].to_bits(),
                c0[at].to_bits(),
                "{}: element {} outside the view changed",
                what,
                at
            );
        }
        Ok(())
    }
}

fn scalar() -> impl Strategy<Value = f32> {
    prop_oneof![Just(0.0f32), Just(1.0), -2.0f32..2.0]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn every_backend_matches_reference(
        m in 0usize..70, k in 0usize..70, n in 0usize..70,
        la in layout(true), lb in layout(true), lc in layout(false),
        alpha in scalar(), beta in scalar(), seed in any::<u64>(),
    ) {
        let case = Case::new(m, k, n, la, lb, lc, alpha, beta, seed);
        for backend in [Backend::Gemm, Backend::MatrixMultiply] {
            for threads in [1, 3] {
                let what = format!("{backend:?} x{threads}");
                case.check(&what, |c, a, b| {
                    pool(threads).install(|| matmul_using(backend, threads, c, a, b, alpha, beta)).unwrap();
                })?;
            }
        }
        case.check("matmul", |c, a, b| matmul(c, a, b, alpha, beta).unwrap())?;
    }

    #[test]
    fn linear_matches_reference(m in 0usize..40, k in 0usize..40, n in 0usize..40, pad in 0usize..3, with_bias in any::<bool>(), seed in any::<u64>()) {
        let x = f32_vec(seed, m * k);
        let stride = k + pad;
        let w = f32_vec(seed ^ 5, (n * stride).saturating_sub(pad));
        let bias = f32_vec(seed ^ 6, n);
        let bias = with_bias.then_some(&bias[..]);
        let mut y = vec![f32::NAN; m * n];
        if pad == 0 {
            linear(&mut y, &x, &w, bias, m, k, n).unwrap();
        } else {
            linear_strided(&mut y, &x, &w, stride, bias, m, k, n).unwrap();
        }
        for i in 0..m {
            for j in 0..n {
                let dot: f64 = (0..k).map(|p| x[i * k + p] as f64 * w[j * stride + p] as f64).sum();
                let want = dot + bias.map_or(0.0, |b| b[j] as f64);
                let scale: f64 = (0..k).map(|p| (x[i * k + p] * w[j * stride + p]).abs() as f64).sum::<f64>()
                    + bias.map_or(0.0, |b| b[j].abs() as f64);
                let tol = 2e-6 * (k.max(1) as f64).sqrt() * scale + 1e-30;
                prop_assert!((y[i * n + j] as f64 - want).abs() <= tol, "y[{},{}] = {} want {}", i, j, y[i * n + j], want);
            }
        }
    }
}

/// Shapes that cut C by rows and by columns, for 2 and 4 threads, on both layouts of C.
#[test]
fn large_products_in_parallel() {
    let shapes = [
        (300, 200, 150, Layout::RowMajor { gap: 0 }),
        (150, 97, 260, Layout::ColMajor { gap: 5 }),
        (400, 50, 40, Layout::RowMajor { gap: 1 }),
    ];
    for (m, k, n, lc) in shapes {
        let case = Case::new(
            m,
            k,
            n,
            Layout::RowMajor { gap: 3 },
            Layout::ColMajor { gap: 0 },
            lc,
            0.5,
            1.0,
            42,
        );
        for backend in [Backend::Gemm, Backend::MatrixMultiply] {
            for threads in [1, 2, 4] {
                case.check(&format!("{backend:?} x{threads}"), |c, a, b| {
                    pool(threads)
                        .install(|| matmul_using(backend, threads, c, a, b, 0.5, 1.0))
                        .unwrap();
                })
                .unwrap();
            }
        }
        case.check("matmul x4", |c, a, b| {
            pool(4).install(|| matmul(c, a, b, 0.5, 1.0)).unwrap()
        })
        .unwrap();
    }
}

/// The routing picks matrixmultiply for small M against a 512-aligned weight stride, gemm
/// otherwise, and both give the reference result through `linear`.
#[test]
fn routing_and_linear_at_model_shapes() {
    let weight = |k: usize, n: usize| MatRef {
        data: &[],
        rows: k,
        cols: n,
        row_stride: 1,
        col_stride: k,
    };
    assert_eq!(
        choose_backend(197, &weight(1536, 384)),
        Backend::MatrixMultiply
    );
    assert_eq!(choose_backend(6304, &weight(1536, 384)), Backend::Gemm);
    assert_eq!(choose_backend(197, &weight(384, 1152)), Backend::Gemm);
    assert_eq!(
        choose_backend(
            197,
            &MatRef {
                col_stride: padded_row_stride(1536),
                ..weight(1536, 384)
            }
        ),
        Backend::Gemm
    );
    assert_eq!(padded_row_stride(384), 384);
    assert_eq!(padded_row_stride(1024), 1040);

    for (m, k, n) in [(37, 1024, 40), (600, 64, 48)] {
        let x = f32_vec(1, m * k);
        let w = f32_vec(2, n * k);
        let bias = f32_vec(3, n);
        let mut y = vec![0.0; m * n];
        pool(2)
            .install(|| linear(&mut y, &x, &w, Some(&bias), m, k, n))
            .unwrap();
        for i in (0..m).step_by(7) {
            for j in 0..n {
                let want: f64 = (0..k)
                    .map(|p| x[i * k + p] as f64 * w[j * k + p] as f64)
                    .sum::<f64>()
                    + bias[j] as f64;
                assert!(
                    (y[i * n + j] as f64 - want).abs() <= 1e-4,
                    "{m}x{k}x{n}: y[{i},{j}]"
                );
            }
        }
    }
}

#[test]
fn inconsistent_sizes_are_errors_and_leave_c_alone() {
    let a = vec![1.0; 12];
    let b = vec![1.0; 12];
    let mut c = vec![7.0; 12];
    let ar = MatRef::row_major(&a, 3, 4);
    let br = MatRef::row_major(&b, 4, 3);

    let err = matmul(
        MatMut::row_major(&mut c, 3, 3),
        ar,
        MatRef::row_major(&b, 3, 4),
        1.0,
        0.0,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            KernelError::InnerDimMismatch {
                a_cols: 4,
                b_rows: 3,
                ..
            }
        ),
        "{err}"
    );
    let err = matmul(MatMut::row_major(&mut c, 4, 3), ar, br, 1.0, 0.0).unwrap_err();
    assert!(
        matches!(
            err,
            KernelError::OutputShape {
                expected_rows: 3,
                rows: 4,
                ..
            }
        ),
        "{err}"
    );
    let err = matmul(
        MatMut::row_major(&mut c, 3, 3),
        MatRef {
            row_stride: 5,
            ..ar
        },
        br,
        1.0,
        0.0,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            KernelError::OutOfBounds {
                operand: "a",
                needed: 14,
                found: 12,
                ..
            }
        ),
        "{err}"
    );
    let huge = MatRef {
        row_stride: usize::MAX,
        ..br
    };
    let err = matmul(MatMut::row_major(&mut c, 3, 3), ar, huge, 1.0, 0.0).unwrap_err();
    assert!(
        matches!(
            err,
            KernelError::OutOfBounds {
                operand: "b",
                needed: usize::MAX,
                ..
            }
        ),
        "{err}"
    );
    let overlapping = MatMut {
        data: &mut c,
        rows: 3,
        cols: 3,
        row_stride: 2,
        col_stride: 1,
    };
    let err = matmul(overlapping, ar, br, 1.0, 0.0).unwrap_err();
    assert!(
        matches!(err, KernelError::OverlappingOutput { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("one after another"));
    assert_eq!(c, vec![7.0; 12]);

    let mut y = vec![0.0; 6];
    let err = linear(&mut y, &a[..7], &b[..12], None, 2, 4, 3).unwrap_err();
    assert_eq!(
        err,
        KernelError::BufferLength {
            op: "linear",
            operand: "x",
            expected: 8,
            found: 7
        }
    );
    let err = linear(&mut y, &a[..8], &b[..11], None, 2, 4, 3).unwrap_err();
    assert_eq!(err.to_string(), "linear: w must have 12 elements, found 11");
    let err = linear(&mut y, &a[..8], &b[..12], Some(&[1.0; 2]), 2, 4, 3).unwrap_err();
    assert_eq!(
        err.to_string(),
        "linear: bias must have 3 elements, found 2"
    );
    let err = linear(&mut y[..5], &a[..8], &b[..12], None, 2, 4, 3).unwrap_err();
    assert_eq!(err.to_string(), "linear: y must have 6 elements, found 5");
    let err = linear_strided(&mut y, &a[..8], &b[..12], 5, None, 2, 4, 3).unwrap_err();
    assert!(
        matches!(
            err,
            KernelError::OutOfBounds {
                operand: "w",
                needed: 14,
                found: 12,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn empty_inner_dimension_scales_c() {
    let mut c = vec![2.0, f32::NAN];
    matmul(
        MatMut::row_major(&mut c, 1, 2),
        MatRef::row_major(&[], 1, 0),
        MatRef::row_major(&[], 0, 2),
        1.0,
        0.0,
    )
    .unwrap();
    assert_eq!(c, [0.0, 0.0]);
    let mut c = vec![2.0, 3.0];
    matmul(
        MatMut::row_major(&mut c, 2, 1),
        MatRef::row_major(&[], 2, 0),
        MatRef::row_major(&[], 0, 1),
        1.0,
        -1.5,
    )
    .unwrap();
    assert_eq!(c, [-3.0, -4.5]);
}

#[test]
fn split_rules() {
    assert_eq!(Split::choose(6304, 384, 1), Split::Serial);
    assert_eq!(Split::choose(6304, 384, 2), Split::Rows(2));
    assert_eq!(Split::choose(197, 384, 2), Split::Cols(2));
    assert_eq!(Split::choose(197, 100, 2), Split::Rows(2));
    assert_eq!(Split::choose(40, 10, 4), Split::Rows(2));
    assert_eq!(Split::choose(10, 40, 4), Split::Cols(2));
    assert_eq!(Split::choose(10, 10, 4), Split::Serial);
}
