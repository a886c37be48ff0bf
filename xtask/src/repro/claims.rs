//! The report's accuracy section: per task, every method's top-1 at each rate, the paired
//! differences behind the paper's claims with their 95% intervals and verdicts, and top-1
//! against GMACs.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Result;
use idlevit_data::DigitsTask;

use super::accuracy::{AccuracyOptions, AccuracyRun, Method, TaskRun};
use super::stats::Paired;
use super::{Chart, Series, Table, pct, write_chart};

/// A claim of the paper: method `a` beats method `b`, at `rates` (`None`: every rate).
pub struct Claim {
    /// The claim in words.
    pub what: &'static str,
    /// The method claimed better.
    pub a: Method,
    /// The method claimed worse.
    pub b: Method,
    /// Only at this rate (the lowest run when it was not run), or at every rate.
    pub only_at: Option<f64>,
}

/// The three claims the accuracy section decides.
pub const CLAIMS: [Claim; 3] = [
    Claim {
        what: "the cut loss helps",
        a: Method::IdleCut,
        b: Method::IdleNoCut,
        only_at: None,
    },
    Claim {
        what: "idling beats pruning at the same keep rate",
        a: Method::IdleCut,
        b: Method::Prune,
        only_at: None,
    },
    Claim {
        what: "idling beats EViT at r = 0.5",
        a: Method::IdleCut,
        b: Method::Evit,
        only_at: Some(0.5),
    },
];

/// What the task is for, in the report.
fn purpose(task: DigitsTask) -> &'static str {
    match task {
        DigitsTask::Digit => {
            "one UCI digit, 18..26 px, at a random place on a cluttered 64x64 canvas; the \
             label is the digit. Most patches are background, as in natural images: the task \
             asks whether a method keeps accuracy while computing fewer tokens."
        }
        DigitsTask::LargerDigit => {
            "two UCI digits, 14..18 px, in opposite halves of a cluttered 64x64 canvas; the \
             label is the larger of the two. The answer depends on both digits, which lie \
             apart, so a selection that loses either one in an early layer often loses the \
             answer: the task stresses selection. Pruning loses such tokens for good, while an idled token can \
             be picked again by a later layer."
        }
    }
}

/// The rates a claim is decided at.
fn claim_rates(claim: &Claim, rates: &[f64]) -> Vec<f64> {
    match claim.only_at {
        None => rates.to_vec(),
        Some(r) if rates.contains(&r) => vec![r],
        Some(_) => rates
            .iter()
            .copied()
            .min_by(f64::total_cmp)
            .into_iter()
            .collect(),
    }
}

/// The paired comparison of `claim` on `run` at `rate`, when both methods ran.
pub fn compare(run: &TaskRun, claim: &Claim, rate: f64) -> Option<Paired> {
    let (a, b) = (run.find(claim.a, rate)?, run.find(claim.b, rate)?);
    Some(Paired::new(&a.finetuned, &b.finetuned))
}

fn results_table(run: &TaskRun, acc: &AccuracyRun) -> Table {
    let mut table = Table::new(
        &format!(
            "{}: top-1 (%) on {} validation canvases",
            run.task.name(),
            run.val_images
        ),
        &[
            "method",
            "r",
            "GMACs",
            "images/s",
            "before finetuning",
            "finetuned mean ± std",
            "per seed",
        ],
    );
    table.push(vec![
        "dense".into(),
        "1".into(),
        format!("{:.4}", acc.dense_gmacs),
        format!("{:.1}", acc.dense_images_per_second),
        pct(run.dense_top1),
        "–".into(),
        "–".into(),
    ]);
    for r in &run.results {
        let (m, s) = r.mean_std();
        table.push(vec![
            r.method.name().into(),
            format!("{}", r.rate),
            format!("{:.4}", r.gmacs),
            format!("{:.1}", r.images_per_second),
            pct(r.off_the_shelf),
            format!("{} ± {}", pct(m), pct(s)),
            r.finetuned
                .iter()
                .map(|f| pct(f.1))
                .collect::<Vec<_>>()
                .join(", "),
        ]);
    }
    table
}

fn claims_table(run: &TaskRun, rates: &[f64]) -> Table {
    let mut table = Table::new(
        &format!(
            "{}: paired differences over seeds (points of top-1), 95% intervals",
            run.task.name()
        ),
        &["claim", "r", "A − B", "seeds", "95% interval", "verdict"],
    );
    for claim in &CLAIMS {
        for rate in claim_rates(claim, rates) {
            if let Some(p) = compare(run, claim, rate) {
                let (low, high) = p.interval();
                table.push(vec![
                    format!(
                        "{} (A: {}, B: {})",
                        claim.what,
                        claim.a.name(),
                        claim.b.name()
                    ),
                    format!("{rate}"),
                    format!("{:+.2}", 100.0 * p.mean),
                    p.seeds.to_string(),
                    format!("[{:+.2}, {:+.2}]", 100.0 * low, 100.0 * high),
                    p.verdict().words().into(),
                ]);
            }
        }
    }
    table
}

/// One line per claim and task: the verdict at each rate.
fn verdict_lines(acc: &AccuracyRun, rates: &[f64]) -> String {
    let mut out = String::new();
    for claim in &CLAIMS {
        for run in &acc.tasks {
            let per_rate: Vec<String> = claim_rates(claim, rates)
                .into_iter()
                .filter_map(|rate| {
                    let p = compare(run, claim, rate)?;
                    let (low, high) = p.interval();
                    Some(format!(
                        "r={rate}: **{}** ({:+.2} points, 95% [{:+.2}, {:+.2}])",
                        p.verdict().words(),
                        100.0 * p.mean,
                        100.0 * low,
                        100.0 * high
                    ))
                })
                .collect();
            let _ = writeln!(
                out,
                "- *{}* on {}: {}.",
                capitalised(claim.what),
                run.task.name(),
                per_rate.join("; ")
            );
        }
    }
    out
}

fn capitalised(s: &str) -> String {
    let mut chars = s.chars();
    chars.next().map_or_else(String::new, |c| {
        c.to_uppercase().collect::<String>() + chars.as_str()
    })
}

fn gmacs_chart(run: &TaskRun, acc: &AccuracyRun) -> Chart {
    let series = Method::ALL
        .iter()
        .map(|&method| Series {
            name: method.name().into(),
            points: run
                .results
                .iter()
                .filter(|r| r.method == method)
                .map(|r| {
                    let (m, s) = r.mean_std();
                    (r.gmacs, 100.0 * m, 100.0 * s)
                })
                .collect(),
        })
        .chain([Series {
            name: "dense".into(),
            points: vec![(acc.dense_gmacs, 100.0 * run.dense_top1, 0.0)],
        }])
        .collect();
    Chart {
        title: format!("{}: top-1 vs cost", run.task.name()),
        x_label: "GMACs per image".into(),
        y_label: "top-1 (%), mean ± std over seeds".into(),
        series,
    }
}

/// The accuracy section's markdown; its tables and charts are added to `tables` and
/// `images`, and each table reaches `log`.
pub fn accuracy_section(
    acc: &AccuracyRun,
    options: &AccuracyOptions,
    tables: &mut Vec<Table>,
    images: &mut Vec<PathBuf>,
    out: &Path,
    log: &mut dyn FnMut(String),
) -> Result<String> {
    let o = options;
    let mut md = String::new();
    let _ = write!(
        md,
        "## 3. Accuracy on the digits tasks\n\nEach task's dense model (DeiT, width 64, depth \
         12, 4 heads, patch 8, embedded in idlevit) is the start and the teacher of every \
         finetune. Recipe, the same for every method: {} epochs of {} training canvases each, \
         drawn afresh every epoch from the training digits; batch {}; AdamW, lr {:.0e} cosine \
         to 1e-6, weight decay 0.05, gradient norm clipped at 5; distillation weight {} (KL + \
         100 x the feature term); label smoothing 0.1; the cut loss (both terms, weight {}) \
         only for IdleViT + cut loss; no augmentation, mixup or drop path. Seeds {:?}: a seed \
         fixes the canvases and their order, the same for every method, so methods are \
         compared seed by seed. Validation: the task's fixed canvases of held-out digits. \
         Throughput: each policy's inference form at batch 64 on this machine.\n\n\
         A claim **holds** when the 95% interval of its paired difference (Student's t over \
         the seeds) lies above zero, **fails** when it lies below, and is **unresolved** \
         when it contains zero.\n\n### Verdicts\n\n",
        o.epochs, acc.train_images, o.batch, o.lr, o.distill_weight, o.cut_weight, o.seeds
    );
    let verdicts = verdict_lines(acc, &o.rates);
    md += &verdicts;
    log(verdicts);
    for (i, run) in acc.tasks.iter().enumerate() {
        let _ = write!(
            md,
            "\n### 3.{} Task: {}\n\n{}\n\nDense top-1: **{}%**.\n\n",
            i + 1,
            run.task.name(),
            capitalised(purpose(run.task)),
            pct(run.dense_top1)
        );
        let results = results_table(run, acc);
        let claims = claims_table(run, &o.rates);
        for table in [results, claims] {
            md += &table.markdown();
            md += "\n";
            log(table.markdown());
            tables.push(table);
        }
        let stem = format!("accuracy_vs_gmacs_{}", run.task.name());
        images.extend(write_chart(&gmacs_chart(run, acc), &out.join(&stem))?);
        let _ = write!(md, "![{} top-1 vs GMACs]({stem}.png)\n\n", run.task.name());
    }
    Ok(md)
}
