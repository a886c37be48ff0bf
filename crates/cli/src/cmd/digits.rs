//! `idlevit digits`: the digits task written as an image folder.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use idlevit_data::digits::{DigitsOptions, embedded_split, write_image_folder};
use idlevit_data::{DigitsTask, ImageSet, task_split};

use super::Globals;
use crate::args::TaskArg;
use crate::{checks, memory};

/// The arguments of `digits`.
#[derive(Args)]
pub struct Digits {
    /// The folder to create.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Seed of the split, placements and clutter.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The task: one digit per canvas, or two labelled by the larger of them.
    #[arg(long, value_enum, default_value = "digits")]
    task: TaskArg,
    /// Canvases per training digit.
    #[arg(long, default_value_t = 2, value_parser = checks::at_least_one, allow_negative_numbers = true)]
    train_copies: usize,
}

/// Runs `digits`.
pub fn run(args: Digits, globals: &Globals) -> Result<()> {
    let options = DigitsOptions {
        seed: args.seed,
        train_copies: args.train_copies,
        ..Default::default()
    };
    memory::check_fits(
        &format!("--train-copies {}", args.train_copies),
        options.memory_estimate(),
        memory::memory_limit(globals.max_memory),
    )?;
    let split = match args.task {
        TaskArg::Digits => embedded_split(&options)?,
        TaskArg::LargerDigit => {
            let mut task = task_split(DigitsTask::LargerDigit, &options, None)?;
            let per_epoch = task.train.len() * args.train_copies;
            task.train = task.train.with_canvases_per_epoch(per_epoch);
            task.drawn(0)?
        }
    };
    write_image_folder(&split, &args.out)?;
    println!(
        "wrote {} training and {} validation canvases to {}",
        split.train.len(),
        split.val.len(),
        args.out.display()
    );
    Ok(())
}
