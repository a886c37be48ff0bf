//! One module per command: its arguments, the checks that span them, the library calls that
//! do the work, and what it prints. Helpers several commands share are here.

pub mod bench;
pub mod classify;
pub mod convert;
pub mod digits;
pub mod eval;
pub mod finetune;
pub mod flops;
pub mod logits;
pub mod loss;

use std::path::{Path, PathBuf};

use anyhow::{Result, ensure};
use idlevit_data::files::NamedPath;
use idlevit_data::preprocess::EvalTransform;
use idlevit_tensor::Tensor;
use idlevit_train::distributed::ProcessGroup;
use idlevit_train::evaluate::Accuracy;
use idlevit_train::hub::{Snapshot, named_transform};
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

/// The model a command runs: its config, its weights file, how its images are prepared, and
/// its name in reports.
pub(crate) struct Resolved {
    /// The model's configuration.
    pub config: ZooConfig,
    /// The weights file (inside the snapshot for a snapshot directory), if one was given.
    pub weights: Option<PathBuf>,
    /// The snapshot's preprocessing, or the default for the named model.
    pub transform: EvalTransform,
    /// The `--model` name, the snapshot's architecture, or "custom" for a config.
    pub name: String,
}

/// Resolves `--model` / `--config` and `--weights`: a directory given as weights is a timm hub
/// snapshot, which names its own architecture, classes and preprocessing. `--model` or
/// `--config` beside a snapshot must describe the same model, or the command is refused.
pub(crate) fn resolve_model(model: &ModelArgs, weights: Option<&Path>) -> Result<Resolved> {
    let Some(dir) = weights.filter(|w| w.is_dir()) else {
        let config = model.zoo_config()?;
        let transform = match &model.model {
            Some(name) => named_transform(name, config.img_size()),
            None => EvalTransform::for_size(config.img_size()),
        };
        return Ok(Resolved {
            config,
            weights: weights.map(Path::to_path_buf),
            transform,
            name: model.name(),
        });
    };
    let snapshot = Snapshot::open(dir)?;
    if model.config.is_some() || model.model.is_some() {
        let given = model.zoo_config()?;
        ensure!(
            given == snapshot.config,
            "the hub snapshot {} holds a {} model ({}) that differs from the one --model or \
             --config describes; leave them out to run the snapshot as it is",
            dir.display(),
            snapshot.architecture,
            describe(&snapshot.config),
        );
    }
    Ok(Resolved {
        config: snapshot.config,
        weights: Some(snapshot.weights),
        transform: snapshot.transform,
        name: snapshot.architecture,
    })
}

/// The weights file of `path` for a model of `config` (teachers): a hub snapshot directory's
/// `model.safetensors`, refused when the snapshot holds another model; else `path` itself.
pub(crate) fn weights_file(path: &Path, config: &ZooConfig, flag: &str) -> Result<PathBuf> {
    if !path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let snapshot = Snapshot::open(path)?;
    ensure!(
        snapshot.config == *config,
        "{flag} {} holds a {} model ({}) that differs from the student",
        path.display(),
        snapshot.architecture,
        describe(&snapshot.config),
    );
    Ok(snapshot.weights)
}

/// The files inside the hub snapshot directories among `paths` (each snapshot's config and
/// weights), as inputs named by their flag, which no output may replace: the directory
/// itself is no file an output could name.
pub(crate) fn snapshot_files<'a>(paths: &[(&'a str, Option<&Path>)]) -> Vec<(&'a str, PathBuf)> {
    paths
        .iter()
        .filter_map(|(flag, path)| path.filter(|p| p.is_dir()).map(|dir| (*flag, dir)))
        .flat_map(|(flag, dir)| {
            [
                idlevit_train::hub::CONFIG_FILE,
                idlevit_train::hub::WEIGHTS_FILE,
            ]
            .map(|file| (flag, dir.join(file)))
        })
        .collect()
}

/// A model's family, input size, depth and classes, for errors that compare two models.
fn describe(config: &ZooConfig) -> String {
    format!(
        "{}, {} pixels, depth {}, {} classes",
        config.family(),
        config.img_size(),
        config.depth(),
        config.num_classes()
    )
}

/// The model `logits` and `eval` run on `batch` images: any zoo family from the resolved
/// weights (as [`inference_model`] loads it), under the token policy the flags ask for (a
/// config's own schedule lists included).
fn zoo_model(
    model: &Resolved,
    policy: &PolicyArgs,
    bf16: bool,
    batch: usize,
    globals: &Globals,
) -> Result<ZooModel> {
    let config = &model.config;
    let weights = model
        .weights
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("give --weights"))?;
    let token_policy = resolve_policy(config, policy.mode, policy.policy.into(), policy.keep_rate)?;
    let loaded = inference_model(config, weights, bf16, batch, globals)?;
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

/// Prints `value` as the one JSON object of a command's `--json` output.
fn print_json(value: &serde_json::Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
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
