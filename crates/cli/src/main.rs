//! `idlevit`: run Vision Transformers on CPU from the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use idlevit_cli::commands;
use idlevit_cli::policy::{Mode, resolve_policy};
use idlevit_cli::weights::{load_model, resolve_config};
use idlevit_zoo::{PolicyKind, TokenPolicy, macs};

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

/// How tokens are selected: the form of the model and the policy at its selection layers.
#[derive(Args)]
struct PolicyArgs {
    /// dense: every token in every layer; idle: selection layers in their gathered
    /// (inference) form; masked: idle layers in their masked (training) form.
    #[arg(long, default_value = "dense", value_name = "MODE")]
    mode: Mode,
    /// At selection layers: idle (IdleViT: unselected tokens skip the layer and stay),
    /// prune (top-k pruning: dropped for good) or evit (EViT: fused into one token).
    #[arg(long, default_value = "idle", value_name = "POLICY")]
    policy: PolicyKind,
    /// Base keep rate r in (0, 1]: DeiT idle/prune layers 4..11 keep r, r^2, r^3 of the
    /// tokens; EViT layers 3, 6, 9 keep r of those present. Not needed when the config
    /// lists idle_layers and keep_ratios.
    #[arg(long, value_name = "R")]
    keep_rate: Option<f64>,
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
        #[command(flatten)]
        policy: PolicyArgs,
        /// Also write each selection layer's chosen tokens as I64 tensors
        /// `selected.layer{i}` (batch, K+1), original token indices, CLS first.
        #[arg(long, value_name = "F.safetensors")]
        selected_out: Option<PathBuf>,
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
    /// Median images/s over timed runs after warm-up; with --keep-rate, the policy's model
    /// and the dense model are timed in the same run and compared.
    Bench {
        #[command(flatten)]
        model: ModelArgs,
        /// Selection policy to compare against dense (idle, prune or evit).
        #[arg(long, default_value = "idle", value_name = "POLICY")]
        policy: PolicyKind,
        /// Base keep rate r of the policy (see `logits --help`); dense only when absent.
        #[arg(long, value_name = "R")]
        keep_rate: Option<f64>,
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
    /// Multiply-accumulates per image (GMACs) by spec section 2's formula, dense and under a
    /// policy.
    Flops {
        #[command(flatten)]
        model: ModelArgs,
        /// Selection policy (idle, prune or evit).
        #[arg(long, default_value = "idle", value_name = "POLICY")]
        policy: PolicyKind,
        /// Base keep rate r; dense only when absent (unless the config lists a schedule).
        #[arg(long, value_name = "R")]
        keep_rate: Option<f64>,
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
            policy,
            selected_out,
        } => {
            let config = resolve_config(model.config.as_deref(), model.model.as_deref())?;
            let mode = policy.mode;
            let token_policy = resolve_policy(&config, mode, policy.policy, policy.keep_rate)?;
            let model = load_model(&config, Some(&weights))?.with_policy(token_policy)?;
            let run = commands::logits(&model, mode == Mode::Masked, &input, &output)?;
            println!(
                "wrote logits {:?} to {}",
                run.logits.shape(),
                output.display()
            );
            if let Some(path) = selected_out {
                commands::write_selections(&run.selections, &path)?;
                println!(
                    "wrote {} layers' selections to {}",
                    run.selections.len(),
                    path.display()
                );
            }
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
            policy,
            keep_rate,
        } => {
            let name = model.model.clone().unwrap_or_else(|| "custom".into());
            let config = resolve_config(model.config.as_deref(), model.model.as_deref())?;
            let dense = load_model(&config, weights.as_deref())?;
            let threads = rayon::current_num_threads();
            let token_policy = match keep_rate {
                Some(_) => resolve_policy(&config, Mode::Idle, policy, keep_rate)?,
                None => config
                    .schedule()?
                    .map_or(TokenPolicy::Dense, |s| TokenPolicy::select(policy, s)),
            };
            if token_policy == TokenPolicy::Dense {
                let report = commands::bench(&[&dense], batch, warmup, runs)?;
                println!(
                    "{name} dense batch {batch} threads {threads}: {:.2} images/s (median of {runs})",
                    report.images_per_second(0)
                );
            } else {
                let selecting = dense.clone().with_policy(token_policy.clone())?;
                let report = commands::bench(&[&dense, &selecting], batch, warmup, runs)?;
                let (dense_ips, policy_ips) =
                    (report.images_per_second(0), report.images_per_second(1));
                let macs_ratio =
                    macs(&config, &TokenPolicy::Dense)? / macs(&config, &token_policy)?;
                let label = format!(
                    "{policy:?} r={}",
                    keep_rate.map_or("config".into(), |r| r.to_string())
                )
                .to_lowercase();
                println!(
                    "{name} batch {batch} threads {threads}, medians of {runs} interleaved runs:"
                );
                println!("  dense      {dense_ips:8.2} images/s");
                println!("  {label:<10} {policy_ips:8.2} images/s");
                let speedup = policy_ips / dense_ips;
                println!(
                    "  speed-up {speedup:.3}x over dense; GMAC ratio {macs_ratio:.3}x; speed-up / GMAC ratio {:.3}",
                    speedup / macs_ratio
                );
            }
            println!(
                "reference rows, measured elsewhere (spec section 9; PyTorch eager, fp32, 2 threads):"
            );
            for (engine, b1, b32) in commands::REFERENCE_THROUGHPUT {
                println!("  {engine:<32} batch 1 {b1:6.1}   batch 32 {b32:6.1} images/s");
            }
        }
        Command::Flops {
            model,
            policy,
            keep_rate,
        } => {
            let name = model.model.clone().unwrap_or_else(|| "custom".into());
            let config = resolve_config(model.config.as_deref(), model.model.as_deref())?;
            let dense = macs(&config, &TokenPolicy::Dense)?;
            let token_policy = match keep_rate {
                Some(_) => resolve_policy(&config, Mode::Idle, policy, keep_rate)?,
                None => config
                    .schedule()?
                    .map_or(TokenPolicy::Dense, |s| TokenPolicy::select(policy, s)),
            };
            println!("{name} dense: {:.2} GMACs", dense / 1e9);
            if token_policy != TokenPolicy::Dense {
                let reduced = macs(&config, &token_policy)?;
                let label = keep_rate.map_or("config schedule".into(), |r| format!("r={r}"));
                println!(
                    "{name} {} {label}: {:.2} GMACs ({:.3}x fewer than dense)",
                    format!("{policy:?}").to_lowercase(),
                    reduced / 1e9,
                    dense / reduced
                );
            }
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
