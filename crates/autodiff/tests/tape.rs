//! What the tape records and how it reports gradients.

use idlevit_autodiff::{AutodiffError, Backend, OpsError, Tape, Tensor, ops};

fn t(shape: &[usize], values: &[f32]) -> Tensor {
    Tensor::from_vec(shape.to_vec(), values.to_vec()).unwrap()
}

#[test]
fn constants_record_nothing() {
    let tape = Tape::new();
    let a = tape.constant(t(&[2], &[1.0, 2.0]));
    let b = tape.mul(&a, &tape.square(&a).unwrap()).unwrap();
    let s = tape.sum_all(&b).unwrap();
    assert!(!s.requires_grad());
    assert_eq!(tape.num_nodes(), 0);
    assert_eq!(s.value().to_vec(), vec![9.0]);
    let w = tape.leaf("w", t(&[2], &[0.5, 0.5]));
    let y = tape.mul(&a, &w).unwrap();
    assert!(y.requires_grad());
    assert_eq!(tape.num_nodes(), 2);
    // A constant loss gives zero gradients to every parameter.
    let grads = tape.backward(&s).unwrap();
    assert_eq!(grads.get("w").unwrap().to_vec(), vec![0.0, 0.0]);
}

#[test]
fn a_name_used_twice_accumulates() {
    let tape = Tape::new();
    let value = t(&[3], &[1.0, -2.0, 3.0]);
    let w1 = tape.leaf("w", value.clone());
    let w2 = tape.leaf("w", value);
    assert_eq!(
        tape.num_nodes(),
        1,
        "the second registration reuses the node"
    );
    // loss = sum(w * w) + sum(3 w): dloss/dw = 2 w + 3.
    let loss = tape
        .add(
            &tape.sum_all(&tape.mul(&w1, &w2).unwrap()).unwrap(),
            &tape.sum_all(&tape.scale(&w2, 3.0).unwrap()).unwrap(),
        )
        .unwrap();
    let grads = tape.backward(&loss).unwrap();
    assert_eq!(grads.len(), 1);
    assert_eq!(grads.get("w").unwrap().to_vec(), vec![5.0, -1.0, 9.0]);
}

#[test]
fn backward_can_run_twice_and_unused_parameters_get_zeros() {
    let tape = Tape::new();
    let w = tape.leaf("w", t(&[2, 2], &[1.0, 2.0, 3.0, 4.0]));
    let _unused = tape.leaf("unused", t(&[3], &[1.0; 3]));
    let x = tape.constant(t(&[1, 2], &[1.0, -1.0]));
    let y = tape.linear(&x, &w, None).unwrap();
    let loss = tape.sum_all(&tape.square(&y).unwrap()).unwrap();
    let first = tape.backward(&loss).unwrap();
    let second = tape.backward(&loss).unwrap();
    assert_eq!(first.get("w").unwrap().to_vec(), vec![-2.0, 2.0, -2.0, 2.0]);
    assert_eq!(first.get("w"), second.get("w"));
    assert_eq!(first.get("unused").unwrap().to_vec(), vec![0.0; 3]);
    let names: Vec<&str> = first.iter().map(|(name, _)| name).collect();
    assert_eq!(names, ["unused", "w"]);
}

#[test]
fn abs_has_zero_subgradient_at_zero() {
    let tape = Tape::new();
    let x = tape.leaf("x", t(&[3], &[-2.0, 0.0, 0.5]));
    let loss = tape.sum_all(&tape.abs(&x).unwrap()).unwrap();
    let grads = tape.backward(&loss).unwrap();
    assert_eq!(grads.get("x").unwrap().to_vec(), vec![-1.0, 0.0, 1.0]);
}

#[test]
fn bad_uses_are_errors() {
    let tape = Tape::new();
    let w = tape.leaf("w", t(&[2], &[1.0, 2.0]));
    assert!(matches!(
        tape.backward(&w),
        Err(AutodiffError::NotScalar(shape)) if shape == [2]
    ));
    // A one-element loss of any rank is fine.
    let one = tape
        .sum_axis(&tape.reshape(&w, &[1, 2]).unwrap(), 1, true)
        .unwrap();
    assert_eq!(one.shape(), &[1, 1]);
    assert_eq!(
        tape.backward(&one).unwrap().get("w").unwrap().to_vec(),
        vec![1.0, 1.0]
    );

    let other = Tape::new();
    let v = other.leaf("v", t(&[2], &[1.0, 1.0]));
    assert!(matches!(
        tape.add(&w, &v),
        Err(OpsError::ForeignValue { op: "add" })
    ));
    assert!(tape.add(&w, &tape.constant(t(&[3], &[0.0; 3]))).is_err());

    tape.leaf("w", t(&[3], &[0.0; 3]));
    let loss = tape.sum_all(&w).unwrap();
    assert!(matches!(
        tape.backward(&loss),
        Err(AutodiffError::LeafShape { name, .. }) if name == "w"
    ));
}

#[test]
fn ops_leave_their_inputs_alone_and_views_copy_nothing() {
    let x = t(&[2, 3], &[-1.0, 0.0, 1.0, 2.0, 3.0, 4.0]);
    let before = x.to_vec();
    for y in [
        ops::gelu(&x).unwrap(),
        ops::softmax(&x).unwrap(),
        ops::add(&x, &x).unwrap(),
        ops::scale(&x, 2.0).unwrap(),
        ops::log_softmax(&x).unwrap(),
    ] {
        assert_eq!(y.shape(), x.shape());
    }
    assert_eq!(x.to_vec(), before);
    let p = ops::permute(&x, &[1, 0]).unwrap();
    assert!(std::ptr::eq(p.storage().0, x.storage().0));
    // The matmul reads the transposed view as it is.
    let gram = ops::matmul(&x, &p).unwrap();
    assert_eq!(gram.to_vec(), vec![2.0, 2.0, 2.0, 29.0]);
}

/// Inputs big enough for the row-wise forward and backward loops to split across threads
/// give the gradients of the one-thread run (the small shapes of the finite-difference
/// checks always run on one thread).
#[test]
fn large_inputs_split_across_threads_alike() {
    let (rows, width) = (700, 200);
    let n = rows * width;
    let wave = |k: usize, f: f32| (k as f32 * f).sin();
    let x = t(
        &[rows, width],
        &(0..n).map(|k| wave(k, 0.37) * 2.0).collect::<Vec<_>>(),
    );
    let gamma = t(
        &[width],
        &(0..width).map(|k| 1.0 + wave(k, 0.11)).collect::<Vec<_>>(),
    );
    let beta = t(
        &[width],
        &(0..width).map(|k| wave(k, 0.23)).collect::<Vec<_>>(),
    );
    let w = t(
        &[8, width],
        &(0..8 * width)
            .map(|k| wave(k, 0.71) * 0.1)
            .collect::<Vec<_>>(),
    );
    let r = t(
        &[rows, width],
        &(0..n).map(|k| wave(k, 0.53)).collect::<Vec<_>>(),
    );
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let tape = Tape::new();
            let x = tape.leaf("x", x.clone());
            let h = tape
                .layer_norm(
                    &x,
                    &tape.leaf("gamma", gamma.clone()),
                    &tape.leaf("beta", beta.clone()),
                    1e-5,
                )
                .unwrap();
            let h = tape.gelu(&h).unwrap();
            let s = tape.add(&tape.softmax(&h).unwrap(), &tape.log_softmax(&h).unwrap());
            let s = tape.add(&s.unwrap(), &tape.l2_normalize(&h, 1e-6).unwrap());
            let p = tape.mul(&s.unwrap(), &tape.constant(r.clone())).unwrap();
            let y = tape.linear(&p, &tape.leaf("w", w.clone()), None).unwrap();
            let per_row = tape.sum_axis(&tape.square(&y).unwrap(), 1, false).unwrap();
            let loss = tape.sum_all(&per_row).unwrap();
            tape.backward(&loss).unwrap().into_map()
        })
    };
    let (one, three) = (run(1), run(3));
    for (name, g1) in &one {
        let g3 = &three[name];
        let scale = g1.to_vec().iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let diff = g1.max_abs_diff(g3).unwrap();
        assert!(diff <= 1e-5 * scale, "{name}: {diff} of {scale}");
    }
}
