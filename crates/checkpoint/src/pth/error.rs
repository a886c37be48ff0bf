use std::path::PathBuf;

use idlevit_tensor::TensorError;
use thiserror::Error;

use crate::names::{NameList, clip};

/// Everything that can go wrong when reading a PyTorch `.pth` checkpoint.
#[derive(Debug, Error)]
pub enum PthError {
    /// The checkpoint file could not be opened or read, is not a regular file, or is larger
    /// than [`MAX_FILE_BYTES`](crate::MAX_FILE_BYTES).
    #[error("cannot read {}: {error}", path.display())]
    Io {
        /// The file being read.
        path: PathBuf,
        /// What the operating system or the size check reported.
        error: std::io::Error,
    },
    /// The checkpoint file was read, but its contents were refused.
    #[error("{}: {error}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What was wrong with its contents.
        error: Box<PthError>,
    },
    /// A checkpoint written by `torch.save` before the zip format (torch < 1.6).
    #[error("legacy (pre-1.6) torch.save format is not supported; re-save with torch >= 1.6")]
    Legacy,
    /// The input is not a zip archive, so not a checkpoint written by `torch.save`.
    #[error("expected a PyTorch checkpoint (a zip archive), found {found}")]
    NotZip {
        /// What the input looks like instead.
        found: String,
    },
    /// The archive was written by `torch.jit.save`, whose pickles describe code, not weights.
    #[error(
        "expected a torch.save checkpoint, found a TorchScript archive (`{}`); load it in \
         Python and torch.save its state_dict()",
        clip(entry)
    )]
    TorchScript {
        /// The archive entry that gave it away.
        entry: String,
    },
    /// The archive does not hold exactly one `<name>/data.pkl` entry.
    #[error("expected one `<name>/data.pkl` entry in the archive, found {}", pickles_found(found, *entries))]
    MissingPickle {
        /// The `data.pkl` entries that were found.
        found: NameList,
        /// How many entries the archive has.
        entries: usize,
    },
    /// An archive entry could not be read.
    #[error("zip entry `{}`: {}", clip(entry), clip(reason))]
    Zip {
        /// Name of the entry.
        entry: String,
        /// What went wrong.
        reason: String,
    },
    /// The `byteorder` entry names neither little nor big endian.
    #[error(
        "`{}`: expected \"little\" or \"big\", found {:?}",
        clip(entry),
        clip(found)
    )]
    ByteOrder {
        /// Name of the entry.
        entry: String,
        /// Its (truncated) contents.
        found: String,
    },
    /// A byte that is not a pickle opcode.
    #[error("unknown pickle opcode 0x{opcode:02x} at offset {offset}")]
    UnknownOpcode {
        /// The byte found where an opcode was expected.
        opcode: u8,
        /// Its position in the pickle.
        offset: usize,
    },
    /// A pickle opcode that this reader deliberately does not implement.
    #[error("unsupported pickle opcode {opcode} at offset {offset}: {reason}")]
    UnsupportedOpcode {
        /// Name of the opcode.
        opcode: &'static str,
        /// Its position in the pickle.
        offset: usize,
        /// Why it is not supported.
        reason: &'static str,
    },
    /// The pickle ends in the middle of an opcode's argument.
    #[error(
        "pickle truncated: {opcode} at offset {offset} needs {needed} more bytes, {available} left"
    )]
    Truncated {
        /// Name of the opcode being read.
        opcode: &'static str,
        /// Its position in the pickle.
        offset: usize,
        /// Bytes its argument needs.
        needed: usize,
        /// Bytes left in the pickle.
        available: usize,
    },
    /// The pickle ends without a STOP opcode.
    #[error("pickle ends at offset {offset} without a STOP opcode")]
    MissingStop {
        /// Length of the pickle.
        offset: usize,
    },
    /// An opcode needs more values than the stack holds (above the last MARK).
    #[error("pickle stack underflow: {opcode} at offset {offset} expected a value, found none")]
    StackUnderflow {
        /// Name of the opcode.
        opcode: &'static str,
        /// Its position in the pickle.
        offset: usize,
    },
    /// An opcode that collects items up to a MARK found no MARK.
    #[error("pickle offset {offset}: {opcode} expected a MARK on the stack, found none")]
    MissingMark {
        /// Name of the opcode.
        opcode: &'static str,
        /// Its position in the pickle.
        offset: usize,
    },
    /// A memo read of an index that was never stored.
    #[error("pickle offset {offset}: {opcode} reads memo entry {index}, which was never stored")]
    MemoMiss {
        /// Name of the opcode.
        opcode: &'static str,
        /// Its position in the pickle.
        offset: usize,
        /// The memo index asked for.
        index: u64,
    },
    /// A value of the wrong kind or form.
    #[error(
        "pickle offset {offset}: {}: expected {}, found {}",
        clip(context),
        clip(expected),
        clip(found)
    )]
    Malformed {
        /// Position in the pickle of the opcode that met the value.
        offset: usize,
        /// What was being done.
        context: String,
        /// What was expected.
        expected: String,
        /// What was found.
        found: String,
    },
    /// Strict mode met a global this reader does not understand.
    #[error(
        "refusing unknown pickle global `{}` (pickle offset {offset})",
        clip(global)
    )]
    UnknownGlobal {
        /// The global as the pickle names it, `module.name`.
        global: String,
        /// Position in the pickle of the opcode naming it.
        offset: usize,
    },
    /// A tensor or storage would be built from the result of a global this reader does not
    /// understand.
    #[error(
        "pickle offset {offset}: {} comes from unknown pickle global `{}`",
        clip(context),
        clip(global)
    )]
    TensorFromUnknown {
        /// Position in the pickle of the opcode building the tensor.
        offset: usize,
        /// Which argument of which call.
        context: String,
        /// The unknown global, `module.name`.
        global: String,
    },
    /// A limit that protects against hostile inputs was exceeded.
    #[error("{what} exceeds the limit of {limit}{}", at_offset(*offset))]
    Limit {
        /// What grew too large.
        what: String,
        /// The limit.
        limit: usize,
        /// Position in the pickle, when the pickle was being read.
        offset: Option<usize>,
    },
    /// The object holding the weights is not a dict.
    #[error("expected {} to be a dict, found {}", clip(what), clip(found))]
    NotADict {
        /// Which object.
        what: String,
        /// What it is instead.
        found: String,
    },
    /// `PthOptions::key` names an entry the top-level dict does not have.
    #[error(
        "checkpoint has no top-level entry `{}`; {}",
        clip(key),
        top_level(available)
    )]
    MissingKey {
        /// The requested key.
        key: String,
        /// The top-level keys.
        available: NameList,
    },
    /// No float tensor was found where the weights were looked for.
    #[error("no float tensors found in {}; {}", clip(searched), top_level(keys))]
    NoWeights {
        /// Where they were looked for.
        searched: String,
        /// The top-level keys.
        keys: NameList,
    },
    /// Two weights flatten to the same dotted name.
    #[error(
        "weight name `{}` occurs twice once nested dicts are flattened",
        clip(name)
    )]
    DuplicateName {
        /// The name.
        name: String,
    },
    /// A storage's archive entry is missing.
    #[error("storage `{}`: the archive has no entry `{}`", clip(key), clip(entry))]
    MissingStorage {
        /// The storage key from the pickle.
        key: String,
        /// The entry name it maps to.
        entry: String,
    },
    /// A storage declares more bytes than its archive entry holds.
    #[error(
        "storage `{}` declares {declared} bytes, but its archive entry holds {found}",
        clip(key)
    )]
    StorageTooSmall {
        /// The storage key from the pickle.
        key: String,
        /// Bytes the pickle declares (element count times element size).
        declared: usize,
        /// Bytes the archive entry holds.
        found: u64,
    },
    /// A tensor's view reaches past the end of its storage.
    #[error(
        "{}: view with offset {offset}, shape {}, stride {} reaches element {last}, but \
         storage `{}` holds {available} elements",
        clip(name),
        clip(&format!("{shape:?}")),
        clip(&format!("{stride:?}")),
        clip(key)
    )]
    ViewOutOfBounds {
        /// The weight name.
        name: String,
        /// Storage offset, in elements.
        offset: usize,
        /// Tensor shape.
        shape: Vec<usize>,
        /// Tensor strides, in elements.
        stride: Vec<usize>,
        /// Highest element index the view touches.
        last: usize,
        /// The storage key.
        key: String,
        /// Elements the storage holds.
        available: usize,
    },
    /// Element counts or byte sizes that overflow `usize`.
    #[error("{}: {what} overflows", clip(name))]
    Overflow {
        /// The weight or storage concerned.
        name: String,
        /// Which quantity.
        what: &'static str,
    },
    /// The tensor library refused the data.
    #[error("{}: {source}", clip(name))]
    Tensor {
        /// The weight name.
        name: String,
        /// What the tensor library reported.
        #[source]
        source: TensorError,
    },
}

impl PthError {
    /// The error itself, without the file it was found in.
    pub fn inner(&self) -> &PthError {
        match self {
            PthError::File { error, .. } => error.inner(),
            other => other,
        }
    }
}

/// The top-level keys for a message, or that there are none.
fn top_level(keys: &NameList) -> String {
    if keys.is_empty() {
        "the checkpoint has no entries".to_owned()
    } else {
        format!("the top-level keys are: {keys}")
    }
}

fn pickles_found(found: &NameList, entries: usize) -> String {
    if found.is_empty() {
        format!("none among {entries} entries")
    } else {
        format!("{}: {found}", found.total())
    }
}

fn at_offset(offset: Option<usize>) -> String {
    offset.map_or_else(String::new, |o| format!(" (pickle offset {o})"))
}
