//! safetensors in and out. Writing goes through the `safetensors` crate; reading parses the
//! header here, into one compact entry per tensor, because the crate's parser buffers the whole
//! JSON document as generic values first and so takes about 15 times the header's length
//! (a 98 MB header of tiny tensors took 1.4 GB).
//!
//! Reading allocates nothing a header merely declares. A header longer than
//! [`MAX_HEADER_BYTES`] or than the file, a shape of more than [`MAX_SHAPE_AXES`] axes, a name
//! given twice, element counts or byte sizes that overflow `usize`, and any tensor whose byte
//! range is not exactly `numel * dtype size` bytes of the file are refused, as are ranges that
//! overlap or leave gaps and data that does not end where the file ends. So every tensor
//! converted to `f32` is backed by its bytes in the file: the `f32` values take at most twice
//! the file's length (f16 and bf16 widen). A tensor with a zero-sized axis is backed by nothing,
//! and its other axes must still multiply to at most `isize::MAX`.

use std::fmt;
use std::path::Path;

use idlevit_tensor::Tensor;
use safetensors::tensor::{Dtype, TensorView};
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::files::MAX_FILE_BYTES;
use crate::names::clip;
use crate::{Checkpoint, CheckpointError, Result};

/// Longest safetensors header accepted, in bytes. A header takes about 100 bytes a tensor, so
/// this admits some 150 000 tensors; it bounds the memory parsing a header can take (about 8
/// times its length, see `docs/limits.md`).
pub const MAX_HEADER_BYTES: usize = 16 << 20;

/// Most axes a safetensors tensor may have (torch's own limit).
pub const MAX_SHAPE_AXES: usize = 64;

/// Bytes of the little-endian header length that starts a safetensors file.
const LENGTH_BYTES: usize = 8;

impl Checkpoint {
    /// Reads every tensor of a safetensors file, converting f16/bf16/f64 to f32. The file must
    /// be a regular file of at most [`MAX_FILE_BYTES`]; every error names it.
    pub fn load_safetensors(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = crate::read_file_capped(path, MAX_FILE_BYTES, "safetensors file")?;
        Self::from_safetensors_bytes(&bytes).map_err(|error| CheckpointError::File {
            path: path.display().to_string(),
            error: Box::new(error),
        })
    }

    /// Parses safetensors bytes, converting f16/bf16/f64 to f32.
    pub fn from_safetensors_bytes(bytes: &[u8]) -> Result<Self> {
        let (entries, data) = parse(bytes)?;
        let mut ckpt = Checkpoint::default();
        // Entries are consumed one by one, so that their names and shapes move into the
        // checkpoint instead of being copied.
        for entry in entries {
            let (start, end) = entry.data_offsets;
            let stored = data.get(start..end).unwrap_or_default();
            match decode(&entry.name, entry.dtype, stored) {
                Ok(values) => {
                    let tensor = Tensor::from_vec(entry.shape, values).map_err(|e| {
                        CheckpointError::Safetensors(format!("`{}`: {e}", clip(&entry.name)))
                    })?;
                    ckpt.insert(entry.name, tensor);
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
        std::fs::write(path, bytes).map_err(|error| CheckpointError::Io {
            path: path.display().to_string(),
            error,
        })
    }
}

/// One tensor as the header describes it.
#[derive(Debug, Deserialize)]
struct Entry {
    #[serde(skip)]
    name: String,
    dtype: Dtype,
    #[serde(deserialize_with = "short_shape")]
    shape: Vec<usize>,
    data_offsets: (usize, usize),
}

/// The header's tensors, checked against the data after it, and that data.
fn parse(bytes: &[u8]) -> Result<(Vec<Entry>, &[u8])> {
    let invalid = |what: String| CheckpointError::Safetensors(what);
    let (length, rest) = bytes
        .split_first_chunk::<LENGTH_BYTES>()
        .ok_or_else(|| invalid(format!("{} bytes, too short to hold a header", bytes.len())))?;
    let length = u64::from_le_bytes(*length);
    let header_len = usize::try_from(length)
        .ok()
        .filter(|&n| n <= MAX_HEADER_BYTES)
        .ok_or_else(|| {
            invalid(format!(
                "a header of {length} bytes exceeds the limit of {MAX_HEADER_BYTES}"
            ))
        })?;
    let (header, data) = rest.split_at_checked(header_len).ok_or_else(|| {
        invalid(format!(
            "a header of {header_len} bytes runs past the end of the file ({} bytes)",
            bytes.len()
        ))
    })?;
    let header = std::str::from_utf8(header)
        .map_err(|e| invalid(format!("the header is not UTF-8 ({e})")))?;
    let Header(mut entries) = serde_json::from_str(header)
        .map_err(|e| invalid(format!("the header is not a tensor table ({e})")))?;
    check_names(&mut entries)?;
    entries.sort_by_key(|e| e.data_offsets);
    let mut end = 0;
    for entry in &entries {
        let name = clip(&entry.name);
        let (start, stop) = entry.data_offsets;
        if start != end || stop < start {
            return Err(invalid(format!(
                "`{name}`: data offsets [{start}, {stop}] do not start where the previous \
                 tensor ends ({end})"
            )));
        }
        let bytes = entry
            .shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .and_then(|n| n.checked_mul(entry.dtype.bitsize()))
            .filter(|bits| bits % 8 == 0)
            .map(|bits| bits / 8)
            .ok_or_else(|| {
                invalid(format!(
                    "`{name}`: shape {:?} of {:?} is not a whole number of bytes that fits in memory",
                    entry.shape, entry.dtype
                ))
            })?;
        if stop - start != bytes {
            return Err(invalid(format!(
                "`{name}`: shape {:?} of {:?} needs {bytes} bytes, its data offsets hold {}",
                entry.shape,
                entry.dtype,
                stop - start
            )));
        }
        end = stop;
    }
    if end != data.len() {
        return Err(invalid(format!(
            "the tensors end at byte {end} of the data, which is {} bytes long",
            data.len()
        )));
    }
    Ok((entries, data))
}

/// Refuses a name given twice (the header is a JSON object; a later key would silently
/// replace an earlier one).
fn check_names(entries: &mut [Entry]) -> Result<()> {
    entries.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    match entries.windows(2).find(|pair| pair[0].name == pair[1].name) {
        Some(pair) => Err(CheckpointError::Safetensors(format!(
            "tensor `{}` is given twice",
            clip(&pair[0].name)
        ))),
        None => Ok(()),
    }
}

/// The header's tensor table; `__metadata__` is skipped without being stored.
struct Header(Vec<Entry>);

impl<'de> Deserialize<'de> for Header {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Table;
        impl<'de> Visitor<'de> for Table {
            type Value = Header;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of tensors")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Header, A::Error> {
                let mut entries = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    if name == "__metadata__" {
                        map.next_value::<IgnoredAny>()?;
                        continue;
                    }
                    let mut entry: Entry = map.next_value()?;
                    entry.name = name;
                    entries.push(entry);
                }
                Ok(Header(entries))
            }
        }
        deserializer.deserialize_map(Table)
    }
}

/// A shape of at most [`MAX_SHAPE_AXES`] axes, refused as soon as it grows past that.
fn short_shape<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<usize>, D::Error> {
    struct Axes;
    impl<'de> Visitor<'de> for Axes {
        type Value = Vec<usize>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a shape of at most {MAX_SHAPE_AXES} sizes")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<usize>, A::Error> {
            let mut shape = Vec::new();
            while let Some(size) = seq.next_element()? {
                if shape.len() == MAX_SHAPE_AXES {
                    return Err(de::Error::custom(format_args!(
                        "a shape of more than {MAX_SHAPE_AXES} axes"
                    )));
                }
                shape.push(size);
            }
            shape.shrink_to_fit();
            Ok(shape)
        }
    }
    deserializer.deserialize_seq(Axes)
}

/// Decodes the stored bytes of tensor `name` into f32 values.
fn decode(name: &str, dtype: Dtype, data: &[u8]) -> Result<Vec<f32>> {
    fn each<const N: usize>(data: &[u8], convert: impl Fn([u8; N]) -> f32) -> Vec<f32> {
        let element = |b: &[u8]| convert(std::array::from_fn(|i| b[i]));
        data.chunks_exact(N).map(element).collect()
    }
    Ok(match dtype {
        Dtype::F32 => each(data, f32::from_le_bytes),
        Dtype::F16 => each(data, |b| half::f16::from_le_bytes(b).to_f32()),
        Dtype::BF16 => each(data, |b| half::bf16::from_le_bytes(b).to_f32()),
        Dtype::F64 => each(data, |b| f64::from_le_bytes(b) as f32),
        other => {
            return Err(CheckpointError::Dtype {
                name: name.to_string(),
                dtype: format!("{other:?}"),
            });
        }
    })
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

    fn header_only(header: &str) -> Vec<u8> {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes
    }

    #[test]
    fn headers_are_bounded_before_they_are_parsed() {
        let mut bytes = ((MAX_HEADER_BYTES + 1) as u64).to_le_bytes().to_vec();
        bytes.extend(vec![b' '; MAX_HEADER_BYTES + 1]);
        let err = Checkpoint::from_safetensors_bytes(&bytes).unwrap_err();
        assert!(
            err.to_string().contains("exceeds the limit of 16777216"),
            "{err}"
        );
        // Declared longer than the file.
        let mut bytes = 100u64.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        let err = Checkpoint::from_safetensors_bytes(&bytes).unwrap_err();
        assert!(err.to_string().contains("runs past the end"), "{err}");
    }

    #[test]
    fn shapes_names_and_metadata() {
        let axes = |n: usize| {
            let dims = vec!["1"; n].join(",");
            header_only(&format!(
                r#"{{"w":{{"dtype":"F32","shape":[0,{dims}],"data_offsets":[0,0]}}}}"#
            ))
        };
        assert!(Checkpoint::from_safetensors_bytes(&axes(MAX_SHAPE_AXES - 1)).is_ok());
        let err = Checkpoint::from_safetensors_bytes(&axes(MAX_SHAPE_AXES)).unwrap_err();
        assert!(err.to_string().contains("more than 64 axes"), "{err}");
        // A name given twice would otherwise hide the first tensor.
        let twice = header_only(
            r#"{"w":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"w":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}"#,
        );
        let err = Checkpoint::from_safetensors_bytes(&twice).unwrap_err();
        assert!(err.to_string().contains("`w` is given twice"), "{err}");
        // Metadata of any form is skipped; a tensor's unknown fields are ignored.
        let meta = header_only(
            r#"{"__metadata__":{"format":"pt","nested":[1,{"a":null}]},"w":{"dtype":"F32","shape":[0],"data_offsets":[0,0],"extra":1}}"#,
        );
        let ckpt = Checkpoint::from_safetensors_bytes(&meta).unwrap();
        assert_eq!(ckpt.len(), 1);
        // Unknown element types and missing fields are errors, as they were.
        for header in [
            r#"{"w":{"dtype":"F33","shape":[0],"data_offsets":[0,0]}}"#,
            r#"{"w":{"dtype":"F32","data_offsets":[0,0]}}"#,
            r#"[1,2]"#,
        ] {
            assert!(Checkpoint::from_safetensors_bytes(&header_only(header)).is_err());
        }
        // A long name echoed in an error is clipped.
        let long = "n".repeat(100_000);
        let bad = header_only(&format!(
            r#"{{"{long}":{{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}}}"#
        ));
        let mut bad = bad;
        bad.extend_from_slice(&[0; 4]);
        let err = Checkpoint::from_safetensors_bytes(&bad).unwrap_err();
        assert!(err.to_string().len() < 300, "{}", err.to_string().len());
    }

    #[test]
    fn loading_a_path_names_it_in_errors() {
        let file = tempfile::Builder::new()
            .prefix("idlevit_st_")
            .suffix(".safetensors")
            .tempfile()
            .unwrap();
        let path = file.path();
        std::fs::write(path, b"not safetensors").unwrap();
        let err = Checkpoint::load_safetensors(path).unwrap_err().to_string();
        let name = path.display().to_string();
        assert!(
            err.starts_with(&format!("{name}: not a valid safetensors file")),
            "{err}"
        );
        assert_eq!(err.matches(&name).count(), 1, "{err}");
        #[cfg(unix)]
        {
            let err = Checkpoint::load_safetensors("/dev/zero")
                .unwrap_err()
                .to_string();
            assert!(
                err.ends_with("it is a character device, not a regular file"),
                "{err}"
            );
        }
    }
}
