//! `cargo xtask`: project tasks.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use xtask::convert::{ConvertOptions, convert};
use xtask::repro::{ImagenetOptions, ReproOptions};

/// Project tasks for idlevit.
#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Time dense, IdleViT, EViT and top-k pruning and print one markdown table; with
    /// IDLEVIT_PYTHON naming a Python with torch and timm, timm's dense images/s measured in
    /// the same run and the ratio of ours to it.
    Bench {
        /// Named DeiT models, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "deit_small")]
        models: Vec<String>,
        /// Base keep rates, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "0.7,0.5")]
        rates: Vec<f64>,
        /// Batch sizes, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,32")]
        batches: Vec<usize>,
        /// Untimed passes of each form first.
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        /// Timed passes of each form (medians reported).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Worker threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Convert a PyTorch checkpoint (.pth, zip + pickle) to safetensors with f32 tensors
    /// (the same as `idlevit convert`). Nothing in the pickle is executed; unknown globals
    /// stay inert placeholders.
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
    /// Reproduce the paper's claims on this machine: cost, speed, accuracy on the embedded
    /// digits task, token selection; writes OUT/REPORT.md with PNG/SVG plots and prints the
    /// tables. The default run takes under 15 minutes on 2 cores.
    Repro {
        /// The longer run: every keep rate 0.9..0.5 timed, five seeds, three epochs.
        #[arg(long)]
        full: bool,
        /// Where the report, plots, data set and runs go.
        #[arg(long, default_value = "repro")]
        out: PathBuf,
        /// Skip the speed section (DeiT-T/S throughput).
        #[arg(long)]
        no_speed: bool,
        /// Also evaluate --weights on this ImageNet-style folder (DIR/<class>/*), dense and
        /// under each policy.
        #[arg(long, value_name = "DIR", requires = "weights")]
        imagenet: Option<PathBuf>,
        /// The checkpoint for --imagenet (safetensors or .pth).
        #[arg(long, value_name = "W", requires = "imagenet")]
        weights: Option<PathBuf>,
        /// The model of --weights.
        #[arg(long, default_value = "deit_small", value_name = "NAME")]
        model: String,
        /// Images per forward pass for --imagenet.
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// Worker threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
    },
}

fn bench(options: &xtask::bench::BenchOptions, threads: Option<usize>) -> anyhow::Result<()> {
    set_threads(threads)?;
    let python = std::env::var_os("IDLEVIT_PYTHON").map(PathBuf::from);
    let scratch = std::env::temp_dir().join(format!("idlevit-bench-{}", std::process::id()));
    let (table, versions) = xtask::bench::run(options, python.as_deref(), &scratch)?;
    let _ = std::fs::remove_dir_all(&scratch);
    println!(
        "{} threads, f32, seeded random weights; medians of {} runs, every form of a model \
         timed interleaved in one run{}\n",
        rayon::current_num_threads(),
        options.runs,
        if versions.is_empty() {
            " (set IDLEVIT_PYTHON to a Python with torch and timm for the timm columns)".into()
        } else {
            format!("; timm: {versions}, same threads")
        }
    );
    print!("{}", table.markdown());
    Ok(())
}

fn set_threads(threads: Option<usize>) -> anyhow::Result<()> {
    if let Some(threads) = threads {
        anyhow::ensure!(threads >= 1, "--threads must be at least 1");
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()?;
    }
    Ok(())
}

fn repro(
    full: bool,
    out: PathBuf,
    no_speed: bool,
    imagenet: Option<(PathBuf, PathBuf)>,
    model: String,
    batch: usize,
    threads: Option<usize>,
) -> anyhow::Result<()> {
    set_threads(threads)?;
    let mut options = if full {
        ReproOptions::full_run(out)?
    } else {
        ReproOptions::default_run(out)?
    };
    if no_speed {
        options.speed = None;
    }
    options.python = std::env::var_os("IDLEVIT_PYTHON").map(PathBuf::from);
    options.imagenet = imagenet.map(|(dir, weights)| ImagenetOptions {
        dir,
        weights,
        model: Some(model),
        config: None,
        rates: options.accuracy.rates.clone(),
        batch,
    });
    xtask::repro::run(&options, &mut |line| println!("{line}"))?;
    Ok(())
}

fn main() -> ExitCode {
    let Cli { task } = Cli::parse();
    let result = match task {
        Task::Bench {
            models,
            rates,
            batches,
            warmup,
            runs,
            threads,
        } => bench(
            &xtask::bench::BenchOptions {
                models,
                rates,
                batches,
                warmup,
                runs,
            },
            threads,
        ),
        Task::Repro {
            full,
            out,
            no_speed,
            imagenet,
            weights,
            model,
            batch,
            threads,
        } => repro(
            full,
            out,
            no_speed,
            imagenet.zip(weights),
            model,
            batch,
            threads,
        ),
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
        .map_err(anyhow::Error::from)
        .map(|report| println!("{}", report.summary(&output))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
