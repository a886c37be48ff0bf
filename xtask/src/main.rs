//! `cargo xtask`: project tasks.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use xtask::convert::{ConvertOptions, convert};

/// Project tasks for idlevit.
#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Convert a PyTorch checkpoint (.pth, zip + pickle) to safetensors with f32 tensors.
    /// Nothing in the pickle is executed; unknown globals stay inert placeholders.
    Convert {
        /// The PyTorch checkpoint.
        input: PathBuf,
        /// The safetensors file to write.
        output: PathBuf,
        /// Refuse any pickle global the reader does not understand, naming it.
        #[arg(long)]
        strict: bool,
        /// Top-level entry holding the weights (default: `model`, then `state_dict`, then
        /// the whole dict).
        #[arg(long)]
        key: Option<String>,
        /// Adapt a family's release names to the zoo's: `lvvit` (the official LV-ViT
        /// `.pth.tar`, nested under `state_dict` or `model`, possibly `module.`-prefixed).
        #[arg(long)]
        family: Option<xtask::convert::Family>,
    },
}

fn main() -> ExitCode {
    let Cli { task } = Cli::parse();
    let result = match task {
        Task::Convert {
            input,
            output,
            strict,
            key,
            family,
        } => convert(
            &input,
            &output,
            &ConvertOptions {
                strict,
                key,
                family,
            },
        )
        .map(|report| {
            println!("wrote {} tensors to {}", report.tensors, output.display());
            if !report.skipped.is_empty() {
                println!(
                    "skipped {} non-weight entries: {}",
                    report.skipped.len(),
                    report.skipped.join(", ")
                );
            }
            if !report.unknown_globals.is_empty() {
                println!(
                    "kept inert (never executed): {}",
                    report.unknown_globals.join(", ")
                );
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
