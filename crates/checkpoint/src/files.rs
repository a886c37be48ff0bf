//! Reading files a user names, with their kind and size checked before a byte is read.

use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::path::Path;

use crate::CheckpointError;

/// Largest file [`read_file_capped`] is asked to read for weights (and what
/// [`Checkpoint::load_safetensors`](crate::Checkpoint::load_safetensors) and
/// [`pth::read_pth`](crate::pth::read_pth) accept): 64 GiB, past any checkpoint this crate
/// can use, but a bound on what a wrong path or an endless device can make a reader attempt.
pub const MAX_FILE_BYTES: u64 = 64 << 30;

/// Reads the whole of the regular file `path`, refusing it before reading anything if it is
/// not a regular file (a folder, a pipe, a device such as `/dev/zero`) or is longer than
/// `max_bytes`, and stopping at `max_bytes` if it grows while being read. Errors say
/// "cannot read {what} {path}: ...".
pub fn read_file_capped(
    path: &Path,
    max_bytes: u64,
    what: &str,
) -> Result<Vec<u8>, CheckpointError> {
    let fail = |error: io::Error| CheckpointError::Read {
        what: what.to_owned(),
        path: path.display().to_string(),
        error,
    };
    let (file, len) = open_regular(path, max_bytes).map_err(fail)?;
    let mut bytes = Vec::new();
    // The length is the file system's word, within the cap; reserving it up front makes a
    // file too large for memory an error instead of an abort.
    let expected = usize::try_from(len).unwrap_or(usize::MAX);
    bytes.try_reserve_exact(expected).map_err(|_| {
        fail(io::Error::new(
            io::ErrorKind::OutOfMemory,
            format!("cannot allocate {len} bytes to hold it"),
        ))
    })?;
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(fail)?;
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > max_bytes {
        return Err(fail(too_large(None, max_bytes)));
    }
    Ok(bytes)
}

/// Opens `path` if it is a regular file of at most `max_bytes`, returning it and its length.
/// The kind is checked before opening, since opening a FIFO blocks until a writer appears,
/// and again on the opened file, in case the path was replaced in between.
pub(crate) fn open_regular(path: &Path, max_bytes: u64) -> io::Result<(File, u64)> {
    check(&std::fs::metadata(path)?, max_bytes)?;
    let file = File::open(path)?;
    let len = check(&file.metadata()?, max_bytes)?;
    Ok((file, len))
}

fn check(metadata: &Metadata, max_bytes: u64) -> io::Result<u64> {
    if !metadata.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("it is {}, not a regular file", kind(metadata)),
        ));
    }
    if metadata.len() > max_bytes {
        return Err(too_large(Some(metadata.len()), max_bytes));
    }
    Ok(metadata.len())
}

fn too_large(len: Option<u64>, max_bytes: u64) -> io::Error {
    let size = len.map_or_else(|| "more".to_owned(), |len| format!("{len} bytes, more"));
    io::Error::new(
        io::ErrorKind::FileTooLarge,
        format!("it is {size} than the limit of {max_bytes} bytes"),
    )
}

fn kind(metadata: &Metadata) -> &'static str {
    let kind = metadata.file_type();
    if kind.is_dir() {
        return "a directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "a named pipe (FIFO)";
        }
        if kind.is_char_device() {
            return "a character device";
        }
        if kind.is_block_device() {
            return "a block device";
        }
        if kind.is_socket() {
            return "a socket";
        }
    }
    "something other than a file"
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch folder of one test, removed when dropped.
    fn scratch() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("idlevit_files_")
            .tempdir()
            .unwrap()
    }

    #[test]
    fn reads_regular_files_within_the_cap() {
        let tmp = scratch();
        let path = tmp.path().join("ten.bin");
        std::fs::write(&path, [7u8; 10]).unwrap();
        assert_eq!(read_file_capped(&path, 10, "weights").unwrap(), [7; 10]);
        let err = read_file_capped(&path, 9, "weights")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "cannot read weights {}: it is 10 bytes, more than the limit of 9 bytes",
                path.display()
            )
        );
    }

    #[test]
    fn refuses_what_is_not_a_regular_file_without_reading_it() {
        let tmp = scratch();
        let dir = tmp.path().join("dir");
        std::fs::create_dir_all(&dir).unwrap();
        let err = read_file_capped(&dir, 1 << 20, "config")
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with("it is a directory, not a regular file"),
            "{err}"
        );
        assert!(
            err.contains("config") && err.contains(&*dir.to_string_lossy()),
            "{err}"
        );
        #[cfg(unix)]
        {
            // Read to exhaustion, /dev/zero would never end; a FIFO would block on opening.
            let err = read_file_capped(Path::new("/dev/zero"), MAX_FILE_BYTES, "weights");
            let err = err.unwrap_err().to_string();
            assert_eq!(
                err,
                "cannot read weights /dev/zero: it is a character device, not a regular file"
            );
            let fifo = tmp.path().join("fifo");
            let made = std::process::Command::new("mkfifo").arg(&fifo).status();
            if made.is_ok_and(|s| s.success()) {
                let err = read_file_capped(&fifo, 1 << 20, "labels")
                    .unwrap_err()
                    .to_string();
                assert!(
                    err.ends_with("it is a named pipe (FIFO), not a regular file"),
                    "{err}"
                );
            }
        }
        let missing = tmp.path().join("missing.bin");
        let err = read_file_capped(&missing, 1, "input")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("cannot read input "), "{err}");
    }
}
