//! Opening weight files by their content: safetensors or a PyTorch `.pth` checkpoint.

use std::path::Path;

use anyhow::{Context, Result};
use idlevit_checkpoint::{Checkpoint, pth};
use idlevit_zoo::{DeiT, DeiTConfig};

/// Reads named tensors from a safetensors file, or from a `.pth` zip checkpoint (read by the
/// pickle interpreter, which executes nothing; `strict` refuses unknown pickle globals).
pub fn read_checkpoint(path: &Path, strict: bool) -> Result<Checkpoint> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    // A zip archive starts with "PK"; torch.save's zip format is the only .pth we read.
    if bytes.starts_with(b"PK") || path.extension().is_some_and(|e| e == "pth" || e == "tar") {
        let options = pth::PthOptions { strict, key: None };
        let weights = pth::read_pth_bytes(&bytes, &options)
            .with_context(|| format!("cannot read PyTorch checkpoint {}", path.display()))?;
        let mut ckpt = Checkpoint::default();
        for (name, tensor) in weights.tensors {
            ckpt.insert(name, tensor);
        }
        return Ok(ckpt);
    }
    Checkpoint::from_safetensors_bytes(&bytes)
        .with_context(|| format!("cannot read weights {}", path.display()))
}

/// The model a command runs: from `weights` when given, else seeded random weights.
pub fn load_model(config: &DeiTConfig, weights: Option<&Path>) -> Result<DeiT> {
    match weights {
        Some(path) => {
            let ckpt = read_checkpoint(path, false)?;
            DeiT::load(config, ckpt)
                .with_context(|| format!("weights {} do not fit the model", path.display()))
        }
        None => Ok(DeiT::random(config, 0)?),
    }
}

/// The config from `--config FILE` or `--model NAME` (exactly one must be given).
pub fn resolve_config(config: Option<&Path>, model: Option<&str>) -> Result<DeiTConfig> {
    match (config, model) {
        (Some(path), None) => Ok(DeiTConfig::from_file(path)?),
        (None, Some(name)) => Ok(DeiTConfig::named(name)?),
        (Some(_), Some(_)) => anyhow::bail!("give either --config or --model, not both"),
        (None, None) => anyhow::bail!("give --config CFG.json or --model NAME"),
    }
}
