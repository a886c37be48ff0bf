//! Hand-built pickles and archives for the tests of this module.

use std::io::{Cursor, Write};

use zip::ZipWriter;
use zip::write::SimpleFileOptions;

use super::value::{Heap, ObjId, Object};

/// Writes a pickle opcode by opcode.
#[derive(Clone, Debug, Default)]
pub(crate) struct Pickle {
    pub bytes: Vec<u8>,
}

impl Pickle {
    /// A pickle starting with `PROTO protocol`.
    pub fn proto(protocol: u8) -> Self {
        Self {
            bytes: vec![0x80, protocol],
        }
    }

    /// Appends raw bytes (opcodes and their arguments).
    pub fn raw(mut self, bytes: &[u8]) -> Self {
        self.bytes.extend_from_slice(bytes);
        self
    }

    /// Pushes an int with the smallest binary opcode that holds it.
    pub fn int(self, value: i64) -> Self {
        match value {
            0..=0xff => self.raw(&[b'K', value as u8]),
            0x100..=0xffff => self.raw(b"M").raw(&(value as u16).to_le_bytes()),
            _ if i32::try_from(value).is_ok() => self.raw(b"J").raw(&(value as i32).to_le_bytes()),
            _ => self.raw(&[0x8a, 8]).raw(&value.to_le_bytes()),
        }
    }

    /// Pushes a str (`BINUNICODE`).
    pub fn str(self, text: &str) -> Self {
        self.raw(b"X")
            .raw(&(text.len() as u32).to_le_bytes())
            .raw(text.as_bytes())
    }

    /// Pushes a global (`GLOBAL`).
    pub fn global(self, module: &str, name: &str) -> Self {
        self.raw(b"c")
            .raw(module.as_bytes())
            .raw(b"\n")
            .raw(name.as_bytes())
            .raw(b"\n")
    }

    /// Pushes a tuple of ints.
    pub fn int_tuple(self, values: &[usize]) -> Self {
        values
            .iter()
            .fold(self.raw(b"("), |p, &v| p.int(v as i64))
            .raw(b"t")
    }

    /// Pushes a storage as `torch.save` does: a persistent id tuple and `BINPERSID`.
    pub fn storage(self, class: &str, key: &str, numel: usize) -> Self {
        self.raw(b"(")
            .str("storage")
            .global("torch", class)
            .str(key)
            .str("cpu")
            .int(numel as i64)
            .raw(b"tQ")
    }

    /// Pushes `_rebuild_tensor_v2(storage, offset, shape, stride, False, OrderedDict())` over
    /// storage `key` of `numel` elements of `class`.
    pub fn tensor(
        self,
        class: &str,
        key: &str,
        numel: usize,
        offset: usize,
        shape: &[usize],
        stride: &[usize],
    ) -> Self {
        self.global("torch._utils", "_rebuild_tensor_v2")
            .raw(b"(")
            .storage(class, key, numel)
            .int(offset as i64)
            .int_tuple(shape)
            .int_tuple(stride)
            .raw(&[0x89])
            .global("collections", "OrderedDict")
            .raw(b")RtR")
    }

    /// Appends `STOP` and returns the bytes.
    pub fn stop(self) -> Vec<u8> {
        self.raw(b".").bytes
    }
}

/// A zip archive of stored (uncompressed) entries, as `torch.save` writes them.
pub(crate) fn zip_entries(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, data) in entries {
        zip.start_file(*name, options).expect("start zip entry");
        zip.write_all(data).expect("write zip entry");
    }
    zip.finish().expect("finish zip").into_inner()
}

/// A checkpoint archive named `archive` holding `pickle` and the storages `(key, bytes)`.
pub(crate) fn checkpoint(pickle: &[u8], storages: &[(&str, &[u8])]) -> Vec<u8> {
    let names: Vec<String> = storages
        .iter()
        .map(|(key, _)| format!("archive/data/{key}"))
        .collect();
    let mut entries: Vec<(&str, &[u8])> = vec![
        ("archive/data.pkl", pickle),
        ("archive/byteorder", b"little"),
    ];
    entries.extend(
        names
            .iter()
            .zip(storages)
            .map(|(name, (_, data))| (name.as_str(), *data)),
    );
    entries.push(("archive/version", b"3\n"));
    zip_entries(&entries)
}

/// Little-endian `f32` bytes of `values`.
pub(crate) fn f32_bytes(values: impl IntoIterator<Item = f32>) -> Vec<u8> {
    values.into_iter().flat_map(f32::to_le_bytes).collect()
}

/// A Python-like rendering of an object, for compact assertions.
pub(crate) fn repr(heap: &Heap, id: ObjId) -> String {
    repr_depth(heap, id, 8)
}

fn repr_depth(heap: &Heap, id: ObjId, depth: usize) -> String {
    if depth == 0 {
        return "...".into();
    }
    let all = |items: &[ObjId]| -> Vec<String> {
        items
            .iter()
            .map(|&i| repr_depth(heap, i, depth - 1))
            .collect()
    };
    match heap.get(id) {
        Object::None => "None".into(),
        Object::Bool(b) => if *b { "True" } else { "False" }.into(),
        Object::Int(i) => i.to_string(),
        Object::BigInt => "<bigint>".into(),
        Object::Float(x) => format!("{x:?}"),
        Object::Str(s) => format!("{s:?}"),
        Object::Bytes(b) => format!("b{:?}", String::from_utf8_lossy(b)),
        Object::Tuple(items) if items.len() == 1 => format!("({},)", all(items).join("")),
        Object::Tuple(items) => format!("({})", all(items).join(", ")),
        Object::List(items) => format!("[{}]", all(items).join(", ")),
        Object::Set(items) => format!("set({})", all(items).join(", ")),
        Object::Dict(dict) => {
            let entries: Vec<String> = dict
                .entries()
                .iter()
                .map(|&(k, v)| {
                    format!(
                        "{}: {}",
                        repr_depth(heap, k, depth - 1),
                        repr_depth(heap, v, depth - 1)
                    )
                })
                .collect();
            format!("{{{}}}", entries.join(", "))
        }
        Object::Global(global, known) => {
            format!(
                "<{} {global}>",
                if known.is_some() { "global" } else { "unknown" }
            )
        }
        Object::DType(dtype) => format!("torch.{}", dtype.name()),
        Object::Device(device) => format!("device({device:?})"),
        Object::Storage(s) => format!("storage({:?}, {}, {})", s.key, s.dtype.name(), s.numel),
        Object::Tensor(t) => format!(
            "tensor({:?}, {}, offset={}, shape={:?}, stride={:?})",
            t.storage.key,
            t.dtype.name(),
            t.offset,
            t.shape,
            t.stride
        ),
        Object::Unknown(u) => {
            let args = u
                .args
                .map_or_else(|| "-".into(), |a| repr_depth(heap, a, depth - 1));
            let state = u
                .state
                .map_or_else(|| "-".into(), |s| repr_depth(heap, s, depth - 1));
            format!(
                "<{} args={args} state={state} items=[{}]>",
                u.global,
                all(&u.items).join(", ")
            )
        }
    }
}
