//! One module per command: its arguments, the checks that span them, the library calls that
//! do the work, and what it prints. Helpers several commands share are here.

pub mod bench;
pub mod classify;
pub mod digits;
pub mod eval;
pub mod finetune;
pub mod flops;
pub mod logits;
pub mod loss;

use std::path::{Path, PathBuf};

use anyhow::Result;
use idlevit_data::files::NamedPath;
use idlevit_tensor::Tensor;
use idlevit_train::distributed::ProcessGroup;
use idlevit_train::evaluate::Accuracy;
use idlevit_train::models::load_zoo_model;
use idlevit_zoo::{MemoryUse, PolicyKind, TokenPolicy, ZooConfig, ZooModel};

use crate::args::{ModelArgs, PolicyArgs};
use crate::memory;
use crate::policy::{compared_policy, resolve_policy};

/// What every command is given besides its own arguments: the global flags, and the
/// processes it runs in.
pub struct Globals<'a> {
    /// `--strict`: refuse `.pth` files naming unknown pickle globals.
    pub strict: bool,
    /// `--max-memory`, in bytes.
    pub max_memory: Option<u64>,
    /// One process, or the ranks of an MPI job.
    pub group: &'a dyn ProcessGroup,
}

/// The model `logits` and `eval` run on `batch` images: any zoo family from `weights` (as
/// [`inference_model`] loads it), under the token policy the flags ask for (a config's own
/// schedule lists included).
fn zoo_model(
    model: &ModelArgs,
    policy: &PolicyArgs,
    weights: &Path,
    bf16: bool,
    batch: usize,
    globals: &Globals,
) -> Result<ZooModel> {
    let config = model.zoo_config()?;
    let token_policy = resolve_policy(&config, policy.mode, policy.policy, policy.keep_rate)?;
    let loaded = inference_model(&config, weights, bf16, batch, globals)?;
    Ok(loaded.with_policy(token_policy)?)
}

/// A model of any family from `weights` for inference on `batch` images, refused first when
/// its estimated memory exceeds what the command may use: dense, its linear layers in bf16
/// when asked.
fn inference_model(
    config: &ZooConfig,
    weights: &Path,
    bf16: bool,
    batch: usize,
    globals: &Globals,
) -> Result<ZooModel> {
    check_model_memory(config, batch, inference_use(bf16), globals.max_memory)?;
    let model = load_zoo_model(config, Some(weights), "weights", globals.strict)?
        .with_precision(crate::precision::from_flag(bf16))?;
    Ok(packed(model, bf16))
}

/// `model` with its f32 weights packed for inference (bf16 weights are packed already).
fn packed(model: ZooModel, bf16: bool) -> ZooModel {
    if !bf16 {
        model.pack_for_inference();
    }
    model
}

/// The idle policy a student trains under: the family's schedule at `keep_rate`, or the
/// config's own lists; dense when neither is given.
fn training_policy(config: &ZooConfig, keep_rate: Option<f64>) -> Result<TokenPolicy> {
    compared_policy(config, PolicyKind::Idle, keep_rate)
}

/// Refuses a model of `config` run on `batch` images (`training`: with gradients, optimiser
/// state and, when `teacher`, a teacher) when its estimated memory exceeds what the command
/// may use.
fn check_model_memory(
    config: &ZooConfig,
    batch: usize,
    use_: MemoryUse,
    max_memory: Option<u64>,
) -> Result<()> {
    let doing = match use_ {
        MemoryUse::Training { .. } => "training",
        _ => "running",
    };
    memory::check_fits(
        &format!(
            "{doing} this {} model on a batch of {batch}",
            config.family()
        ),
        config.memory_estimate(batch, use_),
        memory::memory_limit(max_memory),
    )
}

/// How inference uses memory, in f32 or bf16.
fn inference_use(bf16: bool) -> MemoryUse {
    if bf16 {
        MemoryUse::InferenceBf16
    } else {
        MemoryUse::Inference
    }
}

/// Reads tensor `input` `(batch, 3, H, W)` of the `--input` file at `path` (safetensors, or
/// a `.pth`; `strict` refuses unknown pickle globals).
fn read_input(path: &Path, strict: bool) -> Result<Tensor> {
    let inputs = idlevit_data::weights::read_checkpoint(path, "input", strict)?;
    Ok(idlevit_data::weights::require_tensor(&inputs, "input", "input", path)?.clone())
}

/// `path`, when one was given, as named by `flag`.
pub(crate) fn named<'a>(flag: &'a str, path: &'a Option<PathBuf>) -> Option<NamedPath<'a>> {
    path.as_deref().map(|p| NamedPath::new(flag, p))
}

/// Prints `accuracy` after `prefix`, and first (on stderr) a warning when some images gave
/// logits that are not finite.
fn print_accuracy(prefix: &str, accuracy: &Accuracy) {
    if let Some(warning) = accuracy.warning() {
        eprintln!("{warning}");
    }
    println!(
        "{prefix}top-1 {:.2}%  top-5 {:.2}%  ({} images)",
        100.0 * accuracy.top1,
        100.0 * accuracy.top5,
        accuracy.images
    );
}
