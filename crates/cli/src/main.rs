//! `idlevit`: run Vision Transformers on CPU from the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use idlevit_cli::distributed::{ProcessGroup, SingleProcess};
use idlevit_cli::output::{NamedPath, check_distinct, save_checkpoint};
use idlevit_cli::policy::{Mode, compared_policy, resolve_policy};
use idlevit_cli::weights::{load_model, load_zoo_model, resolve_zoo_config};
use idlevit_cli::{checks, commands, default_model, memory};
use idlevit_zoo::{MemoryUse, PolicyKind, TokenPolicy, ZooConfig, ZooModel};

/// Vision Transformers on CPU: dense inference today, token idling (IdleViT) next.
#[derive(Parser)]
#[command(name = "idlevit", version, about, long_about = None)]
struct Cli {
    /// Worker threads for the kernels (default: all cores).
    #[arg(long, global = true, value_parser = checks::at_least_one, allow_negative_numbers = true)]
    threads: Option<usize>,
    /// Most memory a command may plan to use, e.g. 8G (default: what the machine has
    /// available); a model or batch estimated to need more is refused before it is built.
    #[arg(long, global = true, value_name = "SIZE", value_parser = checks::memory_size)]
    max_memory: Option<u64>,
    /// Refuse `.pth` files whose pickle names globals other than those that rebuild tensors
    /// (without it they are kept inert, never called, and named in a warning).
    #[arg(long, global = true)]
    strict: bool,
    #[command(subcommand)]
    command: Command,
}

/// Which model to run: a named size or a JSON config.
#[derive(Args)]
struct ModelArgs {
    /// Model config JSON. A DeiT's keys: img_size, patch_size, embed_dim, depth, num_heads,
    /// mlp_ratio, num_classes, qkv_bias (optional idle_layers, keep_ratios). With "family":
    /// "lvvit" or "pvt_v2", that family's keys (see the README); unknown keys are an error.
    #[arg(long, value_name = "CFG.json")]
    config: Option<PathBuf>,
    /// A named model instead of --config: deit_tiny, deit_small, deit_base, lvvit_s,
    /// lvvit_m, pvt_v2_b0, pvt_v2_b1, pvt_v2_b2 (every command takes every family).
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
    /// tokens (LV-ViT-S 4..15, LV-ViT-M 5..19; PVT-v2 idles stages 2-4); EViT layers 3, 6, 9
    /// keep r of those present. Not needed when a DeiT config lists idle_layers and
    /// keep_ratios.
    #[arg(long, value_name = "R", value_parser = checks::keep_rate, allow_negative_numbers = true)]
    keep_rate: Option<f64>,
}

/// The terms of the finetuning objective.
#[derive(Args)]
struct ObjectiveArgs {
    /// Cut-loss terms: both, inter, intra or none.
    #[arg(long, default_value = "both")]
    cut_loss: idlevit_cutloss::CutLoss,
    /// Weight of the cut loss (averaged over idle layers) [default: 20; 0 for PVT-v2, whose
    /// spatial-reduction attention has no CLS row and hence no cut loss: a non-zero weight
    /// on an idle PVT-v2 is an error, see docs/pvt-idle.md].
    #[arg(long, value_name = "W", value_parser = checks::non_negative_f32, allow_negative_numbers = true)]
    cut_weight: Option<f32>,
    /// Distillation weight w (KL gets w, the feature term 100 w); needs a teacher.
    #[arg(long, default_value_t = 0.0, value_parser = checks::non_negative_f32, allow_negative_numbers = true)]
    distill_weight: f32,
    /// Label smoothing of hard labels (0 to 1).
    #[arg(long, default_value_t = 0.1, value_parser = checks::probability, allow_negative_numbers = true)]
    smoothing: f32,
}

impl ObjectiveArgs {
    /// The objective for a student of `family`: the cut weight defaults to the release's 20,
    /// or to 0 where the family has no cut loss.
    fn objective(&self, family: &ZooConfig) -> idlevit_train::Objective {
        let default_cut = match family {
            ZooConfig::Pvt(_) => 0.0,
            _ => idlevit_train::Objective::default().cut_weight,
        };
        idlevit_train::Objective {
            cut_loss: self.cut_loss,
            cut_weight: self.cut_weight.unwrap_or(default_cut),
            distill_weight: self.distill_weight,
            smoothing: self.smoothing,
        }
    }
}

/// Regularisation of finetuning: DeiT's recipe by default (as the IdleViT release).
#[derive(Args)]
struct RegularisationArgs {
    /// Stochastic depth of the last block (linear from 0 at the first; below 1).
    #[arg(long, default_value_t = 0.1, value_parser = checks::probability, allow_negative_numbers = true)]
    drop_path: f32,
    /// Mixup alpha (0 disables mixup).
    #[arg(long, default_value_t = 0.8, value_parser = checks::non_negative_f32, allow_negative_numbers = true)]
    mixup: f32,
    /// CutMix alpha (0 disables CutMix).
    #[arg(long, default_value_t = 1.0, value_parser = checks::non_negative_f32, allow_negative_numbers = true)]
    cutmix: f32,
    /// Probability that a batch is mixed.
    #[arg(long, default_value_t = 1.0, value_parser = checks::probability, allow_negative_numbers = true)]
    mixup_prob: f32,
    /// Probability of CutMix rather than mixup when both are on.
    #[arg(long, default_value_t = 0.5, value_parser = checks::probability, allow_negative_numbers = true)]
    mixup_switch_prob: f32,
    /// Train on the evaluation transform instead of random resized crops and flips.
    #[arg(long)]
    no_augment: bool,
}

impl RegularisationArgs {
    fn mixup(&self) -> idlevit_train::Mixup {
        idlevit_train::Mixup {
            mixup_alpha: self.mixup,
            cutmix_alpha: self.cutmix,
            prob: self.mixup_prob,
            switch_prob: self.mixup_switch_prob,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the model on tensor `input` (B,3,H,W) of a safetensors file; write tensor `logits`.
    Logits {
        #[command(flatten)]
        model: ModelArgs,
        /// Run the linear layers and attention in bfloat16 (f32 accumulation); see docs/bf16.md.
        #[arg(long)]
        bf16: bool,
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
    /// Classify image files (shorter side to img/0.875 bicubic, e.g. 256 for 224, center crop,
    /// ImageNet normalisation).
    /// Without --weights: the embedded default model, a small DeiT trained on the digits task
    /// (64x64 inputs, classes 0..9).
    Classify {
        #[command(flatten)]
        model: ModelArgs,
        /// Run the linear layers and attention in bfloat16 (f32 accumulation); see docs/bf16.md.
        #[arg(long)]
        bf16: bool,
        /// Weights: safetensors with timm names, or a PyTorch .pth checkpoint (absent: the
        /// embedded digits model).
        #[arg(long, value_name = "W")]
        weights: Option<PathBuf>,
        /// Class names, one per line, printed beside the indices.
        #[arg(long, value_name = "FILE")]
        labels: Option<PathBuf>,
        /// How many classes to print per image.
        #[arg(long, default_value_t = 5, value_parser = checks::at_least_one, allow_negative_numbers = true)]
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
        /// Run the linear layers and attention in bfloat16 (f32 accumulation); see docs/bf16.md.
        #[arg(long)]
        bf16: bool,
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
        #[arg(long, default_value_t = 32, value_parser = checks::at_least_one, allow_negative_numbers = true)]
        batch: usize,
        /// Untimed passes first.
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        /// Timed passes.
        #[arg(long, default_value_t = 5, value_parser = checks::at_least_one, allow_negative_numbers = true)]
        runs: usize,
    },
    /// The finetuning objective on one batch (masked idle form): prints ce, cut (summed over
    /// idle layers, before weighting) and total; optionally writes every parameter's gradient.
    Loss {
        #[command(flatten)]
        model: ModelArgs,
        /// Student weights.
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
        /// a DeiT config.
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
    },
    /// Finetune an idle model of any family on an image folder (DIR/train/<class>/*,
    /// DIR/val/<class>/*; or DIR/<class>/* for training only), with a frozen dense teacher.
    Finetune {
        #[command(flatten)]
        model: ModelArgs,
        /// Starting weights of the student (absent: seeded random weights from --init-seed,
        /// to train from scratch).
        #[arg(long, value_name = "W")]
        weights: Option<PathBuf>,
        /// Seed of the random starting weights when --weights is absent.
        #[arg(long, default_value_t = 0, conflicts_with = "weights")]
        init_seed: u64,
        /// Frozen dense teacher weights of the same family and size (default: the starting
        /// weights, if given).
        #[arg(long, value_name = "W")]
        teacher: Option<PathBuf>,
        /// The data set folder.
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// Passes over the training set.
        #[arg(long, default_value_t = 30, value_parser = checks::at_least_one, allow_negative_numbers = true)]
        epochs: usize,
        /// Images per step.
        #[arg(long, default_value_t = 64, value_parser = checks::at_least_one, allow_negative_numbers = true)]
        batch: usize,
        /// Peak learning rate.
        #[arg(long, default_value_t = 1e-5, value_parser = checks::non_negative, allow_negative_numbers = true)]
        lr: f64,
        /// Learning-rate floor (at most --lr).
        #[arg(long, default_value_t = 1e-6, value_parser = checks::non_negative, allow_negative_numbers = true)]
        min_lr: f64,
        /// Epochs of linear warm-up.
        #[arg(long, default_value_t = 0)]
        warmup_epochs: usize,
        /// Decoupled weight decay on weight matrices.
        #[arg(long, default_value_t = 0.05, value_parser = checks::non_negative, allow_negative_numbers = true)]
        weight_decay: f64,
        /// Clip the global gradient norm (> 0).
        #[arg(long, value_name = "NORM", value_parser = checks::positive, allow_negative_numbers = true)]
        clip_grad: Option<f64>,
        #[command(flatten)]
        regularisation: RegularisationArgs,
        /// Base keep rate r of the family's idle schedule (as for `loss`); or
        /// idle_layers/keep_ratios in a DeiT config; with neither, the model trains dense.
        #[arg(long, value_name = "R")]
        keep_rate: Option<f64>,
        #[command(flatten)]
        objective: ObjectiveArgs,
        /// Seed of the shuffles.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Where checkpoint.safetensors is written after every epoch.
        #[arg(long, value_name = "DIR", default_value = "finetune-out")]
        out: PathBuf,
        /// Resume from a checkpoint written by an earlier run.
        #[arg(long, value_name = "CKPT")]
        resume: Option<PathBuf>,
        /// Also write the final weights alone (no optimiser state) to this safetensors file.
        #[arg(long, value_name = "W")]
        weights_out: Option<PathBuf>,
    },
    /// Top-1 / top-5 accuracy on an image folder (DIR/<class>/*), dense or idle.
    Eval {
        #[command(flatten)]
        model: ModelArgs,
        /// Run the linear layers and attention in bfloat16 (f32 accumulation); see docs/bf16.md.
        #[arg(long)]
        bf16: bool,
        /// Weights.
        #[arg(long, value_name = "W")]
        weights: PathBuf,
        /// The data set folder.
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// Images per forward pass.
        #[arg(long, default_value_t = 32, value_parser = checks::at_least_one, allow_negative_numbers = true)]
        batch: usize,
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Write the digits task (UCI digits on cluttered 64x64 canvases, seeded) as an image
    /// folder DIR/{train,val}/<digit>/*.png for `finetune --data DIR` and `eval`.
    Digits {
        /// The folder to create.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Seed of the split, placements and clutter.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Canvases per training digit.
        #[arg(long, default_value_t = 2, value_parser = checks::at_least_one, allow_negative_numbers = true)]
        train_copies: usize,
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

/// The model `logits` and `eval` run: any zoo family from `weights`, under the token policy
/// the flags ask for (a DeiT config's own schedule lists included), in bf16 when asked.
fn zoo_model(
    model: &ModelArgs,
    policy: &PolicyArgs,
    weights: &std::path::Path,
    bf16: bool,
    strict: bool,
) -> Result<ZooModel> {
    let config = resolve_zoo_config(model.config.as_deref(), model.model.as_deref())?;
    let loaded = inference_model(&config, weights, bf16, strict)?;
    if let ZooConfig::DeiT(config) = &config {
        let token_policy = resolve_policy(config, policy.mode, policy.policy, policy.keep_rate)?;
        return Ok(loaded.with_policy(token_policy)?);
    }
    let token_policy = match policy.mode {
        Mode::Dense => {
            anyhow::ensure!(policy.keep_rate.is_none(), "--keep-rate needs --mode idle");
            TokenPolicy::Dense
        }
        Mode::Idle | Mode::Masked => {
            anyhow::ensure!(
                policy.keep_rate.is_some(),
                "--mode idle or masked on {} needs --keep-rate",
                model.model.as_deref().unwrap_or("this model")
            );
            compared_policy(&config, policy.policy, policy.keep_rate)?
        }
    };
    Ok(loaded.with_policy(token_policy)?)
}

/// A model of any family from `weights`, dense, its linear layers in bf16 when asked (DeiT
/// only).
fn inference_model(
    config: &ZooConfig,
    weights: &std::path::Path,
    bf16: bool,
    strict: bool,
) -> Result<ZooModel> {
    if let ZooConfig::DeiT(config) = config {
        let model = load_model(config, Some(weights), "weights", strict)?
            .with_precision(idlevit_cli::precision::from_flag(bf16))?;
        let model = ZooModel::DeiT(Box::new(model));
        if !bf16 {
            model.pack_for_inference();
        }
        return Ok(model);
    }
    anyhow::ensure!(
        !bf16,
        "--bf16 runs the DeiT models, not the {} model given",
        config.family()
    );
    let model = load_zoo_model(config, Some(weights), "weights", strict)?;
    model.pack_for_inference();
    Ok(model)
}

/// The idle policy a student trains under: the family's schedule at `keep_rate`, or a DeiT
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

/// The `--config` file as an input a command reads, when one was given.
fn config_input(model: &ModelArgs) -> Vec<NamedPath<'_>> {
    model
        .config
        .as_deref()
        .map(|p| NamedPath::new("--config", p))
        .into_iter()
        .collect()
}

/// Warns on stderr when `rows` of a command's output hold NaN or infinity.
fn warn_non_finite(rows: usize, total: usize, what: &str) {
    if rows > 0 {
        eprintln!(
            "warning: {rows} of {total} {what} hold NaN or infinity: the model's weights or \
             input are not finite"
        );
    }
}

fn run(cli: Cli, group: &dyn ProcessGroup) -> Result<()> {
    if let Some(threads) = cli.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
            .context("cannot start the thread pool")?;
    }
    let strict = cli.strict;
    let max_memory = cli.max_memory;
    match cli.command {
        Command::Logits {
            model,
            bf16,
            weights,
            input,
            output,
            policy,
            selected_out,
        } => {
            let mut inputs = config_input(&model);
            inputs.extend([
                NamedPath::new("--weights", &weights),
                NamedPath::new("--input", &input),
            ]);
            let mut outputs = vec![NamedPath::new("--output", &output)];
            outputs.extend(
                selected_out
                    .as_deref()
                    .map(|p| NamedPath::new("--selected-out", p)),
            );
            check_distinct(&inputs, &outputs)?;
            let mode = policy.mode;
            let images = commands::read_input(&input, strict)?;
            let config = resolve_zoo_config(model.config.as_deref(), model.model.as_deref())?;
            let batch = images.shape().first().copied().unwrap_or(0);
            check_model_memory(&config, batch, inference_use(bf16), max_memory)?;
            let model = zoo_model(&model, &policy, &weights, bf16, strict)?;
            let run = commands::logits(&model, mode == Mode::Masked, &images)?;
            warn_non_finite(
                commands::non_finite_rows(&run.logits),
                batch,
                "images' logits",
            );
            // Both files are written before either is reported, so a failure leaves no
            // claim of a file that is not there.
            commands::write_logits(&run.logits, &output)?;
            if let Some(path) = &selected_out {
                commands::write_selections(&run.selections, path)?;
            }
            println!(
                "wrote logits {:?} to {}",
                run.logits.shape(),
                output.display()
            );
            if let Some(path) = selected_out {
                println!(
                    "wrote {} layers' selections to {}",
                    run.selections.len(),
                    path.display()
                );
            }
        }
        Command::Classify {
            model,
            bf16,
            weights,
            labels,
            top,
            images,
        } => {
            let (model, labels) = match weights {
                Some(weights) => {
                    let config =
                        resolve_zoo_config(model.config.as_deref(), model.model.as_deref())?;
                    check_model_memory(&config, images.len(), inference_use(bf16), max_memory)?;
                    let labels = labels.as_deref().map(commands::read_labels).transpose()?;
                    (inference_model(&config, &weights, bf16, strict)?, labels)
                }
                None => {
                    anyhow::ensure!(
                        model.config.is_none() && model.model.is_none(),
                        "--config/--model need --weights (without both, the embedded digits \
                         model runs)"
                    );
                    let labels = match labels {
                        Some(path) => Some(commands::read_labels(&path)?),
                        None => Some(default_model::DEFAULT_LABELS.map(String::from).to_vec()),
                    };
                    let model = default_model::default_model()?
                        .with_precision(idlevit_cli::precision::from_flag(bf16))?;
                    let model = ZooModel::DeiT(Box::new(model));
                    if !bf16 {
                        model.pack_for_inference();
                    }
                    (model, labels)
                }
            };
            for prediction in commands::classify(&model, &images, top)? {
                if prediction.top.iter().any(|(_, p)| !p.is_finite()) {
                    eprintln!(
                        "warning: {} gave NaN or infinite logits; its classes mean nothing",
                        prediction.path.display()
                    );
                }
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
            bf16,
            weights,
            batch,
            warmup,
            runs,
            policy,
            keep_rate,
        } => {
            let name = model.model.clone().unwrap_or_else(|| "custom".into());
            let config = resolve_zoo_config(model.config.as_deref(), model.model.as_deref())?;
            check_model_memory(&config, batch, inference_use(bf16), max_memory)?;
            let dense = load_zoo_model(&config, weights.as_deref(), "weights", strict)?;
            dense.pack_for_inference();
            let threads = rayon::current_num_threads();
            let token_policy = compared_policy(&config, policy, keep_rate)?;
            let side = config.img_size();
            let label = format!(
                "{policy} r={}",
                keep_rate.map_or("config".into(), |r| r.to_string())
            )
            .to_lowercase();
            if bf16 {
                let ZooModel::DeiT(dense) = &dense else {
                    anyhow::bail!("--bf16 runs the DeiT models (deit_tiny, deit_small, deit_base)");
                };
                let report = idlevit_cli::precision::bench(
                    dense,
                    &token_policy,
                    &label,
                    batch,
                    warmup,
                    runs,
                )?;
                println!(
                    "{name} batch {batch} threads {threads}, bf16 kernel {}, medians of {runs} \
                     interleaved runs:",
                    idlevit_kernels::bf16_kernel_name()
                );
                report.lines().iter().for_each(|line| println!("{line}"));
                if !idlevit_kernels::bf16_expected_faster_than_f32() {
                    println!(
                        "  (on this CPU the other commands run f32 when given --bf16: its bf16 \
                         kernel is not expected to win)"
                    );
                }
            } else if token_policy == TokenPolicy::Dense {
                let report = commands::bench(&[&dense], side, batch, warmup, runs)?;
                println!(
                    "{name} dense batch {batch} threads {threads}: {:.2} images/s (median of {runs})",
                    report.images_per_second(0)
                );
                print_memory(&report);
            } else {
                let selecting = dense.clone().with_policy(token_policy.clone())?;
                let report = commands::bench(&[&dense, &selecting], side, batch, warmup, runs)?;
                let (dense_ips, policy_ips) =
                    (report.images_per_second(0), report.images_per_second(1));
                let macs_ratio = config.macs(&TokenPolicy::Dense)? / config.macs(&token_policy)?;
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
                print_memory(&report);
            }
            println!(
                "reference rows, measured elsewhere (spec section 9; PyTorch eager, fp32, 2 threads):"
            );
            for (engine, b1, b32) in commands::REFERENCE_THROUGHPUT {
                println!("  {engine:<32} batch 1 {b1:6.1}   batch 32 {b32:6.1} images/s");
            }
        }
        Command::Loss {
            model,
            weights,
            input,
            labels,
            targets,
            keep_rate,
            objective,
            teacher,
            grads_out,
        } => {
            let mut inputs = config_input(&model);
            inputs.extend([
                NamedPath::new("--weights", &weights),
                NamedPath::new("--input", &input),
            ]);
            inputs.extend(targets.as_deref().map(|p| NamedPath::new("--targets", p)));
            inputs.extend(teacher.as_deref().map(|p| NamedPath::new("--teacher", p)));
            let outputs: Vec<NamedPath> = grads_out
                .as_deref()
                .map(|p| NamedPath::new("--grads-out", p))
                .into_iter()
                .collect();
            check_distinct(&inputs, &outputs)?;
            let config = resolve_zoo_config(model.config.as_deref(), model.model.as_deref())?;
            let token_policy = training_policy(&config, keep_rate)?;
            anyhow::ensure!(
                token_policy != TokenPolicy::Dense,
                "give --keep-rate r, or idle_layers and keep_ratios in a DeiT config"
            );
            let objective = objective.objective(&config);
            if objective.distill_weight != 0.0 && teacher.is_none() {
                anyhow::bail!("--distill-weight needs --teacher");
            }
            let images = commands::read_input(&input, strict)?;
            let batch = images.shape().first().copied().unwrap_or(0);
            check_model_memory(
                &config,
                batch,
                MemoryUse::Training {
                    teacher: teacher.is_some(),
                },
                max_memory,
            )?;
            let student = load_zoo_model(&config, Some(&weights), "weights", strict)?
                .with_policy(token_policy)?;
            objective.check(&student)?;
            let teacher = teacher
                .as_deref()
                .map(|t| load_zoo_model(&config, Some(t), "teacher weights", strict))
                .transpose()?;
            let images = &images;
            let targets = match (labels, targets) {
                (Some(labels), None) => {
                    let labels = commands::parse_labels(&labels)?;
                    anyhow::ensure!(
                        labels.len() == batch,
                        "{} labels for a batch of {batch} images",
                        labels.len()
                    );
                    idlevit_train::smoothed_targets(
                        &labels,
                        student.num_classes(),
                        objective.smoothing,
                    )?
                }
                (None, Some(path)) => {
                    let file = idlevit_cli::weights::read_checkpoint(&path, "targets", strict)?;
                    let targets =
                        idlevit_cli::weights::require_tensor(&file, "targets", "targets", &path)?;
                    idlevit_train::check_targets(targets)
                        .with_context(|| format!("targets {}", path.display()))?;
                    targets.clone()
                }
                _ => anyhow::bail!("give --labels or --targets"),
            };
            let report = commands::loss(
                &student,
                teacher.as_ref(),
                images,
                &targets,
                &objective,
                grads_out.is_some(),
            )?;
            println!("ce {:.7}", report.ce);
            println!("cut {:.7}", report.cut);
            if let (Some(kl), Some(feature)) = (report.kl, report.feature) {
                println!("kl {kl:.7}");
                println!("feature {feature:.7}");
            }
            println!("total {:.7}", report.total);
            if let (Some(path), Some(grads)) = (grads_out, report.grads) {
                save_checkpoint(&grads, &path, "gradients")?;
                println!("wrote {} gradients to {}", grads.len(), path.display());
            }
        }
        Command::Finetune {
            model,
            weights,
            init_seed,
            teacher,
            data,
            epochs,
            batch,
            lr,
            min_lr,
            warmup_epochs,
            weight_decay,
            clip_grad,
            regularisation,
            keep_rate,
            objective,
            seed,
            out,
            resume,
            weights_out,
        } => {
            checks::learning_rates(lr, min_lr)?;
            let checkpoint = idlevit_cli::finetune::checkpoint_path(&out);
            let mut inputs = config_input(&model);
            inputs.extend(weights.as_deref().map(|p| NamedPath::new("--weights", p)));
            inputs.extend(teacher.as_deref().map(|p| NamedPath::new("--teacher", p)));
            // The checkpoint may be the one resumed from: it is read whole before the first
            // epoch replaces it, atomically. Any other input it replaced would be lost.
            let mut outputs = vec![NamedPath::new("--out", &checkpoint)];
            outputs.extend(
                weights_out
                    .as_deref()
                    .map(|p| NamedPath::new("--weights-out", p)),
            );
            check_distinct(&inputs, &outputs)?;
            let resumed: Vec<NamedPath> = resume
                .as_deref()
                .map(|p| NamedPath::new("--resume", p))
                .into_iter()
                .collect();
            check_distinct(&resumed, &outputs[1..])?;
            let config = resolve_zoo_config(model.config.as_deref(), model.model.as_deref())?;
            let token_policy = training_policy(&config, keep_rate)?;
            let objective = objective.objective(&config);
            objective.validate()?;
            let teacher_path = teacher.as_deref().or(weights.as_deref());
            anyhow::ensure!(
                teacher_path.is_some() || objective.distill_weight == 0.0,
                "--distill-weight needs a teacher: give --teacher or --weights"
            );
            check_model_memory(
                &config,
                batch,
                MemoryUse::Training {
                    teacher: teacher_path.is_some(),
                },
                max_memory,
            )?;
            let mut student = match &weights {
                Some(w) => load_zoo_model(&config, Some(w), "weights", strict)?,
                None => ZooModel::random(&config, init_seed)?,
            }
            .with_policy(token_policy)?;
            objective.check(&student)?;
            let teacher = teacher_path
                .map(|t| load_zoo_model(&config, Some(t), "teacher weights", strict))
                .transpose()?;
            let (train_dir, val_dir) = if data.join("train").is_dir() {
                (
                    data.join("train"),
                    data.join("val").is_dir().then(|| data.join("val")),
                )
            } else {
                (data.clone(), None)
            };
            let train = idlevit_cli::data::ImageFolder::open(&train_dir)?;
            let val = val_dir
                .as_deref()
                .map(|dir| idlevit_cli::data::ImageFolder::open_with_classes(dir, train.classes()))
                .transpose()?;
            let options = idlevit_cli::finetune::FinetuneOptions {
                epochs,
                batch,
                lr,
                min_lr,
                warmup_epochs,
                weight_decay,
                clip_grad,
                drop_path: regularisation.drop_path,
                mixup: regularisation.mixup(),
                augment: !regularisation.no_augment,
                objective,
                seed,
                out_dir: out.clone(),
                resume,
                progress: true,
            };
            let options = idlevit_cli::finetune::FinetuneOptions {
                progress: group.is_leader(),
                ..options
            };
            let report = idlevit_cli::finetune::finetune_in_group(
                &mut student,
                teacher.as_ref(),
                &train,
                val.as_ref(),
                &options,
                group,
            )?;
            if !group.is_leader() {
                return Ok(());
            }
            if group.size() > 1 {
                println!(
                    "{} ranks, global batch {}",
                    group.size(),
                    batch * group.size()
                );
            }
            println!("checkpoint: {}", checkpoint.display());
            if let Some(path) = weights_out {
                save_checkpoint(&student.to_checkpoint()?, &path, "the final weights")?;
                println!("weights: {}", path.display());
            }
            if let Some(acc) = report.validation {
                if let Some(warning) = acc.warning() {
                    eprintln!("{warning}");
                }
                println!(
                    "validation top-1 {:.2}%  top-5 {:.2}%  ({} images)",
                    100.0 * acc.top1,
                    100.0 * acc.top5,
                    acc.images
                );
            }
        }
        Command::Eval {
            model,
            bf16,
            weights,
            data,
            batch,
            policy,
        } => {
            anyhow::ensure!(
                policy.mode != Mode::Masked,
                "eval runs the dense or idle (gathered) form; use --mode idle"
            );
            let config = resolve_zoo_config(model.config.as_deref(), model.model.as_deref())?;
            check_model_memory(&config, batch, inference_use(bf16), max_memory)?;
            let model = zoo_model(&model, &policy, &weights, bf16, strict)?;
            let data = idlevit_cli::data::ImageFolder::open(&data)?;
            let acc = idlevit_cli::evaluate::evaluate_in_group(
                &model,
                &data,
                batch,
                group.is_leader(),
                group,
            )?;
            if !group.is_leader() {
                return Ok(());
            }
            if let Some(warning) = acc.warning() {
                eprintln!("{warning}");
            }
            println!(
                "top-1 {:.2}%  top-5 {:.2}%  ({} images)",
                100.0 * acc.top1,
                100.0 * acc.top5,
                acc.images
            );
        }
        Command::Digits {
            out,
            seed,
            train_copies,
        } => {
            let options = idlevit_cli::digits::DigitsOptions {
                seed,
                train_copies,
                ..Default::default()
            };
            memory::check_fits(
                &format!("--train-copies {train_copies}"),
                options.memory_estimate(),
                memory::memory_limit(max_memory),
            )?;
            let split = idlevit_cli::digits::embedded_split(&options)?;
            idlevit_cli::digits::write_image_folder(&split, &out)?;
            println!(
                "wrote {} training and {} validation canvases to {}",
                split.train.len(),
                split.val.len(),
                out.display()
            );
        }
        Command::Flops {
            model,
            policy,
            keep_rate,
        } => {
            let name = model.model.clone().unwrap_or_else(|| "custom".into());
            let config = resolve_zoo_config(model.config.as_deref(), model.model.as_deref())?;
            let dense = config.macs(&TokenPolicy::Dense)?;
            let token_policy = compared_policy(&config, policy, keep_rate)?;
            println!("{name} dense: {:.2} GMACs", dense / 1e9);
            if token_policy != TokenPolicy::Dense {
                let reduced = config.macs(&token_policy)?;
                let label = keep_rate.map_or("config schedule".into(), |r| format!("r={r}"));
                println!(
                    "{name} {policy} {label}: {:.2} GMACs ({:.3}x fewer than dense)",
                    reduced / 1e9,
                    dense / reduced
                );
            }
        }
    }
    Ok(())
}

/// Prints the peak memory of a benchmark and its resident memory before and after the timed
/// runs (equal when repeated runs do not grow the process).
fn print_memory(report: &commands::BenchReport) {
    if let Some(memory) = report.memory {
        let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
        println!(
            "memory: peak {:.1} MiB; resident {:.1} MiB after warm-up, {:.1} MiB after the runs",
            mib(memory.peak),
            mib(memory.after_warmup),
            mib(memory.after_runs)
        );
    }
}

/// Restores the default action of SIGPIPE (Rust ignores it), so that `idlevit ... | head`
/// ends quietly when the reader goes away instead of panicking on the failed write.
#[cfg(unix)]
fn quit_quietly_on_closed_pipes() {
    // SAFETY: called once at start-up, before any thread exists; SIG_DFL is always valid.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    #[cfg(unix)]
    quit_quietly_on_closed_pipes();
    let cli = Cli::parse();
    #[cfg(feature = "mpi")]
    if idlevit_cli::distributed::mpi_group::launched_by_mpi() {
        let group = match idlevit_cli::distributed::mpi_group::MpiGroup::init() {
            Ok(group) => group,
            Err(err) => {
                eprintln!("error: cannot join the MPI job: {err:#}");
                return ExitCode::FAILURE;
            }
        };
        return match run(cli, &group) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("error (rank {} of {}): {err:#}", group.rank(), group.size());
                // The other ranks may be waiting in a collective this rank will never join.
                group.abort(1)
            }
        };
    }
    match run(cli, &SingleProcess) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
