//! Owned conversions between [`Tensor`] and `ndarray` arrays, both ways.
//!
//! Both directions move the buffer instead of copying it whenever the two layouts can
//! describe it alike; the impls' docs say exactly when that is.

use std::sync::Arc;

use ndarray::{Array, ArrayD, Dimension, IxDyn, ShapeBuilder};

use super::{Tensor, row_major_strides};
use crate::TensorError;

impl<D: Dimension> From<Array<f32, D>> for Tensor {
    /// Takes the array's buffer as the tensor's storage, shape, strides and offset
    /// included, so slices, permutations and other views of an owned array cost no copy.
    /// Copies into row-major order only when the array is empty or has a negative stride
    /// (an inverted axis), which a tensor cannot describe.
    fn from(array: Array<f32, D>) -> Self {
        let array = array.into_dyn();
        let shape = array.shape().to_vec();
        let strides: Option<Vec<usize>> = array
            .strides()
            .iter()
            .map(|&s| usize::try_from(s).ok())
            .collect();
        if let (Some(strides), false) = (strides, array.is_empty()) {
            if let (storage, Some(offset)) = array.into_raw_vec_and_offset() {
                return Self {
                    storage: Arc::new(storage),
                    offset,
                    shape,
                    strides,
                };
            }
            unreachable!("a non-empty array has a first element");
        }
        Self {
            storage: Arc::new(array.iter().copied().collect()),
            offset: 0,
            strides: row_major_strides(&shape),
            shape,
        }
    }
}

impl From<Tensor> for ArrayD<f32> {
    /// Moves the storage into the array when the tensor is its only owner and uses all of
    /// it, starting at its first element, in any order of axes (row-major, or permuted);
    /// copies the elements into a row-major array otherwise (shared storage, a slice or
    /// selection of a larger tensor, a broadcast).
    fn from(tensor: Tensor) -> Self {
        if tensor.numel() > 0
            && tensor.offset == 0
            && tensor.storage.len() == tensor.numel()
            && axes_never_alias(&tensor.shape, &tensor.strides)
        {
            let Tensor {
                storage,
                shape,
                strides,
                ..
            } = tensor;
            match Arc::try_unwrap(storage) {
                Ok(values) => {
                    let layout = IxDyn(&shape).strides(IxDyn(&strides));
                    return ArrayD::from_shape_vec(layout, values).unwrap_or_else(|_| {
                        unreachable!("a tensor that owns exactly its elements fits ndarray")
                    });
                }
                Err(shared) => {
                    let tensor = Tensor {
                        storage: shared,
                        offset: 0,
                        shape,
                        strides,
                    };
                    return tensor.view().to_owned();
                }
            }
        }
        tensor.view().to_owned()
    }
}

/// Whether no two indices of this layout reach the same element: taken in order of stride,
/// each axis of length > 1 steps over the whole extent of the axes before it.
fn axes_never_alias(shape: &[usize], strides: &[usize]) -> bool {
    let mut axes: Vec<(usize, usize)> = strides
        .iter()
        .copied()
        .zip(shape.iter().copied())
        .filter(|&(_, size)| size > 1)
        .collect();
    axes.sort_unstable();
    let mut extent = 1;
    for (stride, size) in axes {
        if stride < extent {
            return false;
        }
        extent = stride * size;
    }
    true
}

/// `TryFrom<Tensor>` for the fixed-rank arrays: the rank must match; the buffer moves as
/// for [`ArrayD`].
macro_rules! fixed_rank_from_tensor {
    ($($dim:ty),*) => {$(
        impl TryFrom<Tensor> for Array<f32, $dim> {
            type Error = TensorError;

            /// Fails with [`TensorError::Rank`] when the tensor's rank is not the array's;
            /// otherwise moves or copies the values as `ArrayD::from(tensor)` does.
            fn try_from(tensor: Tensor) -> Result<Self, TensorError> {
                let expected = <$dim as Dimension>::NDIM.unwrap_or_default();
                if tensor.ndim() != expected {
                    return Err(TensorError::Rank {
                        op: "conversion to an ndarray array",
                        expected,
                        found: tensor.shape.clone(),
                    });
                }
                ArrayD::from(tensor)
                    .into_dimensionality::<$dim>()
                    .map_err(|_| unreachable!("the rank was checked"))
            }
        }
    )*};
}

fixed_rank_from_tensor!(
    ndarray::Ix0,
    ndarray::Ix1,
    ndarray::Ix2,
    ndarray::Ix3,
    ndarray::Ix4,
    ndarray::Ix5,
    ndarray::Ix6
);

#[cfg(test)]
mod tests {
    use ndarray::{Array2, Array3, Axis, Slice};
    use proptest::prelude::*;

    use super::*;

    fn iota(shape: &[usize]) -> ArrayD<f32> {
        let n = shape.iter().product::<usize>();
        ArrayD::from_shape_vec(IxDyn(shape), (0..n).map(|v| v as f32).collect()).unwrap()
    }

    /// The address of the tensor's first element.
    fn first_element(tensor: &Tensor) -> *const f32 {
        let (storage, offset) = tensor.storage();
        storage[offset..].as_ptr()
    }

    #[test]
    fn a_standard_array_moves_into_a_tensor_and_back() {
        let array = iota(&[2, 3, 4]);
        let buffer = array.as_ptr();
        let tensor = Tensor::from(array);
        assert_eq!(first_element(&tensor), buffer);
        assert_eq!(
            tensor.to_vec(),
            (0..24).map(|v| v as f32).collect::<Vec<_>>()
        );
        let back = ArrayD::from(tensor);
        assert_eq!(back.as_ptr(), buffer);
        assert_eq!(back, iota(&[2, 3, 4]));
    }

    #[test]
    fn slices_and_permutations_of_owned_arrays_move_without_copying() {
        // Rows 1..3 of a 4x5 array: the first element is at offset 5 of the buffer.
        let rows = iota(&[4, 5]).slice_axis_move(Axis(0), Slice::from(1..3));
        let expected = rows.clone();
        let buffer = rows.as_ptr();
        let tensor = Tensor::from(rows);
        assert_eq!(first_element(&tensor), buffer);
        assert_eq!(tensor.shape(), &[2, 5]);
        assert_eq!(tensor.view(), expected.view());

        // Every other column, transposed: strides (2, 5), neither contiguous nor standard.
        let columns = iota(&[4, 6])
            .slice_axis_move(Axis(1), Slice::new(0, None, 2))
            .reversed_axes();
        let expected: Vec<f32> = columns.iter().copied().collect();
        let buffer = columns.as_ptr();
        let tensor = Tensor::from(columns);
        assert_eq!(first_element(&tensor), buffer);
        assert_eq!(tensor.strides(), &[2, 6]);
        assert_eq!(tensor.to_vec(), expected);
    }

    #[test]
    fn from_array_gives_row_major_tensors_of_the_right_elements() {
        let rows = iota(&[4, 5]).slice_axis_move(Axis(0), Slice::from(1..3));
        let tensor = Tensor::from_array(rows);
        assert!(tensor.is_contiguous());
        assert_eq!(
            tensor.to_vec(),
            (5..15).map(|v| v as f32).collect::<Vec<_>>()
        );
        let transposed = Tensor::from_array(iota(&[2, 3]).reversed_axes());
        assert_eq!(transposed.strides(), &[2, 1]);
        assert_eq!(transposed.to_vec(), vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    }

    #[test]
    fn inverted_axes_and_empty_arrays_are_copied_in_row_major_order() {
        let mut flipped = iota(&[3, 2]);
        flipped.invert_axis(Axis(0));
        let tensor = Tensor::from(flipped.clone());
        assert!(tensor.is_contiguous());
        assert_eq!(tensor.to_vec(), vec![4.0, 5.0, 2.0, 3.0, 0.0, 1.0]);
        assert_eq!(ArrayD::from(tensor), flipped);

        let empty = Tensor::from(iota(&[2, 0, 3]));
        assert_eq!(empty.shape(), &[2, 0, 3]);
        assert_eq!(ArrayD::from(empty).shape(), &[2, 0, 3]);
    }

    #[test]
    fn a_permuted_tensor_that_owns_its_storage_moves_into_the_array() {
        let tensor = Tensor::from(iota(&[2, 3, 4]));
        let buffer = first_element(&tensor);
        let permuted = tensor.permute(&[2, 0, 1]).unwrap();
        drop(tensor);
        let array = ArrayD::from(permuted);
        assert_eq!(array.as_ptr(), buffer);
        assert_eq!(array, iota(&[2, 3, 4]).permuted_axes(IxDyn(&[2, 0, 1])));
    }

    #[test]
    fn shared_sliced_or_broadcast_tensors_are_copied() {
        let tensor = Tensor::from(iota(&[3, 4]));
        let shared = tensor.clone();
        let array = ArrayD::from(shared);
        assert_ne!(array.as_ptr(), first_element(&tensor));
        assert_eq!(array, iota(&[3, 4]));

        let rows = tensor.slice_axis(0, 1, 3).unwrap();
        drop(tensor);
        let array = ArrayD::from(rows);
        assert_eq!(
            array,
            iota(&[3, 4]).slice_axis_move(Axis(0), Slice::from(1..3))
        );
        assert!(array.is_standard_layout());

        let row = Tensor::from_vec(vec![1, 3], vec![1.0, 2.0, 3.0]).unwrap();
        let wide = ArrayD::from(row.broadcast_to(&[2, 3]).unwrap());
        assert_eq!(
            wide,
            ndarray::arr2(&[[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]).into_dyn()
        );
    }

    #[test]
    fn fixed_rank_arrays_check_the_rank() {
        let tensor = Tensor::from(iota(&[2, 3]));
        let matrix = Array2::try_from(tensor.clone()).unwrap();
        assert_eq!(matrix[[1, 2]], 5.0);
        let err = Array3::<f32>::try_from(tensor).unwrap_err();
        assert_eq!(
            err.to_string(),
            "conversion to an ndarray array: expected a tensor with 3 axes, found shape [2, 3]"
        );
        let scalar = ndarray::Array0::try_from(Tensor::scalar(7.0)).unwrap();
        assert_eq!(scalar.into_scalar(), 7.0);
        assert_eq!(
            Tensor::from(Array2::<f32>::eye(2)).to_vec(),
            vec![1.0, 0.0, 0.0, 1.0]
        );
    }

    /// A shape of rank 0..=4 with axes of 0..=4, its values, an axis order and a step per
    /// axis for a strided slice.
    fn layouts() -> impl Strategy<Value = (Vec<usize>, Vec<f32>, Vec<usize>, Vec<usize>)> {
        proptest::collection::vec(0usize..5, 0..5).prop_flat_map(|shape| {
            let n = shape.iter().product::<usize>();
            let rank = shape.len();
            (
                Just(shape),
                proptest::collection::vec(-100.0f32..100.0, n),
                Just((0..rank).collect::<Vec<_>>()).prop_shuffle(),
                proptest::collection::vec(1usize..3, rank),
            )
        })
    }

    proptest! {
        /// Array -> tensor -> array gives the array back, for standard, permuted, strided
        /// and inverted layouts alike; tensor -> array -> tensor likewise.
        #[test]
        fn round_trips_keep_shape_and_values(
            (shape, values, order, steps) in layouts(),
            invert in any::<bool>(),
        ) {
            let standard = ArrayD::from_shape_vec(IxDyn(&shape), values).unwrap();
            let mut strided = standard.clone().permuted_axes(IxDyn(&order));
            for (axis, &step) in steps.iter().enumerate() {
                strided.slice_axis_inplace(Axis(axis), Slice::new(0, None, step as isize));
            }
            if invert && !shape.is_empty() {
                strided.invert_axis(Axis(0));
            }
            for array in [standard, strided] {
                let tensor = Tensor::from(array.clone());
                prop_assert_eq!(tensor.shape(), array.shape());
                prop_assert_eq!(tensor.to_vec(), array.iter().copied().collect::<Vec<_>>());
                let again = Tensor::from(ArrayD::from(tensor.clone()));
                prop_assert_eq!(&again, &tensor);
                prop_assert_eq!(ArrayD::from(tensor), array);
            }
        }
    }
}
