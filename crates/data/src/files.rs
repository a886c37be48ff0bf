//! Writing output files so that nothing is ever lost: an output never replaces one of the
//! command's inputs, every file is written whole to a temporary file, flushed to disk and
//! renamed into place (so a crash leaves the old file or the new one, never half of
//! either), and weights holding NaN or infinity are never written.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use idlevit_checkpoint::Checkpoint;

use crate::{DataError, Result};

/// A file a program reads or writes, with the name the user gave it by.
#[derive(Clone, Copy, Debug)]
pub struct NamedPath<'a> {
    /// What named the file, e.g. a command's argument.
    pub argument: &'a str,
    /// The path it names.
    pub path: &'a Path,
}

impl<'a> NamedPath<'a> {
    /// `path` as named by `argument`.
    pub fn new(argument: &'a str, path: &'a Path) -> Self {
        Self { argument, path }
    }
}

/// What identifies a file: its device and inode where the file exists (so hard links and
/// symlinks to one file compare equal), else its absolute path with the parent resolved.
#[derive(Debug, PartialEq, Eq)]
enum FileIdentity {
    #[cfg(unix)]
    Inode(u64, u64),
    Path(PathBuf),
}

fn identity(path: &Path) -> FileIdentity {
    #[cfg(unix)]
    if let Ok(meta) = std::fs::metadata(path) {
        use std::os::unix::fs::MetadataExt;
        return FileIdentity::Inode(meta.dev(), meta.ino());
    }
    if let Ok(canonical) = path.canonicalize() {
        return FileIdentity::Path(canonical);
    }
    // The file does not exist yet: resolve what does exist, its folder.
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let resolved = match (absolute.parent(), absolute.file_name()) {
        (Some(parent), Some(name)) => parent
            .canonicalize()
            .map_or_else(|_| absolute.clone(), |p| p.join(name)),
        _ => absolute,
    };
    FileIdentity::Path(resolved)
}

/// Refuses outputs that are one of the inputs or one another's file: writing them would
/// destroy an input, or one output would silently replace the other.
pub fn check_distinct(inputs: &[NamedPath], outputs: &[NamedPath]) -> Result<()> {
    let ids: Vec<FileIdentity> = outputs.iter().map(|o| identity(o.path)).collect();
    for (output, id) in outputs.iter().zip(&ids) {
        if let Some(input) = inputs.iter().find(|i| identity(i.path) == *id) {
            return Err(DataError::Invalid(format!(
                "{} {} is the same file as {} {}: writing it would destroy that input; \
                 choose another output path",
                output.argument,
                output.path.display(),
                input.argument,
                input.path.display()
            )));
        }
    }
    for (i, (output, id)) in outputs.iter().zip(&ids).enumerate() {
        if let Some(other) = outputs[..i].iter().zip(&ids).find(|(_, o)| *o == id) {
            return Err(DataError::Invalid(format!(
                "{} and {} both name {}: one output would replace the other",
                other.0.argument,
                output.argument,
                output.path.display()
            )));
        }
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically: to a temporary file beside it, flushed to disk, then
/// renamed over `path`, and the folder flushed so the rename itself survives a crash.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| DataError::Invalid(format!("{} names no file", path.display())))?;
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = folder.join(tmp_name);
    let written = (|| -> std::io::Result<()> {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    if let Err(err) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(DataError::Io("cannot write", path.into(), err));
    }
    if let Err(err) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(DataError::Io(
            "cannot move the new file into",
            path.into(),
            err,
        ));
    }
    sync_folder(&folder).map_err(|e| DataError::Io("cannot flush folder", folder.clone(), e))
}

#[cfg(unix)]
fn sync_folder(folder: &Path) -> std::io::Result<()> {
    File::open(folder)?.sync_all()
}

#[cfg(not(unix))]
fn sync_folder(_folder: &Path) -> std::io::Result<()> {
    Ok(())
}

/// Encodes `image` as PNG and writes it to `path` atomically ([`write_atomically`]).
pub fn save_png(image: &image::RgbImage, path: &Path) -> Result<()> {
    let mut bytes = Vec::new();
    image
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .map_err(|e| DataError::Encode(path.into(), e))?;
    write_atomically(path, &bytes)
}

/// The names of the tensors of `ckpt` that hold NaN or infinity.
pub fn non_finite_tensors(ckpt: &Checkpoint) -> Vec<&str> {
    ckpt.iter()
        .filter(|(_, t)| !t.view().iter().all(|v| v.is_finite()))
        .map(|(name, _)| name)
        .collect()
}

/// Saves `ckpt` as safetensors at `path` atomically, refusing to write when any tensor holds
/// NaN or infinity (`what` names the file's content in that error, e.g. "weights").
pub fn save_checkpoint(ckpt: &Checkpoint, path: &Path, what: &str) -> Result<()> {
    let bad = non_finite_tensors(ckpt);
    if let Some(first) = bad.first() {
        return Err(DataError::Invalid(format!(
            "not writing {what} to {}: {} of {} tensors hold NaN or infinity (first: {}); \
             any earlier file there is left as it was",
            path.display(),
            bad.len(),
            ckpt.len(),
            idlevit_checkpoint::clip(first)
        )));
    }
    let bytes = ckpt.to_safetensors_bytes()?;
    write_atomically(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use idlevit_tensor::Tensor;

    /// A scratch folder of one test, removed when dropped.
    fn scratch(name: &str) -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix(&format!("idlevit-output-{name}-"))
            .tempdir()
            .expect("scratch folder")
    }

    #[test]
    fn outputs_may_not_be_inputs_or_each_other() {
        let tmp = scratch("alias");
        let dir = tmp.path();
        let input = dir.join("x.safetensors");
        std::fs::write(&input, b"x").expect("write");
        let same_by_another_path = dir.join(".").join("x.safetensors");
        let err = check_distinct(
            &[NamedPath::new("--input", &input)],
            &[NamedPath::new("--output", &same_by_another_path)],
        )
        .expect_err("alias");
        assert!(err.to_string().contains("--output"), "{err}");
        assert!(err.to_string().contains("--input"), "{err}");

        #[cfg(unix)]
        {
            let link = dir.join("link.safetensors");
            std::os::unix::fs::symlink(&input, &link).expect("symlink");
            assert!(
                check_distinct(
                    &[NamedPath::new("--input", &input)],
                    &[NamedPath::new("--output", &link)]
                )
                .is_err()
            );
        }

        let fresh_a = dir.join("y.safetensors");
        let fresh_b = dir.join("sub").join("..").join("y.safetensors");
        std::fs::create_dir_all(dir.join("sub")).expect("sub");
        let err = check_distinct(
            &[NamedPath::new("--input", &input)],
            &[
                NamedPath::new("--output", &fresh_a),
                NamedPath::new("--selected-out", &fresh_b),
            ],
        )
        .expect_err("two outputs, one file");
        assert!(err.to_string().contains("--selected-out"), "{err}");

        check_distinct(
            &[NamedPath::new("--input", &input)],
            &[
                NamedPath::new("--output", &fresh_a),
                NamedPath::new("--selected-out", &dir.join("z.safetensors")),
            ],
        )
        .expect("distinct files");
    }

    #[test]
    fn atomic_writes_replace_whole_files_and_leave_no_temporary() {
        let tmp = scratch("atomic");
        let dir = tmp.path();
        let path = dir.join("out.bin");
        write_atomically(&path, b"first").expect("first");
        write_atomically(&path, b"second").expect("second");
        assert_eq!(std::fs::read(&path).expect("read"), b"second");
        let names: Vec<_> = std::fs::read_dir(dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(write_atomically(&dir.join("missing").join("f"), b"x").is_err());
    }

    #[test]
    fn non_finite_weights_are_never_written() {
        let tmp = scratch("finite");
        let dir = tmp.path();
        let path = dir.join("w.safetensors");
        let mut good = Checkpoint::default();
        good.insert("a", Tensor::from_vec(vec![2], vec![1.0, 2.0]).expect("a"));
        save_checkpoint(&good, &path, "weights").expect("finite weights save");
        let before = std::fs::read(&path).expect("read");
        for bad_value in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut bad = good.clone();
            bad.insert(
                "b",
                Tensor::from_vec(vec![2], vec![0.0, bad_value]).expect("b"),
            );
            let err = save_checkpoint(&bad, &path, "weights").expect_err("non-finite");
            assert!(err.to_string().contains("1 of 2 tensors"), "{err}");
            assert_eq!(std::fs::read(&path).expect("read"), before);
        }
    }
}
