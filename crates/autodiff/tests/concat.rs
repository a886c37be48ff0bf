//! `ops::concat` against ndarray's `concatenate`, on contiguous and strided inputs.

use idlevit_autodiff::ops;
use idlevit_tensor::Tensor;
use proptest::prelude::*;

fn tensor(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let data = (0..n as u64)
        .map(|i| ((i * 7919 + seed) % 1000) as f32)
        .collect();
    Tensor::from_vec(shape.to_vec(), data).unwrap()
}

proptest! {
    #[test]
    fn concat_equals_ndarray(
        dims in prop::collection::vec(1usize..4, 1..4),
        sizes in prop::collection::vec(1usize..4, 1..4),
        axis_pick in any::<usize>(),
        transposed in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let axis = axis_pick % dims.len();
        let xs: Vec<Tensor> = sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| {
                let mut shape = dims.clone();
                shape[axis] = size;
                if transposed && shape.len() >= 2 {
                    // The same values seen through swapped strides: a non-contiguous input.
                    let r = shape.len();
                    let mut swapped = shape.clone();
                    swapped.swap(r - 2, r - 1);
                    let mut axes: Vec<usize> = (0..r).collect();
                    axes.swap(r - 2, r - 1);
                    tensor(&swapped, seed ^ i as u64).permute(&axes).unwrap()
                } else {
                    tensor(&shape, seed ^ i as u64)
                }
            })
            .collect();
        let views: Vec<_> = xs.iter().map(Tensor::view).collect();
        let expected = ndarray::concatenate(ndarray::Axis(axis), &views).unwrap();
        let found = ops::concat(&xs, axis).unwrap();
        prop_assert_eq!(found.shape(), expected.shape());
        prop_assert_eq!(found.to_vec(), expected.iter().copied().collect::<Vec<_>>());
    }
}

#[test]
fn mismatched_inputs_are_errors() {
    let a = tensor(&[2, 3], 1);
    let b = tensor(&[3, 3], 2);
    assert!(ops::concat(&[a.clone(), b.clone()], 1).is_err());
    assert!(ops::concat(&[a.clone(), b], 0).is_ok());
    assert!(ops::concat(std::slice::from_ref(&a), 2).is_err());
    assert!(ops::concat(&[], 0).is_err());
    assert!(ops::concat(&[a, tensor(&[2, 3, 1], 3)], 0).is_err());
}
