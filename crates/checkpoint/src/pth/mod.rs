//! PyTorch `.pth` checkpoints, read by a pickle interpreter that executes nothing.
//!
//! `torch.save` writes a zip archive: `<name>/data.pkl`, a pickle of the saved object, and one
//! entry `<name>/data/<key>` of raw little-endian bytes per storage. The pickle names Python
//! globals to call; this reader understands only the ones that rebuild tensors and plain
//! containers (see `docs/pth-loader.md`) and turns every other global into an inert
//! placeholder, so a hostile checkpoint can at worst fail to load.
//!
//! ```no_run
//! use idlevit_checkpoint::pth::{read_pth, PthOptions};
//!
//! let weights = read_pth("checkpoint.pth".as_ref(), &PthOptions::default())?;
//! for (name, tensor) in &weights.tensors {
//!     println!("{name}: {:?}", tensor.shape());
//! }
//! if !weights.unknown_globals.is_empty() {
//!     // At most 20 names, each clipped, then how many more: one readable line.
//!     let globals = idlevit_checkpoint::NameList::new(&weights.unknown_globals);
//!     eprintln!("ignored pickle globals: {globals}");
//! }
//! # Ok::<(), idlevit_checkpoint::pth::PthError>(())
//! ```

mod archive;
mod budget;
mod error;
mod extract;
mod globals;
mod pickle;
mod rebuild;
#[cfg(test)]
mod testutil;
mod value;

use std::io::{BufReader, Cursor, Read, Seek};
use std::path::Path;

use idlevit_tensor::Tensor;

pub use archive::{INFLATION_ALLOWANCE_BYTES, MAX_INFLATION, MAX_PICKLE_BYTES};
pub use error::PthError;
pub use extract::MAX_NAME_BYTES;
pub use pickle::{
    HEAP_BYTES_PER_PICKLE_BYTE, MAX_MARK_DEPTH, MAX_MEMO_ENTRIES, MAX_STACK_LEN, MIN_HEAP_BYTES,
};
pub use rebuild::{EXPANSION_ALLOWANCE_BYTES, MAX_VIEW_EXPANSION};

/// How to read a checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PthOptions {
    /// Refuse the checkpoint if its pickle names any global this reader does not understand.
    pub strict: bool,
    /// Top-level entry holding the weights; by default `model`, else `state_dict`, else the
    /// top-level dict itself.
    pub key: Option<String>,
}

/// The weights read from a checkpoint.
#[derive(Clone, Debug)]
pub struct PthWeights {
    /// Float tensors as `f32`, by dotted name, in the order the checkpoint lists them.
    pub tensors: Vec<(String, Tensor)>,
    /// Names of the other entries beside the weights (integer tensors, numbers, unknown objects).
    pub skipped: Vec<String>,
    /// Pickle globals that were not understood and kept inert, as `module.name`.
    pub unknown_globals: Vec<String>,
}

/// Reads the `.pth` checkpoint at `path`, which must be a regular file of at most
/// [`MAX_FILE_BYTES`](crate::MAX_FILE_BYTES); every error names it.
pub fn read_pth(path: &Path, options: &PthOptions) -> Result<PthWeights, PthError> {
    let (file, len) =
        crate::files::open_regular(path, crate::MAX_FILE_BYTES).map_err(|error| PthError::Io {
            path: path.to_owned(),
            error,
        })?;
    read(BufReader::new(file), len, options).map_err(|error| match error {
        // Reading the archive goes through the zip reader, whose I/O errors name entries.
        PthError::Io { .. } => error,
        error => PthError::File {
            path: path.to_owned(),
            error: Box::new(error),
        },
    })
}

/// Reads a `.pth` checkpoint held in memory.
pub fn read_pth_bytes(bytes: &[u8], options: &PthOptions) -> Result<PthWeights, PthError> {
    let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    read(Cursor::new(bytes), len, options)
}

fn read<R: Read + Seek>(reader: R, len: u64, options: &PthOptions) -> Result<PthWeights, PthError> {
    let mut archive = archive::Archive::open(reader, len)?;
    let pickle = archive.pickle()?;
    let unpickled = pickle::unpickle(&pickle, options.strict)?;
    let selection = extract::select(&unpickled.heap, unpickled.root, options.key.as_deref())?;
    let tensors = rebuild::materialize(&mut archive, &unpickled.heap, selection.tensors)?;
    Ok(PthWeights {
        tensors,
        skipped: selection.skipped,
        unknown_globals: unpickled.unknown_globals,
    })
}

#[cfg(test)]
mod tests;
