//! The tensor type: shape and strides over shared copy-on-write storage, its views and its
//! conversions.
//!
//! One file on purpose: every method relies on the same layout invariants (offset, strides,
//! storage length), which are easiest to keep true when they are read together.

use std::sync::Arc;

use ndarray::{ArrayD, ArrayViewD, IxDyn, ShapeBuilder};

use crate::{Result, TensorError};

mod arrays;

/// An n-dimensional `f32` array over shared, copy-on-write storage.
///
/// The elements live in `storage[offset + sum(index[i] * strides[i])]`. Strides are
/// non-negative element counts, so a view is described by plain numbers that kernels taking
/// slices and strides can use directly.
#[derive(Clone, Debug)]
pub struct Tensor {
    storage: Arc<Vec<f32>>,
    offset: usize,
    shape: Vec<usize>,
    strides: Vec<usize>,
}

/// Element count of `shape`, or an error when the shape is too large to lay out.
///
/// A shape with a zero-sized axis holds no elements, but its other axes must still multiply to
/// at most `isize::MAX`: row-major strides are products of them, and `ndarray` refuses larger
/// shapes even when they are empty.
pub(crate) fn element_count(shape: &[usize]) -> Result<usize> {
    let overflow = || TensorError::Overflow(shape.to_vec());
    let extent = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d.max(1)))
        .filter(|&n| isize::try_from(n).is_ok())
        .ok_or_else(overflow)?;
    Ok(if shape.contains(&0) { 0 } else { extent })
}

/// Row-major strides of `shape`.
fn row_major_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1].max(1);
    }
    strides
}

impl PartialEq for Tensor {
    fn eq(&self, other: &Self) -> bool {
        self.shape == other.shape && self.view() == other.view()
    }
}

impl Tensor {
    /// Builds a contiguous (row-major) tensor from its shape and values.
    pub fn from_vec(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        let expected = element_count(&shape)?;
        if expected != data.len() {
            return Err(TensorError::DataLength {
                shape,
                expected,
                found: data.len(),
            });
        }
        Ok(Self {
            strides: row_major_strides(&shape),
            storage: Arc::new(data),
            offset: 0,
            shape,
        })
    }

    /// A tensor of the given shape filled with `value`.
    pub fn full(shape: &[usize], value: f32) -> Result<Self> {
        let count = element_count(shape)?;
        Self::from_vec(shape.to_vec(), vec![value; count])
    }

    /// A tensor of the given shape filled with zeros.
    pub fn zeros(shape: &[usize]) -> Result<Self> {
        Self::full(shape, 0.0)
    }

    /// A one-element tensor of rank zero.
    pub fn scalar(value: f32) -> Self {
        Self {
            storage: Arc::new(vec![value]),
            offset: 0,
            shape: Vec::new(),
            strides: Vec::new(),
        }
    }

    /// Takes an `ndarray` array as a contiguous (row-major) tensor: the buffer moves when the
    /// array is in standard layout and is copied otherwise. `Tensor::from(array)` keeps any
    /// layout with non-negative strides instead, without copying.
    pub fn from_array(array: ArrayD<f32>) -> Self {
        let tensor = Self::from(array);
        if tensor.is_contiguous() {
            tensor
        } else {
            tensor.contiguous()
        }
    }

    /// The sizes of the axes.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The number of axes.
    pub fn ndim(&self) -> usize {
        self.shape.len()
    }

    /// The number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The strides of the axes, in elements.
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }

    /// The whole underlying buffer and the position of element `[0, 0, ...]` in it, for
    /// kernels that walk a strided view themselves.
    pub fn storage(&self) -> (&[f32], usize) {
        (&self.storage, self.offset)
    }

    /// Whether the elements are laid out row-major without gaps.
    pub fn is_contiguous(&self) -> bool {
        let mut expected = 1;
        for (&size, &stride) in self.shape.iter().zip(&self.strides).rev() {
            if size != 1 && stride != expected {
                return false;
            }
            expected *= size;
        }
        true
    }

    /// A read-only `ndarray` view, for code that wants the full `ndarray` toolbox.
    pub fn view(&self) -> ArrayViewD<'_, f32> {
        if self.numel() == 0 {
            // ndarray rejects strided views of nothing; an empty standard view says the same.
            return ArrayViewD::from_shape(IxDyn(&self.shape), &[])
                .unwrap_or_else(|_| unreachable!("an empty shape fits an empty slice"));
        }
        let shape = IxDyn(&self.shape).strides(IxDyn(&self.strides));
        // Every constructor keeps the view inside the storage, so this cannot fail.
        ArrayViewD::from_shape(shape, &self.storage[self.offset..])
            .unwrap_or_else(|_| unreachable!("tensor view escapes its storage"))
    }

    /// The elements in row-major order, when the layout is contiguous.
    pub fn as_slice(&self) -> Option<&[f32]> {
        self.is_contiguous()
            .then(|| &self.storage[self.offset..self.offset + self.numel()])
    }

    /// The elements in row-major order for writing; copies first if the storage is shared
    /// or the layout is not contiguous.
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        let whole = self.offset == 0 && self.storage.len() == self.numel();
        if !(self.is_contiguous() && whole) {
            *self = Self::from_vec(self.shape.clone(), self.to_vec())
                .unwrap_or_else(|_| unreachable!("a tensor's own shape always fits its values"));
        }
        Arc::make_mut(&mut self.storage).as_mut_slice()
    }

    /// The values in row-major order: borrowed when the layout is already contiguous, copied
    /// otherwise (never empty by accident, as `as_slice` would be on a strided view).
    pub fn contiguous_values(&self) -> std::borrow::Cow<'_, [f32]> {
        match self.as_slice() {
            Some(values) => std::borrow::Cow::Borrowed(values),
            None => std::borrow::Cow::Owned(self.to_vec()),
        }
    }

    /// Takes the values out as a row-major vector, without copying when this tensor is the
    /// sole owner of contiguous storage.
    pub fn into_vec(self) -> Vec<f32> {
        let whole = self.offset == 0 && self.storage.len() == self.numel();
        if self.is_contiguous() && whole {
            Arc::try_unwrap(self.storage).unwrap_or_else(|shared| (*shared).clone())
        } else {
            self.to_vec()
        }
    }

    /// The same values in contiguous row-major storage (a cheap clone when already so).
    pub fn contiguous(&self) -> Self {
        if self.is_contiguous() {
            return self.clone();
        }
        Self {
            storage: Arc::new(self.to_vec()),
            offset: 0,
            strides: row_major_strides(&self.shape),
            shape: self.shape.clone(),
        }
    }

    /// The elements in row-major order.
    pub fn to_vec(&self) -> Vec<f32> {
        match self.as_slice() {
            Some(slice) => slice.to_vec(),
            None => self.copy_strided(),
        }
    }

    /// Copies a strided view row by row: the last axis is the inner loop, and runs with
    /// stride 1 (the common case after a permute of leading axes) are copied as slices.
    fn copy_strided(&self) -> Vec<f32> {
        let numel = self.numel();
        let mut out = Vec::with_capacity(numel);
        let Some((&row_len, lead)) = self.shape.split_last() else {
            out.push(self.storage[self.offset]);
            return out;
        };
        if numel == 0 {
            return out;
        }
        let row_stride = self.strides[lead.len()];
        let mut index = vec![0usize; lead.len()];
        let mut base = self.offset;
        loop {
            if row_stride == 1 {
                out.extend_from_slice(&self.storage[base..base + row_len]);
            } else {
                out.extend((0..row_len).map(|i| self.storage[base + i * row_stride]));
            }
            // Advance the leading index like an odometer, keeping `base` in step.
            let mut axis = lead.len();
            loop {
                if axis == 0 {
                    return out;
                }
                axis -= 1;
                index[axis] += 1;
                base += self.strides[axis];
                if index[axis] < lead[axis] {
                    break;
                }
                base -= self.strides[axis] * index[axis];
                index[axis] = 0;
            }
        }
    }

    /// The same values under a new shape with the same element count (a view when the
    /// layout is contiguous, a copy otherwise).
    pub fn reshape(&self, shape: &[usize]) -> Result<Self> {
        if element_count(shape)? != self.numel() {
            return Err(TensorError::Reshape {
                from: self.shape.clone(),
                to: shape.to_vec(),
            });
        }
        let base = self.contiguous();
        Ok(Self {
            storage: base.storage,
            offset: base.offset,
            shape: shape.to_vec(),
            strides: row_major_strides(shape),
        })
    }

    /// A view with the axes reordered: axis `i` of the result is axis `axes[i]` of `self`.
    pub fn permute(&self, axes: &[usize]) -> Result<Self> {
        let ndim = self.ndim();
        let mut seen = vec![false; ndim];
        let valid = axes.len() == ndim
            && axes
                .iter()
                .all(|&a| a < ndim && !std::mem::replace(&mut seen[a], true));
        if !valid {
            return Err(TensorError::Permutation {
                axes: axes.to_vec(),
                ndim,
            });
        }
        Ok(Self {
            storage: Arc::clone(&self.storage),
            offset: self.offset,
            shape: axes.iter().map(|&a| self.shape[a]).collect(),
            strides: axes.iter().map(|&a| self.strides[a]).collect(),
        })
    }

    /// A view of `start..end` along `axis`.
    pub fn slice_axis(&self, axis: usize, start: usize, end: usize) -> Result<Self> {
        let size = self.axis_size(axis)?;
        if start > end || end > size {
            return Err(TensorError::OutOfRange {
                what: "slice end",
                index: end.max(start),
                size,
            });
        }
        let mut view = self.clone();
        if end > start {
            view.offset += start * self.strides[axis];
        }
        view.shape[axis] = end - start;
        Ok(view)
    }

    /// A view of index `index` along `axis`, with that axis removed.
    pub fn select(&self, axis: usize, index: usize) -> Result<Self> {
        let size = self.axis_size(axis)?;
        if index >= size {
            return Err(TensorError::OutOfRange {
                what: "select",
                index,
                size,
            });
        }
        let mut view = self.clone();
        view.offset += index * self.strides[axis];
        view.shape.remove(axis);
        view.strides.remove(axis);
        Ok(view)
    }

    /// A view that repeats this tensor along axes of size 1 (stride 0) to reach `shape`.
    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Self> {
        let mismatch = || TensorError::ShapeMismatch {
            op: "broadcast_to",
            left: self.shape.clone(),
            right: shape.to_vec(),
        };
        if shape.len() < self.ndim() {
            return Err(mismatch());
        }
        element_count(shape)?;
        let lead = shape.len() - self.ndim();
        let mut strides = vec![0; shape.len()];
        for (i, (&have, &stride)) in self.shape.iter().zip(&self.strides).enumerate() {
            let want = shape[lead + i];
            strides[lead + i] = match (have, want) {
                (h, w) if h == w => stride,
                (1, _) => 0,
                _ => return Err(mismatch()),
            };
        }
        Ok(Self {
            storage: Arc::clone(&self.storage),
            offset: self.offset,
            shape: shape.to_vec(),
            strides,
        })
    }

    /// Applies `f` to every element, giving a new contiguous tensor.
    pub fn map(&self, f: impl Fn(f32) -> f32) -> Self {
        Self {
            storage: Arc::new(self.view().iter().map(|&v| f(v)).collect()),
            offset: 0,
            strides: row_major_strides(&self.shape),
            shape: self.shape.clone(),
        }
    }

    /// The largest absolute difference to `other`, or an error when shapes differ.
    pub fn max_abs_diff(&self, other: &Self) -> Result<f32> {
        if self.shape() != other.shape() {
            return Err(TensorError::ShapeMismatch {
                op: "max_abs_diff",
                left: self.shape.clone(),
                right: other.shape.clone(),
            });
        }
        Ok(self
            .view()
            .iter()
            .zip(other.view().iter())
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs())))
    }

    pub(crate) fn axis_size(&self, axis: usize) -> Result<usize> {
        self.shape
            .get(axis)
            .copied()
            .ok_or(TensorError::OutOfRange {
                what: "axis",
                index: axis,
                size: self.ndim(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iota(shape: &[usize]) -> Tensor {
        let n = shape.iter().product::<usize>();
        Tensor::from_vec(shape.to_vec(), (0..n).map(|v| v as f32).collect()).unwrap()
    }

    #[test]
    fn from_vec_checks_length() {
        let err = Tensor::from_vec(vec![2, 3], vec![0.0; 5]).unwrap_err();
        assert!(matches!(
            err,
            TensorError::DataLength {
                expected: 6,
                found: 5,
                ..
            }
        ));
        assert!(matches!(
            Tensor::zeros(&[usize::MAX, 3]),
            Err(TensorError::Overflow(_))
        ));
    }

    /// Empty shapes whose other axes multiply past `usize` (or `isize`) once overflowed the
    /// stride computation or made `view` panic; a safetensors header declaring such a shape
    /// reached both.
    #[test]
    fn empty_shapes_with_huge_axes_are_refused() {
        for shape in [
            vec![0, 1 << 32, 1 << 32],
            vec![0, 3_037_000_500, 3_037_000_500],
            vec![1 << 63, 0],
        ] {
            assert!(
                matches!(
                    Tensor::from_vec(shape.clone(), Vec::new()),
                    Err(TensorError::Overflow(_))
                ),
                "{shape:?}"
            );
            assert!(Tensor::zeros(&shape).is_err(), "{shape:?}");
        }
        let empty = Tensor::from_vec(vec![0, 1 << 20, 1 << 20], Vec::new()).unwrap();
        assert_eq!(empty.view().len(), 0);
        assert_eq!(empty, empty.clone());
        assert!(iota(&[1, 2]).broadcast_to(&[0, 1 << 62, 2]).is_err());
        assert!(iota(&[1, 2]).reshape(&[0, 1 << 62, 2]).is_err());
    }

    #[test]
    fn permute_is_a_view_and_reshape_copies_only_when_needed() {
        let x = iota(&[2, 3, 4]);
        let p = x.permute(&[2, 0, 1]).unwrap();
        assert_eq!(p.shape(), &[4, 2, 3]);
        assert!(!p.is_contiguous());
        assert_eq!(p.view()[[1, 1, 2]], x.view()[[1, 2, 1]]);
        let r = p.reshape(&[8, 3]).unwrap();
        assert_eq!(r.to_vec()[3..6], [12.0, 16.0, 20.0]);
        assert!(x.permute(&[0, 0, 1]).is_err());
        assert!(x.reshape(&[5, 5]).is_err());
    }

    #[test]
    fn slice_select_and_broadcast() {
        let x = iota(&[2, 3, 4]);
        let s = x.slice_axis(1, 1, 3).unwrap();
        assert_eq!(s.shape(), &[2, 2, 4]);
        assert_eq!(s.to_vec()[..4], [4.0, 5.0, 6.0, 7.0]);
        let c = x.select(2, 3).unwrap();
        assert_eq!(c.shape(), &[2, 3]);
        assert_eq!(c.to_vec(), vec![3.0, 7.0, 11.0, 15.0, 19.0, 23.0]);
        assert!(x.slice_axis(1, 2, 4).is_err());
        assert!(x.select(3, 0).is_err());
        let row = iota(&[1, 4]).broadcast_to(&[2, 3, 4]).unwrap();
        assert_eq!(row.to_vec()[8..12], [0.0, 1.0, 2.0, 3.0]);
        assert!(iota(&[2, 4]).broadcast_to(&[3, 4]).is_err());
    }

    #[test]
    fn strided_copies_match_ndarray_iteration() {
        let x = iota(&[2, 3, 4, 5]);
        for axes in [[3, 1, 0, 2], [0, 2, 1, 3], [1, 0, 3, 2]] {
            let p = x.permute(&axes).unwrap().slice_axis(1, 1, 2).unwrap();
            let expected: Vec<f32> = p.view().iter().copied().collect();
            assert_eq!(p.to_vec(), expected, "{axes:?}");
        }
        let b = iota(&[1, 3]).broadcast_to(&[2, 2, 3]).unwrap();
        assert_eq!(b.to_vec(), [0., 1., 2., 0., 1., 2., 0., 1., 2., 0., 1., 2.]);
        assert_eq!(
            x.select(0, 1)
                .unwrap()
                .select(0, 2)
                .unwrap()
                .select(0, 3)
                .unwrap()
                .to_vec()[0],
            115.0
        );
        assert!(x.slice_axis(2, 1, 1).unwrap().to_vec().is_empty());
    }

    #[test]
    fn writes_do_not_leak_into_clones_or_views() {
        let x = iota(&[2, 2]);
        let mut y = x.clone();
        y.as_mut_slice()[0] = 100.0;
        assert_eq!(x.to_vec()[0], 0.0);
        assert_eq!(y.to_vec()[0], 100.0);
        let mut s = x.slice_axis(0, 1, 2).unwrap();
        s.as_mut_slice()[0] = -1.0;
        assert_eq!(s.to_vec(), vec![-1.0, 3.0]);
        assert_eq!(x.to_vec(), vec![0.0, 1.0, 2.0, 3.0]);
    }
}
