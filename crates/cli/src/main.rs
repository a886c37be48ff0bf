//! `idlevit`: run Vision Transformers on CPU from the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use idlevit_cli::commands;
use idlevit_cli::weights::{load_model, resolve_config};

/// Vision Transformers on CPU: dense inference today, token idling (IdleViT) next.
#[derive(Parser)]
#[command(name = "idlevit", version, about, long_about = None)]
struct Cli {
    /// Worker threads for the kernels (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

/// Which model to run: a named size or a JSON config.
#[derive(Args)]
struct ModelArgs {
    /// Model config JSON with keys img_size, patch_size, embed_dim, depth, num_heads,
    /// mlp_ratio, num_classes, qkv_bias (unknown keys are an error).
    #[arg(long, value_name = "CFG.json")]
    config: Option<PathBuf>,
    /// A named model instead of --config: deit_tiny, deit_small, deit_base.
    #[arg(long, value_name = "NAME")]
    model: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the model on tensor `input` (B,3,H,W) of a safetensors file; write tensor `logits`.
    Logits {
        #[command(flatten)]
        model: ModelArgs,
        /// Weights: safetensors with timm names, or a PyTorch .pth checkpoint.
        #[arg(long, value_name = "W")]
        weights: PathBuf,
        /// safetensors file holding tensor `input` of shape (batch, 3, img_size, img_size).
        #[arg(long, value_name = "X.safetensors")]
        input: PathBuf,
        /// Where to write tensor `logits` (batch, num_classes).
        #[arg(long, value_name = "Y.safetensors")]
        output: PathBuf,
    },
    /// Classify image files (resize 256 bicubic, center-crop 224, ImageNet normalisation).
    Classify {
        #[command(flatten)]
        model: ModelArgs,
        /// Weights: safetensors with timm names, or a PyTorch .pth checkpoint.
        #[arg(long, value_name = "W")]
        weights: PathBuf,
        /// Class names, one per line, printed beside the indices.
        #[arg(long, value_name = "FILE")]
        labels: Option<PathBuf>,
        /// How many classes to print per image.
        #[arg(long, default_value_t = 5)]
        top: usize,
        /// Image files (PNG, JPEG, BMP, GIF, WebP, TIFF).
        #[arg(required = true, value_name = "IMAGE")]
        images: Vec<PathBuf>,
    },
    /// Median images/s of the dense model over timed runs after warm-up.
    Bench {
        #[command(flatten)]
        model: ModelArgs,
        /// Weights (optional: seeded random weights by default; speed does not depend on them).
        #[arg(long, value_name = "W")]
        weights: Option<PathBuf>,
        /// Images per forward pass.
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// Untimed passes first.
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        /// Timed passes.
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
}

fn run(cli: Cli) -> Result<()> {
    if let Some(threads) = cli.threads {
        anyhow::ensure!(threads >= 1, "--threads must be at least 1");
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
            .context("cannot start the thread pool")?;
    }
    match cli.command {
        Command::Logits {
            model,
            weights,
            input,
            output,
        } => {
            let config = resolve_config(model.config.as_deref(), model.model.as_deref())?;
            let logits = commands::logits(&config, &weights, &input, &output)?;
            println!("wrote logits {:?} to {}", logits.shape(), output.display());
        }
        Command::Classify {
            model,
            weights,
            labels,
            top,
            images,
        } => {
            let config = resolve_config(model.config.as_deref(), model.model.as_deref())?;
            let labels = labels.as_deref().map(commands::read_labels).transpose()?;
            let model = load_model(&config, Some(&weights))?;
            for prediction in commands::classify(&model, &images, top)? {
                println!("{}", prediction.path.display());
                for (class, prob) in prediction.top {
                    let name = labels
                        .as_ref()
                        .and_then(|l| l.get(class))
                        .map_or("", String::as_str);
                    println!("  {class:>5}  {prob:.4}  {name}");
                }
            }
        }
        Command::Bench {
            model,
            weights,
            batch,
            warmup,
            runs,
        } => {
            let name = model.model.clone().unwrap_or_else(|| "custom".into());
            let config = resolve_config(model.config.as_deref(), model.model.as_deref())?;
            let model = load_model(&config, weights.as_deref())?;
            let report = commands::bench(&model, batch, warmup, runs)?;
            println!(
                "{name} dense batch {batch} threads {}: {:.2} images/s (median of {runs})",
                rayon::current_num_threads(),
                report.median_images_per_second()
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
