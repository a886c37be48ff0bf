//! PyTorch `.pth` checkpoints to safetensors: read with the pickle interpreter that executes
//! nothing, write f32 tensors under the zoo's names.

use std::path::Path;

use idlevit_checkpoint::{Checkpoint, CheckpointError, pth};
use idlevit_data::files::{NamedPath, check_distinct, save_checkpoint};
use idlevit_zoo::LvVit;

use crate::Result;

/// How to read the PyTorch checkpoint.
#[derive(Clone, Debug, Default)]
pub struct ConvertOptions {
    /// Refuse any pickle global the reader does not understand, naming it.
    pub strict: bool,
    /// The entry of the checkpoint's top-level dict holding the weights (default: `model`,
    /// then `state_dict`, then the top level itself).
    pub key: Option<String>,
    /// The model family whose release names to adapt to the zoo's (`lvvit`); none keeps the
    /// names as they are (timm's, for DeiT).
    pub family: Option<Family>,
}

/// A model family with its own checkpoint conventions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// The official LV-ViT release (`module.` prefixes from distributed training).
    LvVit,
}

impl std::str::FromStr for Family {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "lvvit" => Ok(Self::LvVit),
            other => Err(format!("unknown model family `{other}`; expected lvvit")),
        }
    }
}

/// What a conversion found.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvertReport {
    /// Tensors written.
    pub tensors: usize,
    /// Entries that were not float tensors and were left out.
    pub skipped: Vec<String>,
    /// Pickle globals the reader kept inert.
    pub unknown_globals: Vec<String>,
}

impl ConvertReport {
    /// What the conversion to `output` did, one line per finding, as the commands print it.
    pub fn summary(&self, output: &Path) -> String {
        let mut lines = vec![format!(
            "wrote {} tensors to {}",
            self.tensors,
            output.display()
        )];
        if !self.skipped.is_empty() {
            lines.push(format!(
                "skipped {} non-weight entries: {}",
                self.skipped.len(),
                self.skipped.join(", ")
            ));
        }
        if !self.unknown_globals.is_empty() {
            lines.push(format!(
                "kept inert (never executed): {}",
                self.unknown_globals.join(", ")
            ));
        }
        lines.join("\n")
    }
}

/// Converts the weights of PyTorch checkpoint `input` into safetensors file `output`
/// (written whole or not at all; refused when both name the same file).
pub fn convert(input: &Path, output: &Path, options: &ConvertOptions) -> Result<ConvertReport> {
    let pth_options = pth::PthOptions {
        strict: options.strict,
        key: options.key.clone(),
    };
    check_distinct(
        &[NamedPath::new("IN.pth", input)],
        &[NamedPath::new("OUT.safetensors", output)],
    )?;
    // Its errors name the file already.
    let weights = pth::read_pth(input, &pth_options).map_err(CheckpointError::from)?;
    let mut ckpt = Checkpoint::default();
    let tensors = weights.tensors.len();
    for (name, tensor) in weights.tensors {
        ckpt.insert(name, tensor);
    }
    if options.family == Some(Family::LvVit) {
        ckpt = LvVit::adapt(ckpt);
    }
    save_checkpoint(&ckpt, output, "the converted weights")?;
    Ok(ConvertReport {
        tensors,
        skipped: weights.skipped,
        unknown_globals: weights.unknown_globals,
    })
}
