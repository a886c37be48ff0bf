//! `idlevit`: run Vision Transformers on CPU from the command line.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use idlevit_cli::{checks, cmd};
use idlevit_train::distributed::{ProcessGroup, SingleProcess};

/// Vision Transformers on CPU, made cheaper by token idling (IdleViT): logits, image
/// classification, benchmarks, cost counts, finetuning and evaluation of DeiT, ViT, LV-ViT
/// and PVT-v2 models.
#[derive(Parser)]
#[command(name = "idlevit", version, long_about = None)]
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

#[derive(Subcommand)]
enum Command {
    /// A model's logits on a tensor of images, dense or under a token policy.
    ///
    /// Reads tensor `input` (B,3,H,W) of a safetensors or .pth file; writes tensor `logits`,
    /// and optionally the tokens each selection layer chose.
    Logits(cmd::logits::Logits),
    /// The top classes of image files.
    ///
    /// Classes are named by --labels or, for 1000-class models, by ImageNet's names. Images
    /// are prepared as a hub snapshot's config says, else shorter side to img/0.875 (bicubic,
    /// e.g. 256 for 224), center crop, ImageNet normalisation. Without --weights: the
    /// embedded default model, a small DeiT trained on the digits task (64x64 inputs, classes
    /// 0..9). A file that cannot be read is named, the others are classified, and the command
    /// fails at the end.
    Classify(cmd::classify::Classify),
    /// Images per second, dense against a token policy, or f32 against bf16.
    ///
    /// Medians over timed runs after warm-up; with --keep-rate, the policy's model and the
    /// dense model are timed interleaved in the same run and compared (with --bf16, f32 and
    /// bf16 likewise).
    Bench(cmd::bench::Bench),
    /// The finetuning objective on one batch, and optionally every parameter's gradient.
    ///
    /// Runs the masked idle form; prints ce, cut (summed over idle layers, before weighting)
    /// and total.
    Loss(cmd::loss::Loss),
    /// Finetune an idle model of any family on an image folder.
    ///
    /// DIR/train/<class>/* and DIR/val/<class>/* (or DIR/<class>/* for training only),
    /// optionally distilled from a frozen dense teacher.
    Finetune(cmd::finetune::Finetune),
    /// Top-1 / top-5 accuracy on an image folder (DIR/<class>/*), dense or idle.
    Eval(cmd::eval::Eval),
    /// Write a digits task as an image folder.
    ///
    /// UCI digits on cluttered 64x64 canvases, seeded, as DIR/{train,val}/<label>/*.png for
    /// `finetune --data DIR` and `eval` (with --task larger-digit, two digits per canvas
    /// labelled by the larger of the two). `finetune --task` and `eval --task` use the tasks
    /// without writing them, drawing new training canvases every epoch.
    Digits(cmd::digits::Digits),
    /// Multiply-accumulates per image (GMACs), dense and under a token policy.
    ///
    /// Counted as the paper counts them (docs/algorithm.md, "Cost").
    Flops(cmd::flops::Flops),
    /// Convert a PyTorch checkpoint's weights to safetensors (f32).
    ///
    /// Nothing in the pickle is executed: unknown globals stay inert and are named (refused
    /// with --strict).
    Convert(cmd::convert::Convert),
    /// Print a shell completion script.
    ///
    /// For example `idlevit completions bash >
    /// ~/.local/share/bash-completion/completions/idlevit`.
    Completions {
        /// The shell the script is for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Starts the thread pool `--threads` asks for, then runs the command as a member of `group`.
fn dispatch(cli: Cli, group: &dyn ProcessGroup) -> Result<()> {
    if let Some(threads) = cli.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
            .context("cannot start the thread pool")?;
    }
    let globals = cmd::Globals {
        strict: cli.strict,
        max_memory: cli.max_memory,
        group,
    };
    match cli.command {
        Command::Logits(args) => cmd::logits::run(args, &globals),
        Command::Classify(args) => cmd::classify::run(args, &globals),
        Command::Bench(args) => cmd::bench::run(args, &globals),
        Command::Loss(args) => cmd::loss::run(args, &globals),
        Command::Finetune(args) => cmd::finetune::run(args, &globals),
        Command::Eval(args) => cmd::eval::run(args, &globals),
        Command::Digits(args) => cmd::digits::run(args, &globals),
        Command::Flops(args) => cmd::flops::run(args, &globals),
        Command::Convert(args) => cmd::convert::run(args, &globals),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "idlevit",
                &mut std::io::stdout(),
            );
            Ok(())
        }
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
    if idlevit_train::distributed::mpi_group::launched_by_mpi() {
        let group = match idlevit_train::distributed::mpi_group::MpiGroup::init() {
            Ok(group) => group,
            Err(err) => {
                eprintln!("error: cannot join the MPI job: {err:#}");
                return ExitCode::FAILURE;
            }
        };
        return match dispatch(cli, &group) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("error (rank {} of {}): {err:#}", group.rank(), group.size());
                // The other ranks may be waiting in a collective this rank will never join.
                group.abort(1)
            }
        };
    }
    match dispatch(cli, &SingleProcess) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
