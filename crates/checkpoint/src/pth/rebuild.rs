//! Turning tensor views into `f32` tensors: reading their storages, checking that every view
//! fits, and gathering strided elements into contiguous data.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek};

use half::{bf16, f16};
use idlevit_tensor::Tensor;

use super::archive::Archive;
use super::budget::{Budget, map_bytes, vec_bytes};
use super::error::PthError;
use super::globals::DType;
use super::value::{Heap, ObjId, Object, TensorView};

/// The `f32` weights returned may take at most this many times the bytes of the storages they
/// come from (plus [`EXPANSION_ALLOWANCE_BYTES`]). Views may overlap or broadcast (stride 0), and
/// one tensor may be named many times, so without a bound a few bytes of storage could ask for
/// terabytes. Every name counts: a tensor named twice counts twice, though it is built once,
/// because whoever receives the weights may well copy each.
pub const MAX_VIEW_EXPANSION: usize = 16;

/// Bytes of `f32` output allowed on top of [`MAX_VIEW_EXPANSION`] times the storage bytes.
pub const EXPANSION_ALLOWANCE_BYTES: usize = 64 << 20;

/// Reads the storages behind `weights` (name, tensor object) and returns each as a tensor.
/// Weights naming the same tensor object share one tensor. The bookkeeping is charged to the
/// heap's budget; the values are bounded by [`MAX_VIEW_EXPANSION`].
pub(crate) fn materialize<R: Read + Seek>(
    archive: &mut Archive<R>,
    heap: &Heap,
    weights: Vec<(String, ObjId)>,
) -> Result<Vec<(String, Tensor)>, PthError> {
    let budget = heap.budget();
    let views = distinct_views(heap, &weights, budget)?;
    budget.charge(map_bytes::<&str, usize>(views.len()), None)?;
    let mut storage_bytes: BTreeMap<&str, usize> = BTreeMap::new();
    for (name, view) in views.values() {
        let nbytes = view
            .storage
            .nbytes()
            .ok_or_else(|| overflow(name, "storage size"))?;
        let needed = storage_bytes.entry(&view.storage.key).or_default();
        *needed = (*needed).max(nbytes);
        check_bounds(name, view)?;
        element_count(&view.shape).ok_or_else(|| overflow(name, "element count"))?;
    }
    let mut output_bytes = 0usize;
    for (_, id) in &weights {
        if let Some((_, view)) = views.get(id) {
            let numel = element_count(&view.shape).unwrap_or(usize::MAX);
            output_bytes = output_bytes.saturating_add(numel.saturating_mul(4));
        }
    }
    let total_storage = storage_bytes
        .values()
        .fold(0usize, |a, &b| a.saturating_add(b));
    let limit = total_storage
        .saturating_mul(MAX_VIEW_EXPANSION)
        .saturating_add(EXPANSION_ALLOWANCE_BYTES);
    if output_bytes > limit {
        return Err(PthError::Limit {
            what: format!(
                "f32 bytes of the weights ({output_bytes}, from {total_storage} bytes of storage \
                 through overlapping or broadcast views)"
            ),
            limit,
            offset: None,
        });
    }

    // One storage at a time, so that peak memory is one storage plus the output.
    budget.charge(
        map_bytes::<&str, Vec<ObjId>>(storage_bytes.len())
            .saturating_add(vec_bytes::<ObjId>(views.len()).saturating_mul(2)),
        None,
    )?;
    let mut by_storage: BTreeMap<&str, Vec<ObjId>> = BTreeMap::new();
    for (&id, (_, view)) in &views {
        by_storage.entry(&view.storage.key).or_default().push(id);
    }
    let big_endian = archive.big_endian();
    let mut tensors: HashMap<ObjId, Tensor> = HashMap::new();
    for (key, ids) in by_storage {
        let nbytes = storage_bytes.get(key).copied().unwrap_or(0);
        let bytes = archive.storage(key, nbytes)?;
        for id in ids {
            let Some((name, view)) = views.get(&id) else {
                continue;
            };
            let data = gather(view, &bytes, big_endian).ok_or_else(|| out_of_bounds(name, view))?;
            budget.reserve_entry(&mut tensors, None)?;
            budget.charge(tensor_overhead(view.shape.len()), None)?;
            let tensor =
                Tensor::from_vec(view.shape.clone(), data).map_err(|source| PthError::Tensor {
                    name: (*name).to_owned(),
                    source,
                })?;
            tensors.insert(id, tensor);
        }
    }
    // Every weight names a tensor object, and each of those was built above. Each name gets
    // its own tensor handle (sharing the values), whose shape and strides are its own.
    let mut output = Vec::new();
    budget.reserve(&mut output, weights.len(), None)?;
    for (name, id) in weights {
        if let Some(tensor) = tensors.get(&id) {
            budget.charge(tensor_overhead(tensor.shape().len()), None)?;
            output.push((name, tensor.clone()));
        }
    }
    Ok(output)
}

/// Heap bytes of a tensor handle beside its values: its shape and its strides.
fn tensor_overhead(ndim: usize) -> usize {
    vec_bytes::<usize>(ndim).saturating_mul(2)
}

/// Each distinct tensor object among `weights`, with the first name it goes by.
fn distinct_views<'a>(
    heap: &'a Heap,
    weights: &'a [(String, ObjId)],
    budget: &Budget,
) -> Result<BTreeMap<ObjId, (&'a str, &'a TensorView)>, PthError> {
    let mut views = BTreeMap::new();
    for (name, id) in weights {
        if let Object::Tensor(view) = heap.get(*id)
            && !views.contains_key(id)
        {
            budget.charge(map_bytes::<ObjId, (&str, &TensorView)>(1), None)?;
            views.insert(*id, (name.as_str(), &**view));
        }
    }
    Ok(views)
}

fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// Elements of the view's type that the storage holds.
fn available_elements(view: &TensorView) -> usize {
    view.storage.nbytes().unwrap_or(0) / view.dtype.size().max(1)
}

/// Highest element index the view touches, when it touches any (`Ok(None)` when it is empty).
fn last_index(name: &str, view: &TensorView) -> Result<Option<usize>, PthError> {
    if view.shape.contains(&0) {
        return Ok(None);
    }
    view.shape
        .iter()
        .zip(&view.stride)
        .try_fold(view.offset, |acc, (&size, &stride)| {
            acc.checked_add(size.saturating_sub(1).checked_mul(stride)?)
        })
        .map(Some)
        .ok_or_else(|| overflow(name, "highest element index of the view"))
}

/// Refuses a view that reaches past the end of its storage.
fn check_bounds(name: &str, view: &TensorView) -> Result<(), PthError> {
    match last_index(name, view)? {
        Some(last) if last >= available_elements(view) => Err(out_of_bounds(name, view)),
        _ => Ok(()),
    }
}

fn out_of_bounds(name: &str, view: &TensorView) -> PthError {
    // Views whose highest index overflows are refused as overflows before they get here.
    let last = last_index(name, view).ok().flatten().unwrap_or(usize::MAX);
    PthError::ViewOutOfBounds {
        name: name.to_owned(),
        offset: view.offset,
        shape: view.shape.clone(),
        stride: view.stride.clone(),
        last,
        key: view.storage.key.clone(),
        available: available_elements(view),
    }
}

fn overflow(name: &str, what: &'static str) -> PthError {
    PthError::Overflow {
        name: name.to_owned(),
        what,
    }
}

/// The view's elements in row-major order, converted to `f32`; `None` if any falls outside
/// `bytes` or the type is not a float type.
pub(crate) fn gather(view: &TensorView, bytes: &[u8], big_endian: bool) -> Option<Vec<f32>> {
    match (view.dtype, big_endian) {
        (DType::F32, false) => gather_as(view, bytes, f32::from_le_bytes),
        (DType::F32, true) => gather_as(view, bytes, f32::from_be_bytes),
        (DType::F64, false) => gather_as(view, bytes, |b| f64::from_le_bytes(b) as f32),
        (DType::F64, true) => gather_as(view, bytes, |b| f64::from_be_bytes(b) as f32),
        (DType::F16, false) => gather_as(view, bytes, |b| f16::from_le_bytes(b).to_f32()),
        (DType::F16, true) => gather_as(view, bytes, |b| f16::from_be_bytes(b).to_f32()),
        (DType::BF16, false) => gather_as(view, bytes, |b| bf16::from_le_bytes(b).to_f32()),
        (DType::BF16, true) => gather_as(view, bytes, |b| bf16::from_be_bytes(b).to_f32()),
        _ => None,
    }
}

/// [`gather`] for elements of `N` bytes, decoded by `decode`. Rows whose elements are adjacent
/// (innermost stride 1) are decoded as one run.
fn gather_as<const N: usize>(
    view: &TensorView,
    bytes: &[u8],
    decode: impl Fn([u8; N]) -> f32,
) -> Option<Vec<f32>> {
    let numel = element_count(&view.shape)?;
    let mut out = Vec::with_capacity(numel);
    if numel == 0 {
        return Some(out);
    }
    let chunk = |chunk: &[u8]| {
        let mut array = [0u8; N];
        array.copy_from_slice(chunk);
        decode(array)
    };
    let element = |index: usize| -> Option<f32> {
        let start = index.checked_mul(N)?;
        Some(chunk(bytes.get(start..start.checked_add(N)?)?))
    };
    let (Some((&row_len, outer_shape)), Some((&row_stride, outer_stride))) =
        (view.shape.split_last(), view.stride.split_last())
    else {
        out.push(element(view.offset)?);
        return Some(out);
    };
    let mut index = vec![0usize; outer_shape.len()];
    loop {
        let row_start = index
            .iter()
            .zip(outer_stride)
            .try_fold(view.offset, |acc, (&i, &s)| {
                acc.checked_add(i.checked_mul(s)?)
            })?;
        if row_stride == 1 {
            let start = row_start.checked_mul(N)?;
            let end = row_len.checked_mul(N)?.checked_add(start)?;
            out.extend(bytes.get(start..end)?.chunks_exact(N).map(chunk));
        } else {
            for j in 0..row_len {
                out.push(element(j.checked_mul(row_stride)?.checked_add(row_start)?)?);
            }
        }
        // Advance the multi-index over the outer axes, last axis fastest.
        let mut carry = true;
        for (i, &size) in index.iter_mut().zip(outer_shape).rev() {
            *i += 1;
            if *i < size {
                carry = false;
                break;
            }
            *i = 0;
        }
        if carry {
            return Some(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pth::value::Storage;

    fn view(
        dtype: DType,
        numel: usize,
        offset: usize,
        shape: &[usize],
        stride: &[usize],
    ) -> TensorView {
        TensorView {
            storage: Storage {
                key: "0".into(),
                dtype,
                numel,
            },
            dtype,
            offset,
            shape: shape.to_vec(),
            stride: stride.to_vec(),
        }
    }

    fn f32_bytes(values: impl IntoIterator<Item = f32>) -> Vec<u8> {
        values.into_iter().flat_map(f32::to_le_bytes).collect()
    }

    #[test]
    fn gathers_strided_views() {
        let bytes = f32_bytes((0..12).map(|v| v as f32));
        // Transpose of a 3x4 matrix.
        let t = view(DType::F32, 12, 0, &[4, 3], &[1, 4]);
        let expected = [0., 4., 8., 1., 5., 9., 2., 6., 10., 3., 7., 11.];
        assert_eq!(gather(&t, &bytes, false).unwrap(), expected);
        // Column slice with an offset.
        let cols = view(DType::F32, 12, 1, &[3, 2], &[4, 1]);
        assert_eq!(
            gather(&cols, &bytes, false).unwrap(),
            [1., 2., 5., 6., 9., 10.]
        );
        // Broadcast with stride 0.
        let bcast = view(DType::F32, 12, 2, &[2, 3], &[0, 1]);
        assert_eq!(
            gather(&bcast, &bytes, false).unwrap(),
            [2., 3., 4., 2., 3., 4.]
        );
        // Scalar and empty views.
        assert_eq!(
            gather(&view(DType::F32, 12, 7, &[], &[]), &bytes, false).unwrap(),
            [7.]
        );
        assert!(
            gather(&view(DType::F32, 12, 99, &[0, 5], &[5, 1]), &bytes, false)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn converts_reduced_precision_and_big_endian() {
        let halves: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_le_bytes())
            .collect();
        assert_eq!(
            gather(&view(DType::F16, 2, 0, &[2], &[1]), &halves, false).unwrap(),
            [1.5, -2.0]
        );
        let brains: Vec<u8> = [0.5f32, 3.0]
            .iter()
            .flat_map(|&v| bf16::from_f32(v).to_be_bytes())
            .collect();
        assert_eq!(
            gather(&view(DType::BF16, 2, 0, &[2], &[1]), &brains, true).unwrap(),
            [0.5, 3.0]
        );
        let doubles: Vec<u8> = [0.25f64, 8.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(
            gather(&view(DType::F64, 2, 0, &[2], &[1]), &doubles, false).unwrap(),
            [0.25, 8.0]
        );
    }

    #[test]
    fn bounds_are_checked() {
        let bytes = f32_bytes((0..6).map(|v| v as f32));
        assert!(check_bounds("w", &view(DType::F32, 6, 0, &[2, 3], &[3, 1])).is_ok());
        let past = view(DType::F32, 6, 1, &[2, 3], &[3, 1]);
        let err = check_bounds("w", &past).unwrap_err();
        assert!(err.to_string().contains("reaches element 6"), "{err}");
        assert!(gather(&past, &bytes, false).is_none());
        let huge = view(DType::F32, 6, 0, &[2, 2], &[usize::MAX, 1]);
        assert!(matches!(
            check_bounds("w", &huge),
            Err(PthError::Overflow { .. })
        ));
        assert!(gather(&huge, &bytes, false).is_none());
        // Empty views may sit anywhere.
        assert!(check_bounds("w", &view(DType::F32, 6, 100, &[0], &[1])).is_ok());
    }
}
