//! safetensors in and out, through the `safetensors` crate (it validates headers, offsets
//! and lengths, which a hand-written parser would have to re-prove).
//!
//! Reading allocates nothing a header merely declares. The crate refuses a header longer than
//! 100 MB or than the file, element counts or byte sizes that overflow `usize`, and any tensor
//! whose byte range is not exactly `numel * dtype size` bytes of the file, ranges that overlap
//! or leave gaps, and data that does not end where the file ends. So every tensor converted
//! to `f32` is backed by its bytes in the file: the `f32` values take at most twice the file's
//! length (f16 and bf16 widen). A tensor with a zero-sized axis is backed by nothing, and its
//! other axes must still multiply to at most `isize::MAX`.

use std::borrow::Cow;
use std::path::Path;

use idlevit_tensor::Tensor;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::{Checkpoint, CheckpointError, Result};

impl Checkpoint {
    /// Reads every tensor of a safetensors file, converting f16/bf16/f64 to f32.
    pub fn load_safetensors(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| CheckpointError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_safetensors_bytes(&bytes)
    }

    /// Parses safetensors bytes, converting f16/bf16/f64 to f32.
    pub fn from_safetensors_bytes(bytes: &[u8]) -> Result<Self> {
        let file = SafeTensors::deserialize(bytes)
            .map_err(|e| CheckpointError::Safetensors(e.to_string()))?;
        let mut ckpt = Checkpoint::default();
        for (name, view) in file.tensors() {
            match decode(&name, &view) {
                Ok(values) => {
                    let tensor = Tensor::from_vec(view.shape().to_vec(), values)
                        .map_err(|e| CheckpointError::Safetensors(format!("`{name}`: {e}")))?;
                    ckpt.insert(name, tensor);
                }
                // Integer bookkeeping (step counters, BatchNorm's num_batches_tracked) is not a
                // weight: keep its name so a lookup can say why it is absent.
                Err(CheckpointError::Dtype { name, dtype }) => ckpt.skip(name, dtype),
                Err(other) => return Err(other),
            }
        }
        Ok(ckpt)
    }

    /// Serialises every tensor as little-endian f32 safetensors bytes.
    pub fn to_safetensors_bytes(&self) -> Result<Vec<u8>> {
        let encoded: Vec<(String, Vec<usize>, Vec<u8>)> = self
            .iter()
            .map(|(name, t)| {
                let bytes = t.to_vec().iter().flat_map(|v| v.to_le_bytes()).collect();
                (name.to_string(), t.shape().to_vec(), bytes)
            })
            .collect();
        let views = encoded
            .iter()
            .map(|(name, shape, bytes)| {
                TensorView::new(Dtype::F32, shape.clone(), bytes)
                    .map(|view| (name.as_str(), view))
                    .map_err(|e| CheckpointError::Safetensors(format!("{name}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        safetensors::serialize(views, None).map_err(|e| CheckpointError::Safetensors(e.to_string()))
    }

    /// Writes every tensor to a safetensors file as f32.
    pub fn save_safetensors(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = self.to_safetensors_bytes()?;
        std::fs::write(path, bytes).map_err(|source| CheckpointError::Io {
            path: path.display().to_string(),
            source,
        })
    }
}

/// Decodes a stored tensor into f32 values.
fn decode(name: &str, view: &TensorView<'_>) -> Result<Vec<f32>> {
    let data: Cow<'_, [u8]> = Cow::Borrowed(view.data());
    let values = match view.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
            .collect(),
        other => {
            return Err(CheckpointError::Dtype {
                name: name.to_string(),
                dtype: format!("{other:?}"),
            });
        }
    };
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        let mut ckpt = Checkpoint::default();
        ckpt.insert(
            "a",
            Tensor::from_vec(vec![2, 2], vec![1.0, -2.0, 3.5, 0.25]).unwrap(),
        );
        ckpt.insert("b.c", Tensor::scalar(7.0));
        ckpt
    }

    #[test]
    fn round_trip() {
        let bytes = sample().to_safetensors_bytes().unwrap();
        let back = Checkpoint::from_safetensors_bytes(&bytes).unwrap();
        assert_eq!(back, sample());
    }

    #[test]
    fn truncated_and_corrupt_files_are_errors() {
        let bytes = sample().to_safetensors_bytes().unwrap();
        for len in 0..bytes.len() {
            assert!(
                Checkpoint::from_safetensors_bytes(&bytes[..len]).is_err(),
                "prefix of {len} bytes parsed"
            );
        }
        let mut corrupt = bytes.clone();
        corrupt[0] = 0xff;
        corrupt[7] = 0x7f;
        assert!(Checkpoint::from_safetensors_bytes(&corrupt).is_err());
    }

    /// A header naming `shape` for tensor `w` of `dtype` with data offsets `[0, end]`, followed
    /// by `body`.
    fn declared(dtype: &str, shape: &str, end: u64, body: &[u8]) -> Vec<u8> {
        let header =
            format!(r#"{{"w":{{"dtype":"{dtype}","shape":{shape},"data_offsets":[0,{end}]}}}}"#);
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(body);
        bytes
    }

    #[test]
    fn declared_sizes_must_be_backed_by_the_file() {
        let four = 1.5f32.to_le_bytes();
        assert!(Checkpoint::from_safetensors_bytes(&declared("F32", "[1]", 4, &four)).is_ok());
        for (shape, end) in [
            // More elements than bytes.
            ("[1099511627776]", 4),
            // The byte range the header claims, past the end of the file.
            ("[1099511627776]", 4 << 40),
            // An element count that overflows usize, and one whose byte size does.
            ("[4294967296,4294967296,2]", 0),
            ("[4611686018427387904]", 0),
            // Offsets that do not match the shape.
            ("[2]", 4),
        ] {
            let bytes = declared("F32", shape, end, &four);
            let err = Checkpoint::from_safetensors_bytes(&bytes).unwrap_err();
            assert!(
                matches!(err, CheckpointError::Safetensors(_)),
                "{shape}: {err}"
            );
        }
    }

    /// These headers once panicked in the tensor crate (stride overflow, then an empty
    /// `ndarray` view): a zero-sized axis beside axes that multiply past `usize` or `isize`.
    #[test]
    fn empty_tensors_with_huge_axes_are_errors() {
        for shape in ["[0,4294967296,4294967296]", "[0,3037000500,3037000500]"] {
            let bytes = declared("F32", shape, 0, &[]);
            let err = Checkpoint::from_safetensors_bytes(&bytes).unwrap_err();
            assert!(err.to_string().contains("`w`"), "{err}");
        }
        let fine = declared("F32", "[0,65536,65536]", 0, &[]);
        let ckpt = Checkpoint::from_safetensors_bytes(&fine).unwrap();
        assert_eq!(ckpt.require("w").unwrap().numel(), 0);
    }

    #[test]
    fn half_precision_is_widened() {
        let values = [half::f16::from_f32(1.5), half::f16::from_f32(-0.125)];
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = TensorView::new(Dtype::F16, vec![2], &bytes).unwrap();
        let file = safetensors::serialize([("h", view)], None).unwrap();
        let ckpt = Checkpoint::from_safetensors_bytes(&file).unwrap();
        assert_eq!(ckpt.get("h").unwrap().to_vec(), vec![1.5, -0.125]);
    }

    #[test]
    fn integer_tensors_are_skipped_and_named_when_asked_for() {
        let bytes = [0u8; 8];
        let view = TensorView::new(Dtype::I64, vec![1], &bytes).unwrap();
        let file = safetensors::serialize([("steps", view)], None).unwrap();
        let ckpt = Checkpoint::from_safetensors_bytes(&file).unwrap();
        assert!(ckpt.is_empty());
        let err = crate::WeightReader::new(ckpt)
            .take("steps", &[1])
            .unwrap_err();
        assert!(err.to_string().contains("I64"), "{err}");
    }
}
