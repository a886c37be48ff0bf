//! `idlevit loss`: the finetuning objective's terms on one batch, and optionally every
//! parameter's gradient.

use std::path::PathBuf;

use anyhow::{Context, Result, bail, ensure};
use clap::Args;
use idlevit_data::files::{NamedPath, check_distinct, save_checkpoint};
use idlevit_data::weights::{read_checkpoint, require_tensor};
use idlevit_nn::BatchNormMode;
use idlevit_train::Trainable;
use idlevit_train::models::load_zoo_model;
use idlevit_zoo::{MemoryUse, TokenPolicy};

use super::{Globals, check_model_memory, named, read_input, training_policy};
use crate::args::{ModelArgs, ObjectiveArgs};

/// The arguments of `loss`.
#[derive(Args)]
pub struct Loss {
    #[command(flatten)]
    model: ModelArgs,
    /// Student weights, or a timm hub snapshot directory.
    #[arg(long, value_name = "W")]
    weights: PathBuf,
    /// safetensors with tensor `input` (batch, 3, H, W).
    #[arg(long, value_name = "X.safetensors")]
    input: PathBuf,
    /// Class labels, comma separated, one per image (label-smoothed by --smoothing).
    #[arg(long, value_name = "1,2,3", conflicts_with = "targets")]
    labels: Option<String>,
    /// Soft targets instead of labels: safetensors with tensor `targets` (batch, classes).
    #[arg(long, value_name = "T.safetensors")]
    targets: Option<PathBuf>,
    /// Base keep rate r of the family's idle schedule (DeiT layers 4..11, LV-ViT-S 4..15,
    /// LV-ViT-M 5..19 at r, r^2, r^3; PVT-v2 stages 2-4); or idle_layers/keep_ratios in
    /// the config.
    #[arg(long, value_name = "R")]
    keep_rate: Option<f64>,
    #[command(flatten)]
    objective: ObjectiveArgs,
    /// Frozen dense teacher weights (same family and size), for the distillation terms.
    #[arg(long, value_name = "W")]
    teacher: Option<PathBuf>,
    /// Write d(total)/d(parameter) for every parameter under its timm name.
    #[arg(long, value_name = "G.safetensors")]
    grads_out: Option<PathBuf>,
    /// Also print each idle layer's cut loss.
    #[arg(long)]
    per_layer: bool,
}

/// Runs `loss`.
pub fn run(args: Loss, globals: &Globals) -> Result<()> {
    let strict = globals.strict;
    let snapshots = super::snapshot_files(&[
        ("--weights", Some(&args.weights)),
        ("--teacher", args.teacher.as_deref()),
    ]);
    let mut inputs = args.model.config_input();
    inputs.extend(
        snapshots
            .iter()
            .map(|(flag, path)| NamedPath::new(flag, path)),
    );
    inputs.extend([
        NamedPath::new("--weights", &args.weights),
        NamedPath::new("--input", &args.input),
    ]);
    inputs.extend(named("--targets", &args.targets));
    inputs.extend(named("--teacher", &args.teacher));
    let outputs: Vec<NamedPath> = named("--grads-out", &args.grads_out).into_iter().collect();
    check_distinct(&inputs, &outputs)?;
    let resolved = super::resolve_model(&args.model, Some(&args.weights))?;
    let config = resolved.config;
    let weights = resolved.weights.unwrap_or(args.weights.clone());
    let token_policy = training_policy(&config, args.keep_rate)?;
    ensure!(
        token_policy != TokenPolicy::Dense,
        "give --keep-rate r, or idle_layers and keep_ratios in the config"
    );
    let objective = args.objective.objective(&config);
    if objective.distill_weight != 0.0 && args.teacher.is_none() {
        bail!("--distill-weight needs --teacher");
    }
    let images = read_input(&args.input, strict)?;
    let batch = images.shape().first().copied().unwrap_or(0);
    let teacher_use = MemoryUse::Training {
        teacher: args.teacher.is_some(),
    };
    check_model_memory(&config, batch, teacher_use, globals.max_memory)?;
    let mut student =
        load_zoo_model(&config, Some(&weights), "weights", strict)?.with_policy(token_policy)?;
    objective.check(&student)?;
    let mut teacher = match args.teacher.as_deref() {
        Some(t) => {
            let t = super::weights_file(t, &config, "--teacher")?;
            Some(load_zoo_model(
                &config,
                Some(&t),
                "teacher weights",
                strict,
            )?)
        }
        None => None,
    };
    let batch_norm: BatchNormMode = args.objective.batchnorm.into();
    if batch_norm == BatchNormMode::Train {
        ensure!(
            student.has_batch_norm(),
            "--batchnorm train: {} has no batch norm layers (LV-ViT's stem has)",
            student.family()
        );
        student.set_batch_norm(batch_norm);
        if let Some(teacher) = teacher.as_mut() {
            teacher.set_batch_norm(batch_norm);
        }
    }
    let targets = match (args.labels, args.targets) {
        (Some(labels), None) => {
            let labels = parse_labels(&labels)?;
            ensure!(
                labels.len() == batch,
                "{} labels for a batch of {batch} images",
                labels.len()
            );
            idlevit_train::smoothed_targets(&labels, student.num_classes(), objective.smoothing)?
        }
        (None, Some(path)) => {
            let file = read_checkpoint(&path, "targets", strict)?;
            let targets = require_tensor(&file, "targets", "targets", &path)?;
            idlevit_train::check_targets(targets)
                .with_context(|| format!("targets {}", path.display()))?;
            targets.clone()
        }
        _ => bail!("give --labels or --targets"),
    };
    let with_grads = args.grads_out.is_some();
    let report = idlevit_train::inspect::loss_report(
        &student,
        teacher.as_ref(),
        &images,
        &targets,
        &objective,
        with_grads,
    )?;
    println!("ce {:.7}", report.ce);
    println!("cut {:.7}", report.cut);
    if args.per_layer {
        for layer in &report.cut_layers {
            let note = if layer.counted {
                ""
            } else {
                "  (not in the release's sum)"
            };
            println!("cut.layer{} {:.7}{note}", layer.layer, layer.value);
        }
    }
    if let (Some(kl), Some(feature)) = (report.kl, report.feature) {
        println!("kl {kl:.7}");
        println!("feature {feature:.7}");
    }
    println!("total {:.7}", report.total);
    if let (Some(path), Some(grads)) = (args.grads_out, report.grads) {
        save_checkpoint(&grads, &path, "gradients")?;
        println!("wrote {} gradients to {}", grads.len(), path.display());
    }
    Ok(())
}

/// Parses `--labels 1,2,3`.
fn parse_labels(text: &str) -> Result<Vec<usize>> {
    text.split(',')
        .map(|l| {
            l.trim()
                .parse::<usize>()
                .with_context(|| format!("label `{l}` is not a class index"))
        })
        .collect()
}
