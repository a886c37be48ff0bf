//! The zip side of a checkpoint: `<name>/data.pkl`, `<name>/byteorder` and the storages
//! `<name>/data/<key>`.

use std::io::{Read, Seek, SeekFrom};

use zip::read::{ArchiveOffset, Config};
use zip::result::ZipError;
use zip::{CompressionMethod, ZipArchive};

use super::error::PthError;
use crate::names::{NameList, clip};

/// Largest `data.pkl` accepted, in bytes. Pickles of checkpoints are small (a few hundred
/// bytes per tensor; the tensor data lives in separate entries), so this only stops a hostile
/// archive from inflating one without bound.
pub const MAX_PICKLE_BYTES: u64 = 256 << 20;

/// Compressed entries (`torch.save` writes none, but an archive may be re-packed) may inflate to
/// at most this many times the archive's length in all, plus [`INFLATION_ALLOWANCE_BYTES`]. It
/// keeps a small deflate bomb from becoming a huge pickle or storage; stored entries cannot hold
/// more than the archive anyway.
pub const MAX_INFLATION: u64 = 16;

/// Bytes compressed entries may inflate to on top of [`MAX_INFLATION`] times the archive's
/// length.
pub const INFLATION_ALLOWANCE_BYTES: u64 = 16 << 20;

/// `torch.save` before 1.6 started its file with a pickled magic number, 0x1950a86a20f9469cfc6c,
/// which protocol 2 writes as `LONG1` with these bytes, right after the `PROTO` opcode.
const LEGACY_MAGIC: [u8; 12] = [
    0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19,
];

/// An opened checkpoint archive.
pub(crate) struct Archive<R> {
    zip: ZipArchive<R>,
    /// The common prefix of the entries, with its trailing `/` (empty for entries at the root).
    prefix: String,
    /// Length of the whole archive, which bounds what a stored entry can hold.
    len: u64,
    /// Bytes read so far from compressed entries, against the inflation budget.
    inflated: u64,
    big_endian: bool,
}

impl<R: Read + Seek> Archive<R> {
    /// Opens the archive read by `reader`, `len` bytes long, and locates its pickle.
    pub fn open(mut reader: R, len: u64) -> Result<Self, PthError> {
        let head = read_head(&mut reader)?;
        if is_legacy(&head) {
            return Err(PthError::Legacy);
        }
        let unreadable = |err: std::io::Error| PthError::NotZip {
            found: format!("unreadable input ({err})"),
        };
        let archive_offset = match archive_start(&mut reader, len).map_err(unreadable)? {
            Some(start) => ArchiveOffset::Known(start),
            None => ArchiveOffset::Detect,
        };
        reader.seek(SeekFrom::Start(0)).map_err(unreadable)?;
        let zip = ZipArchive::with_config(Config { archive_offset }, reader).map_err(|err| {
            PthError::NotZip {
                found: describe_head(&head, &err),
            }
        })?;
        let prefix = find_prefix(&zip)?;
        let mut archive = Self {
            zip,
            prefix,
            len,
            inflated: 0,
            big_endian: false,
        };
        archive.big_endian = archive.read_byteorder()?;
        Ok(archive)
    }

    /// Whether storages are big endian (`byteorder` says so); little endian otherwise.
    pub fn big_endian(&self) -> bool {
        self.big_endian
    }

    /// The bytes of `data.pkl`.
    pub fn pickle(&mut self) -> Result<Vec<u8>, PthError> {
        let entry = format!("{}data.pkl", self.prefix);
        let mut file = self
            .zip
            .by_name(&entry)
            .map_err(|err| zip_error(&entry, &err))?;
        if file.size() > MAX_PICKLE_BYTES {
            return Err(PthError::Limit {
                what: format!("size of `{}` ({} bytes)", clip(&entry), file.size()),
                limit: usize::try_from(MAX_PICKLE_BYTES).unwrap_or(usize::MAX),
                offset: None,
            });
        }
        let compressed = file.compression() != CompressionMethod::Stored;
        let limit = if compressed {
            MAX_PICKLE_BYTES.min(inflation_budget(self.len, self.inflated))
        } else {
            MAX_PICKLE_BYTES
        };
        let mut bytes = Vec::new();
        file.by_ref()
            .take(limit.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|err| zip_error(&entry, &err))?;
        let read = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        if compressed {
            if read > limit {
                return Err(inflation_error(&entry, self.len));
            }
            self.inflated = self.inflated.saturating_add(read);
        }
        bytes.truncate(usize::try_from(MAX_PICKLE_BYTES).unwrap_or(usize::MAX));
        Ok(bytes)
    }

    /// The first `nbytes` bytes of storage `key`, refusing a storage whose entry is shorter.
    pub fn storage(&mut self, key: &str, nbytes: usize) -> Result<Vec<u8>, PthError> {
        let entry = format!("{}data/{key}", self.prefix);
        let mut file = match self.zip.by_name(&entry) {
            Ok(file) => file,
            Err(ZipError::FileNotFound) => {
                return Err(PthError::MissingStorage {
                    key: key.to_owned(),
                    entry,
                });
            }
            Err(err) => return Err(zip_error(&entry, &err)),
        };
        let wanted = u64::try_from(nbytes).unwrap_or(u64::MAX);
        let too_small = |found: u64| PthError::StorageTooSmall {
            key: key.to_owned(),
            declared: nbytes,
            found,
        };
        if wanted > file.size() {
            return Err(too_small(file.size()));
        }
        let compressed = file.compression() != CompressionMethod::Stored;
        if compressed && wanted > inflation_budget(self.len, self.inflated) {
            return Err(inflation_error(&entry, self.len));
        }
        // The central directory's size can lie; allocate no more than the archive could hold
        // uncompressed and let the vector grow as real data arrives.
        let capacity = usize::try_from(wanted.min(self.len)).unwrap_or(0);
        let mut bytes = Vec::with_capacity(capacity);
        // One byte more than needed reaches the end of an entry of exactly the declared size,
        // which is where the zip reader verifies the CRC.
        file.by_ref()
            .take(wanted.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|err| zip_error(&entry, &err))?;
        if bytes.len() < nbytes {
            return Err(too_small(u64::try_from(bytes.len()).unwrap_or(u64::MAX)));
        }
        bytes.truncate(nbytes);
        if compressed {
            self.inflated = self.inflated.saturating_add(wanted);
        }
        Ok(bytes)
    }

    fn read_byteorder(&mut self) -> Result<bool, PthError> {
        // Real entries say "little" or "big"; anything longer is not worth reading.
        const MAX_LEN: u64 = 64;
        let entry = format!("{}byteorder", self.prefix);
        let mut file = match self.zip.by_name(&entry) {
            Ok(file) => file,
            // Archives from torch < 1.10 have no byteorder entry and are little endian.
            Err(ZipError::FileNotFound) => return Ok(false),
            Err(err) => return Err(zip_error(&entry, &err)),
        };
        let mut bytes = Vec::new();
        file.by_ref()
            .take(MAX_LEN)
            .read_to_end(&mut bytes)
            .map_err(|err| zip_error(&entry, &err))?;
        match String::from_utf8_lossy(&bytes).trim() {
            "little" => Ok(false),
            "big" => Ok(true),
            other => Err(PthError::ByteOrder {
                entry,
                found: other.to_owned(),
            }),
        }
    }
}

/// Bytes compressed entries may still inflate to, in an archive of `len` bytes from which
/// `inflated` bytes have been inflated already.
fn inflation_budget(len: u64, inflated: u64) -> u64 {
    len.saturating_mul(MAX_INFLATION)
        .saturating_add(INFLATION_ALLOWANCE_BYTES)
        .saturating_sub(inflated)
}

fn inflation_error(entry: &str, len: u64) -> PthError {
    let limit = inflation_budget(len, 0);
    PthError::Limit {
        what: format!(
            "bytes inflated from compressed entries, up to `{}`, of an archive of {len} bytes",
            clip(entry)
        ),
        limit: usize::try_from(limit).unwrap_or(usize::MAX),
        offset: None,
    }
}

/// Length of the end of central directory record without its comment.
const EOCD_BYTES: u64 = 22;
/// Length of the zip64 end of central directory record without extensible data, as torch
/// writes it.
const EOCD64_BYTES: u64 = 56;
/// Length of the zip64 locator that follows that record.
const EOCD64_LOCATOR_BYTES: u64 = 20;

/// Where the archive starts in the input, computed as Python's `zipfile` does: the end of
/// central directory record's position, less the central directory's size and offset, less
/// the zip64 records between them when present. `None` when there is no such record, or the
/// numbers do not add up; the zip reader then looks for the archive itself.
///
/// The zip reader's own search instead assumes the central directory ends right where that
/// record starts. torch writes 76 bytes of zip64 records in between, so whenever a central
/// directory header happened to start 76 bytes in (a first entry named by 30 bytes, such as
/// `checkpoint_epoch_0010/data.pkl`), the search found it, began the directory there and
/// refused a valid archive as damaged.
fn archive_start<R: Read + Seek>(reader: &mut R, len: u64) -> std::io::Result<Option<u64>> {
    const MAX_COMMENT: u64 = u16::MAX as u64;
    let tail_len = len.min(EOCD_BYTES + MAX_COMMENT + EOCD64_BYTES + EOCD64_LOCATOR_BYTES);
    let tail_start = len - tail_len;
    reader.seek(SeekFrom::Start(tail_start))?;
    let mut tail = Vec::new();
    reader.by_ref().take(tail_len).read_to_end(&mut tail)?;
    let at = |pos: usize, n: usize| tail.get(pos..pos.checked_add(n)?);
    let u32_at = |pos: usize| Some(u64::from(u32::from_le_bytes(at(pos, 4)?.try_into().ok()?)));
    let u64_at = |pos: usize| Some(u64::from_le_bytes(at(pos, 8)?.try_into().ok()?));
    // The last signature whose fixed part fits: the record nearest the end, as Python picks.
    let Some(eocd) = tail
        .windows(4)
        .rposition(|w| w == b"PK\x05\x06")
        .filter(|&pos| pos + EOCD_BYTES as usize <= tail.len())
    else {
        return Ok(None);
    };
    let (Some(mut size), Some(mut offset)) = (u32_at(eocd + 12), u32_at(eocd + 16)) else {
        return Ok(None);
    };
    let mut records = 0;
    let zip64 = eocd
        .checked_sub((EOCD64_BYTES + EOCD64_LOCATOR_BYTES) as usize)
        .filter(|&start| {
            at(start, 4) == Some(&b"PK\x06\x06"[..])
                && at(start + EOCD64_BYTES as usize, 4) == Some(&b"PK\x06\x07"[..])
        });
    if let Some(start) = zip64 {
        let (Some(size64), Some(offset64)) = (u64_at(start + 40), u64_at(start + 48)) else {
            return Ok(None);
        };
        (size, offset, records) = (size64, offset64, EOCD64_BYTES + EOCD64_LOCATOR_BYTES);
    }
    Ok((tail_start + eocd as u64)
        .checked_sub(records)
        .and_then(|end| end.checked_sub(size))
        .and_then(|end| end.checked_sub(offset)))
}

fn read_head(reader: &mut impl Read) -> Result<Vec<u8>, PthError> {
    let mut head = Vec::with_capacity(16);
    reader
        .take(16)
        .read_to_end(&mut head)
        .map_err(|err| PthError::NotZip {
            found: format!("unreadable input ({err})"),
        })?;
    Ok(head)
}

fn is_legacy(head: &[u8]) -> bool {
    head.first() == Some(&0x80) && head.get(2..14) == Some(&LEGACY_MAGIC[..])
}

fn describe_head(head: &[u8], err: &ZipError) -> String {
    match head {
        [] => "an empty file".into(),
        [b'P', b'K', ..] => format!("a damaged zip archive ({err})"),
        [0x80, ..] => "a bare pickle, not a zip archive".into(),
        _ => {
            let hex: Vec<String> = head.iter().take(8).map(|b| format!("{b:02x}")).collect();
            format!("data starting with bytes {}", hex.join(" "))
        }
    }
}

/// The prefix of the one `<name>/data.pkl` entry, with its `/`, refusing TorchScript archives.
fn find_prefix<R: Read + Seek>(zip: &ZipArchive<R>) -> Result<String, PthError> {
    let names: Vec<String> = zip
        .file_names()
        .filter_map(Result::ok)
        .map(|name| name.into_owned())
        .collect();
    let pickles: Vec<&String> = names
        .iter()
        .filter(|name| {
            name.strip_suffix("data.pkl").is_some_and(|prefix| {
                prefix.is_empty() || prefix.find('/') == Some(prefix.len() - 1)
            })
        })
        .collect();
    let [pickle] = pickles.as_slice() else {
        return Err(PthError::MissingPickle {
            found: NameList::new(&pickles),
            entries: names.len(),
        });
    };
    let prefix = pickle
        .strip_suffix("data.pkl")
        .unwrap_or_default()
        .to_owned();
    let constants = format!("{prefix}constants.pkl");
    let code = format!("{prefix}code/");
    if let Some(entry) = names
        .iter()
        .find(|n| **n == constants || n.starts_with(&code))
    {
        return Err(PthError::TorchScript {
            entry: entry.clone(),
        });
    }
    Ok(prefix)
}

/// Entry `entry` could not be read, as the zip reader or the I/O under it says.
fn zip_error(entry: &str, err: &impl std::fmt::Display) -> PthError {
    PthError::Zip {
        entry: entry.to_owned(),
        reason: err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;
    use crate::pth::testutil::zip_entries;

    fn open(bytes: &[u8]) -> Result<Archive<Cursor<&[u8]>>, PthError> {
        Archive::open(Cursor::new(bytes), bytes.len() as u64)
    }

    #[test]
    fn finds_the_pickle_whatever_the_prefix() {
        let zip = zip_entries(&[
            ("my ckpt/data.pkl", b"\x80\x02N."),
            ("my ckpt/byteorder", b"big"),
        ]);
        let mut archive = open(&zip).unwrap();
        assert_eq!(archive.prefix, "my ckpt/");
        assert!(archive.big_endian());
        assert_eq!(archive.pickle().unwrap(), b"\x80\x02N.");
    }

    #[test]
    fn refuses_missing_or_ambiguous_pickles() {
        let zip = zip_entries(&[("a/other.pkl", b"")]);
        assert!(matches!(open(&zip), Err(PthError::MissingPickle { .. })));
        let zip = zip_entries(&[("a/data.pkl", b""), ("b/data.pkl", b"")]);
        let err = open(&zip).err().unwrap();
        assert!(err.to_string().contains("a/data.pkl, b/data.pkl"), "{err}");
        let zip = zip_entries(&[("a/b/data.pkl", b"")]);
        assert!(matches!(open(&zip), Err(PthError::MissingPickle { .. })));
    }

    #[test]
    fn refuses_torchscript() {
        let zip = zip_entries(&[("m/data.pkl", b""), ("m/code/__torch__/m.py", b"")]);
        assert!(matches!(open(&zip), Err(PthError::TorchScript { .. })));
    }

    #[test]
    fn refuses_bad_byteorder() {
        let zip = zip_entries(&[("m/data.pkl", b""), ("m/byteorder", b"middle")]);
        let err = open(&zip).err().unwrap();
        assert!(err.to_string().contains("\"middle\""), "{err}");
    }

    #[test]
    fn recognises_non_zip_inputs() {
        let legacy = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.\x80\x02";
        let err = open(legacy).err().unwrap();
        assert!(matches!(err, PthError::Legacy));
        assert!(err.to_string().contains("re-save with torch >= 1.6"));
        assert!(open(b"").err().unwrap().to_string().contains("empty file"));
        assert!(
            open(b"\x80\x04N.")
                .err()
                .unwrap()
                .to_string()
                .contains("bare pickle")
        );
        assert!(
            open(b"PK\x03\x04junk")
                .err()
                .unwrap()
                .to_string()
                .contains("damaged zip")
        );
        assert!(
            open(b"hello world")
                .err()
                .unwrap()
                .to_string()
                .contains("68 65 6c 6c")
        );
    }

    fn deflated(entries: &[(&str, &[u8])]) -> Vec<u8> {
        use std::io::Write;
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(CompressionMethod::Deflated);
        for (name, data) in entries {
            zip.start_file(*name, options).unwrap();
            zip.write_all(data).unwrap();
        }
        zip.finish().unwrap().into_inner()
    }

    #[test]
    fn compressed_entries_are_read_within_the_inflation_budget() {
        let zip = deflated(&[("m/data.pkl", b"\x80\x02N."), ("m/data/0", &[7; 64])]);
        let mut archive = open(&zip).unwrap();
        assert_eq!(archive.pickle().unwrap(), b"\x80\x02N.");
        assert_eq!(archive.storage("0", 64).unwrap(), [7; 64]);
        // 24 MiB of zeros deflate to about 24 KiB: more than 16 times the archive plus 16 MiB.
        let zeros = vec![0u8; 24 << 20];
        let bomb = deflated(&[("m/data.pkl", &zeros), ("m/data/0", &zeros)]);
        assert!(bomb.len() < 1 << 17, "{}", bomb.len());
        let mut archive = open(&bomb).unwrap();
        let err = archive.pickle().unwrap_err();
        assert!(err.to_string().contains("bytes inflated"), "{err}");
        let err = archive.storage("0", zeros.len()).unwrap_err();
        assert!(err.to_string().contains("bytes inflated"), "{err}");
        // The budget is shared: two entries within it alone may not both be read.
        let half = vec![0u8; 12 << 20];
        let pair = deflated(&[
            ("m/data.pkl", b"\x80\x02N."),
            ("m/data/0", &half),
            ("m/data/1", &half),
        ]);
        let mut archive = open(&pair).unwrap();
        assert_eq!(archive.storage("0", half.len()).unwrap().len(), half.len());
        assert!(matches!(
            archive.storage("1", half.len()),
            Err(PthError::Limit { .. })
        ));
    }

    #[test]
    fn storages_must_hold_their_declared_size() {
        let zip = zip_entries(&[("m/data.pkl", b""), ("m/data/0", &[1, 2, 3, 4, 5])]);
        let mut archive = open(&zip).unwrap();
        assert_eq!(archive.storage("0", 4).unwrap(), [1, 2, 3, 4]);
        assert_eq!(archive.storage("0", 5).unwrap(), [1, 2, 3, 4, 5]);
        let err = archive.storage("0", 6).unwrap_err();
        assert!(err.to_string().contains("declares 6 bytes"), "{err}");
        assert!(matches!(
            archive.storage("1", 1),
            Err(PthError::MissingStorage { .. })
        ));
    }
}
