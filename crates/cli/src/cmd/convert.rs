//! `idlevit convert`: the weights of a PyTorch checkpoint as a safetensors file.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, ValueEnum};
use idlevit_train::convert::{ConvertOptions, Family, convert};

use super::Globals;

/// The arguments of `convert`.
#[derive(Args)]
pub struct Convert {
    /// The PyTorch checkpoint (.pth or .pth.tar: zip + pickle).
    #[arg(value_name = "IN.pth")]
    input: PathBuf,
    /// The safetensors file to write (f32 tensors).
    #[arg(value_name = "OUT.safetensors")]
    output: PathBuf,
    /// Top-level entry holding the weights [default: model, then state_dict, then the whole
    /// dict].
    #[arg(long)]
    key: Option<String>,
    /// Adapt a family's release names to the zoo's (without it the names are kept: timm's,
    /// for DeiT and ViT).
    #[arg(long, value_enum)]
    family: Option<FamilyChoice>,
}

/// `--family`: whose release names a checkpoint uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FamilyChoice {
    /// The official LV-ViT release (weights under `state_dict` or `model`, possibly
    /// `module.`-prefixed).
    Lvvit,
}

impl From<FamilyChoice> for Family {
    fn from(choice: FamilyChoice) -> Self {
        match choice {
            FamilyChoice::Lvvit => Self::LvVit,
        }
    }
}

/// Runs `convert` (`--strict` refuses unknown pickle globals).
pub fn run(args: Convert, globals: &Globals) -> Result<()> {
    let options = ConvertOptions {
        strict: globals.strict,
        key: args.key,
        family: args.family.map(Family::from),
    };
    let report = convert(&args.input, &args.output, &options)?;
    println!("{}", report.summary(&args.output));
    Ok(())
}
