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

/// A zip archive of stored (uncompressed) entries as the zip crate writes them: no alignment
/// padding and no zip64 records, unlike `torch.save` (see [`torch_zip`]).
pub(crate) fn zip_entries(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, data) in entries {
        zip.start_file(*name, options).expect("start zip entry");
        zip.write_all(data).expect("write zip entry");
    }
    zip.finish().expect("finish zip").into_inner()
}

/// A zip archive laid out byte for byte as torch 2.x's writer lays it out: stored entries whose
/// local headers carry an `FB` extra field of `Z`s that puts every entry's data at a multiple
/// of 64 bytes, a data descriptor after each entry, and zip64 end of central directory records
/// before the plain one, whatever the archive's size.
pub(crate) fn torch_zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
    const ALIGNMENT: usize = 64;
    const LOCAL_HEADER: usize = 30;
    const FLAGS: u16 = 0x0808; // sizes in a data descriptor, UTF-8 names
    let u16le = |v: usize| u16::try_from(v).expect("fits in u16").to_le_bytes();
    let u32le = |v: usize| u32::try_from(v).expect("fits in u32").to_le_bytes();
    let u64le = |v: usize| (v as u64).to_le_bytes();
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in entries {
        let offset = out.len();
        let unpadded = offset + LOCAL_HEADER + name.len() + 4;
        let padding = (ALIGNMENT - unpadded % ALIGNMENT) % ALIGNMENT;
        let crc = crc32(data).to_le_bytes();
        out.extend(b"PK\x03\x04");
        out.extend([0, 0]); // version needed
        out.extend(FLAGS.to_le_bytes());
        out.extend([0; 18]); // method, time, date, and crc and sizes left to the descriptor
        out.extend(u16le(name.len()));
        out.extend(u16le(4 + padding));
        out.extend(name.as_bytes());
        out.extend(b"FB");
        out.extend(u16le(padding));
        out.extend(std::iter::repeat_n(b'Z', padding));
        out.extend(*data);
        out.extend(b"PK\x07\x08");
        out.extend(crc);
        out.extend(u32le(data.len()));
        out.extend(u32le(data.len()));

        central.extend(b"PK\x01\x02");
        central.extend([0, 0, 0, 0]); // version made by, version needed
        central.extend(FLAGS.to_le_bytes());
        central.extend([0; 6]); // method, time, date
        central.extend(crc);
        central.extend(u32le(data.len()));
        central.extend(u32le(data.len()));
        central.extend(u16le(name.len()));
        central.extend([0; 12]); // extra and comment lengths, disk, attributes
        central.extend(u32le(offset));
        central.extend(name.as_bytes());
    }
    let (cd_offset, cd_size, count) = (out.len(), central.len(), entries.len());
    out.extend(central);
    let eocd64 = out.len();
    out.extend(b"PK\x06\x06");
    out.extend(u64le(44)); // size of the rest of the record
    out.extend([0x1e, 0x03, 0x2d, 0x00]); // version made by, version needed
    out.extend([0; 8]); // disk numbers
    out.extend(u64le(count));
    out.extend(u64le(count));
    out.extend(u64le(cd_size));
    out.extend(u64le(cd_offset));
    out.extend(b"PK\x06\x07");
    out.extend([0; 4]);
    out.extend(u64le(eocd64));
    out.extend(1u32.to_le_bytes());
    out.extend(b"PK\x05\x06");
    out.extend([0; 4]);
    out.extend(u16le(count));
    out.extend(u16le(count));
    out.extend(u32le(cd_size));
    out.extend(u32le(cd_offset));
    out.extend([0, 0]);
    out
}

/// The CRC-32 of zip archives (reflected polynomial 0xedb88320), bit by bit.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A checkpoint archive as torch 2.x's `torch.save` writes it, in the folder `stem` (the
/// file's name without `.pth`), holding `pickle` and the storages `(key, bytes)`.
pub(crate) fn torch_checkpoint(stem: &str, pickle: &[u8], storages: &[(&str, &[u8])]) -> Vec<u8> {
    let mut entries: Vec<(String, &[u8])> = vec![
        (format!("{stem}/data.pkl"), pickle),
        (format!("{stem}/.format_version"), b"1"),
        (format!("{stem}/.storage_alignment"), b"64"),
        (format!("{stem}/byteorder"), b"little"),
    ];
    for (key, data) in storages {
        entries.push((format!("{stem}/data/{key}"), data));
    }
    entries.push((format!("{stem}/version"), b"3\n"));
    entries.push((
        format!("{stem}/.data/serialization_id"),
        b"1234567890123456789012345678901234567890",
    ));
    let entries: Vec<(&str, &[u8])> = entries.iter().map(|(n, d)| (n.as_str(), *d)).collect();
    torch_zip(&entries)
}

/// A checkpoint archive in the folder `archive` (as `torch.save` names it when writing to a
/// buffer) holding `pickle` and the storages `(key, bytes)`.
pub(crate) fn checkpoint(pickle: &[u8], storages: &[(&str, &[u8])]) -> Vec<u8> {
    torch_checkpoint("archive", pickle, storages)
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
