//! `cargo xtask repro`: the paper's claims, measured end to end on this machine — cost,
//! speed, accuracy on the embedded digits task, token selection — written to
//! `repro/REPORT.md` with plots. Every number in the report comes from the run that wrote
//! it, except the paper's own figures, which are labelled as such.

mod accuracy;
mod claims;
mod cost;
mod imagenet;
mod plots;
pub mod speed;
mod stats;
mod table;
mod timm;
mod tokens;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use idlevit_data::DigitsTask;
use idlevit_train::models::{default_config, task_model};
use idlevit_zoo::DeiTConfig;

pub use accuracy::{AccuracyOptions, AccuracyRun, Method, MethodResult, TaskRun};
use claims::accuracy_section;
pub use imagenet::ImagenetOptions;
pub use plots::{Chart, Series, write_chart};
pub use speed::SpeedOptions;
pub use stats::{Paired, Verdict, mean_std};
pub use table::Table;
pub use timm::{TimmRun, run_timm};

/// Everything a run does.
#[derive(Clone, Debug)]
pub struct ReproOptions {
    /// Where `REPORT.md`, the plots, the data set and the runs go.
    pub out_dir: PathBuf,
    /// Name of the setting in the report (`default`, `full`, ...).
    pub setting: String,
    /// The speed section (`None`: skipped).
    pub speed: Option<SpeedOptions>,
    /// The accuracy section.
    pub accuracy: AccuracyOptions,
    /// Validation canvases for the token statistics, and how many appear in the picture.
    pub token_images: (usize, usize),
    /// The ImageNet section, when asked for.
    pub imagenet: Option<ImagenetOptions>,
    /// A Python with torch and timm, for the timm column.
    pub python: Option<PathBuf>,
}

fn named(names: &[&str]) -> Result<Vec<(String, DeiTConfig)>> {
    names
        .iter()
        .map(|&n| Ok((n.to_string(), DeiTConfig::named(n)?)))
        .collect()
}

impl ReproOptions {
    /// The default run: under 20 minutes on 2 cores with the build; both tasks, every rate
    /// 0.9..0.5, five seeds.
    pub fn default_run(out_dir: PathBuf) -> Result<Self> {
        Ok(Self {
            out_dir,
            setting: "default".into(),
            speed: Some(SpeedOptions {
                models: named(&["deit_tiny", "deit_small"])?,
                rates: vec![0.9, 0.7, 0.5],
                batches: vec![1, 32],
                warmup: 1,
                runs: 3,
            }),
            accuracy: AccuracyOptions {
                tasks: DigitsTask::ALL.to_vec(),
                rates: cost::RATES.to_vec(),
                seeds: vec![0, 1, 2, 3, 4],
                epochs: 4,
                canvases_per_epoch: 320,
                val_limit: None,
                batch: 32,
                lr: 2e-4,
                distill_weight: 5.0,
                cut_weight: 20.0,
                speed_runs: 5,
            },
            token_images: (128, 4),
            imagenet: None,
            python: None,
        })
    }

    /// The longer run: every rate 0.9..0.5 in the speed section with more runs; ten seeds,
    /// and finetunes of eight epochs of twice as many canvases.
    pub fn full_run(out_dir: PathBuf) -> Result<Self> {
        let mut options = Self::default_run(out_dir)?;
        options.setting = "full".into();
        if let Some(speed) = &mut options.speed {
            speed.rates = cost::RATES.to_vec();
            speed.runs = 5;
            speed.warmup = 2;
        }
        options.accuracy.seeds = (0..10).collect();
        options.accuracy.epochs = 8;
        options.accuracy.canvases_per_epoch = 640;
        options.token_images = (449, 6);
        Ok(options)
    }

    /// A seconds-long setting for tests: a few canvases per class, two seeds, a narrow
    /// model for the speed section.
    pub fn tiny(out_dir: PathBuf) -> Self {
        let narrow = DeiTConfig {
            img_size: 32,
            patch_size: 8,
            embed_dim: 16,
            num_heads: 2,
            num_classes: 10,
            ..DeiTConfig::tiny()
        };
        Self {
            out_dir,
            setting: "tiny (test)".into(),
            speed: Some(SpeedOptions {
                models: vec![("narrow".into(), narrow)],
                rates: vec![0.7, 0.5],
                batches: vec![1, 4],
                warmup: 0,
                runs: 1,
            }),
            accuracy: AccuracyOptions {
                tasks: DigitsTask::ALL.to_vec(),
                rates: vec![0.7, 0.5],
                seeds: vec![0, 1],
                epochs: 1,
                canvases_per_epoch: 10,
                val_limit: Some(20),
                batch: 10,
                lr: 2e-4,
                distill_weight: 5.0,
                cut_weight: 20.0,
                speed_runs: 1,
            },
            token_images: (20, 2),
            imagenet: None,
            python: None,
        }
    }
}

/// What a run wrote.
#[derive(Clone, Debug)]
pub struct ReproOutcome {
    /// `REPORT.md`.
    pub report: PathBuf,
    /// Every table, in report order.
    pub tables: Vec<Table>,
    /// Every image written (PNG and SVG).
    pub images: Vec<PathBuf>,
    /// Wall time of the whole run, seconds.
    pub seconds: f64,
}

fn pct(v: f64) -> String {
    format!("{:.2}", 100.0 * v)
}

/// Runs every section and writes the report; `log` receives progress lines.
pub fn run(options: &ReproOptions, log: &mut dyn FnMut(String)) -> Result<ReproOutcome> {
    let started = Instant::now();
    let out = &options.out_dir;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let digits_config = default_config()?;
    let threads = rayon::current_num_threads();
    let mut md = String::new();
    let mut tables = Vec::new();
    let mut images = Vec::new();
    let mut timings = Vec::new();

    // 1. Cost.
    let section = Instant::now();
    let cost_tables = cost::cost_tables(&digits_config)?;
    md += "## 1. Cost\n\nMultiply-accumulates per image by the cost formula of `docs/algorithm.md` (patch embed, \
           every block's products, head), dense and with IdleViT's DeiT schedule (layers 4..11 \
           keep r, r^2, r^3), beside the paper's dense figures. Computed by this run, not \
           measured.\n\n";
    for t in &cost_tables {
        md += &t.markdown();
        md += "\n";
        log(t.markdown());
    }
    tables.extend(cost_tables);
    timings.push(("cost", section.elapsed().as_secs_f64()));

    // 2. Speed.
    if let Some(speed) = &options.speed {
        let section = Instant::now();
        log(format!(
            "speed: {} models x batches {:?} x rates {:?}, {} runs each ...",
            speed.models.len(),
            speed.batches,
            speed.rates,
            speed.runs
        ));
        let rows = speed::measure(speed)?;
        let timm = match &options.python {
            Some(python) => {
                let names: Vec<String> = speed.models.iter().map(|m| m.0.clone()).collect();
                match timm::run_timm(python, &names, &speed.batches, speed.runs, out) {
                    Ok(run) => Some(run),
                    Err(e) => {
                        log(format!("timm column skipped: {e:#}"));
                        None
                    }
                }
            }
            None => None,
        };
        let speed_tables =
            speed::speed_tables(&rows, timm.as_ref().map_or(&[], |t| t.rows.as_slice()));
        let _ = write!(
            md,
            "## 2. Speed\n\nImages/s on this machine ({threads} threads, f32, seeded random \
             weights), median of {} timed passes after {} warm-up, every form of a model timed \
             interleaved in one run; in brackets the speed-up over our dense model{}.\n\n",
            speed.runs,
            speed.warmup,
            match &timm {
                Some(t) => format!(
                    " and over timm's dense model ({}, same threads)",
                    t.versions
                ),
                None => " (set IDLEVIT_PYTHON to a Python with torch and timm for a timm column)"
                    .to_string(),
            }
        );
        for t in &speed_tables {
            md += &t.markdown();
            md += "\n";
            log(t.markdown());
        }
        let biggest = speed.batches.iter().copied().max().unwrap_or(1);
        let mut series = Vec::new();
        for (name, _) in &speed.models {
            for kind in speed::POLICIES {
                let points = rows
                    .iter()
                    .filter(|r| r.model == *name && r.batch == biggest)
                    .filter_map(|r| {
                        r.policy
                            .filter(|p| p.0 == kind)
                            .map(|p| (p.1, r.images_per_second / r.dense_images_per_second, 0.0))
                    })
                    .collect();
                series.push(Series {
                    name: format!("{name} {}", speed::policy_name(kind)),
                    points,
                });
            }
            let config = &speed.models.iter().find(|m| m.0 == *name).map(|m| &m.1);
            if let Some(config) = config {
                let dense_gmacs = cost::gmacs(config, idlevit_zoo::PolicyKind::Idle, None)?;
                let points = speed
                    .rates
                    .iter()
                    .map(|&r| {
                        let g = cost::gmacs(config, idlevit_zoo::PolicyKind::Idle, Some(r))?;
                        Ok((r, dense_gmacs / g, 0.0))
                    })
                    .collect::<Result<_>>()?;
                series.push(Series {
                    name: format!("{name} idle GMAC ratio"),
                    points,
                });
            }
        }
        let chart = Chart {
            title: format!("Speed-up over dense, batch {biggest}"),
            x_label: "keep rate r".into(),
            y_label: "speed-up (x)".into(),
            series,
        };
        images.extend(write_chart(&chart, &out.join("speed"))?);
        md += "![speed-up over dense](speed.png)\n\n";
        tables.extend(speed_tables);
        timings.push(("speed", section.elapsed().as_secs_f64()));
    }

    // 3. Accuracy.
    let section = Instant::now();
    let a = &options.accuracy;
    let dense_model = |task| Ok(task_model(task)?);
    let acc = accuracy::run_accuracy(&dense_model, a, out, log)?;
    let text = accuracy_section(&acc, a, &mut tables, &mut images, out, log)?;
    md += &text;
    timings.push(("accuracy", section.elapsed().as_secs_f64()));

    // 4. Token selection.
    let section = Instant::now();
    let (text, token_table, pictures) = tokens::section(&acc, a, options.token_images, out)?;
    md += &text;
    log(token_table.markdown());
    images.extend(pictures);
    tables.push(token_table);
    timings.push(("tokens", section.elapsed().as_secs_f64()));

    // 5. ImageNet.
    if let Some(imagenet) = &options.imagenet {
        let section = Instant::now();
        let table = imagenet::imagenet_table(imagenet)?;
        md += "\n## 5. ImageNet\n\nThe given checkpoint, evaluated as-is under each policy \
               (no finetuning here), beside the paper's dense figure.\n\n";
        md += &table.markdown();
        log(table.markdown());
        tables.push(table);
        timings.push(("imagenet", section.elapsed().as_secs_f64()));
    }

    let seconds = started.elapsed().as_secs_f64();
    let timing_line = timings
        .iter()
        .map(|(n, s)| format!("{n} {s:.0} s"))
        .collect::<Vec<_>>()
        .join(", ");
    let header = format!(
        "# IdleViT, reproduced on this machine\n\nWritten by `cargo xtask repro` (setting: \
         {}), {threads} threads. Wall time {seconds:.0} s ({timing_line}). Every number below \
         was produced by this run, except those marked as the paper's.\n\n",
        options.setting
    );
    let report = out.join("REPORT.md");
    idlevit_data::files::write_atomically(&report, (header + &md).as_bytes())?;
    log(format!(
        "wall time {seconds:.0} s; report: {}",
        report.display()
    ));
    Ok(ReproOutcome {
        report,
        tables,
        images,
        seconds,
    })
}
