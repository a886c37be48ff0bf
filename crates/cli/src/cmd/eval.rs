//! `idlevit eval`: top-1 / top-5 accuracy on an image folder, dense or idle.

use std::path::PathBuf;

use anyhow::{Result, ensure};
use clap::Args;
use idlevit_data::digits::DigitsOptions;
use idlevit_data::{ImageFolder, ImageSet, task_split};

use serde_json::json;

use super::{Globals, print_accuracy, print_json, resolve_model, zoo_model};
use crate::args::{ModelArgs, PolicyArgs, TaskArg};
use crate::checks;
use crate::policy::Mode;

/// The arguments of `eval`.
#[derive(Args)]
pub struct Eval {
    #[command(flatten)]
    model: ModelArgs,
    /// Run the linear layers and attention in bfloat16 (f32 accumulation); see docs/bf16.md.
    #[arg(long)]
    bf16: bool,
    /// Weights: safetensors, a .pth checkpoint, or a timm hub snapshot directory (whose
    /// config.json also gives the model and its preprocessing).
    #[arg(long, value_name = "W")]
    weights: PathBuf,
    /// The data set folder (one folder of class folders).
    #[arg(long, value_name = "DIR", required_unless_present = "task")]
    data: Option<PathBuf>,
    /// Evaluate on a built-in task's fixed validation canvases instead of --data.
    #[arg(long, value_enum, conflicts_with = "data")]
    task: Option<TaskArg>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 32, value_parser = checks::at_least_one, allow_negative_numbers = true)]
    batch: usize,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Print one JSON object on stdout instead of text (its fields: README).
    #[arg(long)]
    json: bool,
}

/// Runs `eval`.
pub fn run(args: Eval, globals: &Globals) -> Result<()> {
    let group = globals.group;
    ensure!(
        args.policy.mode != Mode::Masked,
        "eval runs the dense or idle (gathered) form; use --mode idle"
    );
    let resolved = resolve_model(&args.model, Some(&args.weights))?;
    let model = zoo_model(&resolved, &args.policy, args.bf16, args.batch, globals)?;
    let data: Box<dyn ImageSet> = match (&args.data, args.task) {
        (_, Some(task)) => Box::new(task_split(task.into(), &DigitsOptions::default(), None)?.val),
        (Some(dir), None) => Box::new(ImageFolder::open(dir)?),
        (None, None) => anyhow::bail!("give --data DIR or --task"),
    };
    let leader = group.is_leader();
    let acc = idlevit_train::evaluate::evaluate_in_group_with(
        &model,
        data.as_ref(),
        args.batch,
        leader,
        group,
        &resolved.transform,
    )?;
    if leader && args.json {
        if let Some(warning) = acc.warning() {
            eprintln!("{warning}");
        }
        print_json(&json!({
            "model": resolved.name,
            "images": acc.images,
            "top1": acc.top1,
            "top5": acc.top5,
            "non_finite": acc.non_finite,
        }))?;
    } else if leader {
        print_accuracy("", &acc);
    }
    Ok(())
}
