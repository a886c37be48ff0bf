//! Opening weight files by their content: safetensors or a PyTorch `.pth` checkpoint.

use std::path::Path;

use idlevit_checkpoint::{Checkpoint, pth};

use crate::{DataError, Result};

/// Reads a whole file the user named, refusing before reading one that is not a regular file
/// (a folder, a device such as `/dev/zero`, a pipe) or is larger than
/// [`idlevit_checkpoint::MAX_FILE_BYTES`]; `what` says what the file is for in the error.
pub fn read_file(path: &Path, what: &str) -> Result<Vec<u8>> {
    Ok(idlevit_checkpoint::read_file_capped(
        path,
        idlevit_checkpoint::MAX_FILE_BYTES,
        what,
    )?)
}

/// Reads named tensors from a safetensors file, or from a `.pth` zip checkpoint (read by the
/// pickle interpreter, which executes nothing; `strict` refuses unknown pickle globals, and
/// without it they are named in a warning on stderr). `role` says what the file is for
/// ("weights", "teacher weights", "input"), and every error names it with the path, once.
pub fn read_checkpoint(path: &Path, role: &str, strict: bool) -> Result<Checkpoint> {
    let bytes = read_file(path, role)?;
    let pth_name = path.extension().is_some_and(|e| e == "pth" || e == "tar");
    let pth = pth_name || bytes.starts_with(b"PK");
    let (checkpoint, unknown_globals) = parse_weights(&bytes, pth_name, strict)
        .map_err(|e| DataError::Weights(role.into(), path.into(), pth, Box::new(e)))?;
    if !unknown_globals.is_empty() {
        eprintln!(
            "warning: {} names pickle globals that were kept inert (never called): {}; \
             reading strictly refuses such files",
            path.display(),
            idlevit_checkpoint::NameList::new(&unknown_globals)
        );
    }
    Ok(checkpoint)
}

/// Tensor `name` of a file read by [`read_checkpoint`] for `role`, or an error naming the
/// file and the tensors it holds.
pub fn require_tensor<'a>(
    ckpt: &'a Checkpoint,
    name: &str,
    role: &str,
    path: &Path,
) -> Result<&'a idlevit_tensor::Tensor> {
    ckpt.get(name).ok_or_else(|| {
        let names = idlevit_checkpoint::NameList::new(ckpt.iter().map(|(n, _)| n));
        let holds = if names.is_empty() {
            "no float tensors".to_string()
        } else {
            format!("only {names}")
        };
        DataError::Invalid(format!(
            "{role} {} has no tensor `{name}` (it holds {holds})",
            path.display()
        ))
    })
}

/// Parses the bytes of a weight file as [`read_checkpoint`] does: a `.pth` zip checkpoint when
/// they start with `PK` or `pth_name` says the file is named `*.pth` / `*.tar`, safetensors
/// otherwise.
pub fn parse_checkpoint(bytes: &[u8], pth_name: bool, strict: bool) -> Result<Checkpoint> {
    Ok(parse_weights(bytes, pth_name, strict)?.0)
}

/// [`parse_checkpoint`], also returning the unknown pickle globals (as `module.name`; none for
/// safetensors) that were kept inert.
fn parse_weights(
    bytes: &[u8],
    pth_name: bool,
    strict: bool,
) -> Result<(Checkpoint, Vec<String>), idlevit_checkpoint::CheckpointError> {
    // A zip archive starts with "PK"; torch.save's zip format is the only .pth we read.
    if bytes.starts_with(b"PK") || pth_name {
        let weights = pth::read_pth_bytes(bytes, &pth::PthOptions { strict, key: None })?;
        let mut checkpoint = Checkpoint::default();
        for (name, tensor) in weights.tensors {
            checkpoint.insert(name, tensor);
        }
        return Ok((checkpoint, weights.unknown_globals));
    }
    Ok((Checkpoint::from_safetensors_bytes(bytes)?, Vec::new()))
}
