//! timm's dense throughput on this machine, through `IDLEVIT_PYTHON` (a Python with torch
//! and timm) and `xtask/python/timm_throughput.py`. Absent or failing: no timm column.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The script, embedded so the task runs from any directory.
const SCRIPT: &str = include_str!("../../python/timm_throughput.py");

/// timm's figures: versions line and `(model, batch, images/s)`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TimmRun {
    /// `torch X timm Y`.
    pub versions: String,
    /// `(model, batch, images/s)`.
    pub rows: Vec<(String, usize, f64)>,
}

/// Runs the script with `python` for `models` at `batches`.
pub fn run_timm(
    python: &Path,
    models: &[String],
    batches: &[usize],
    runs: usize,
    scratch: &Path,
) -> Result<TimmRun> {
    let script = scratch.join("timm_throughput.py");
    std::fs::write(&script, SCRIPT)
        .with_context(|| format!("cannot write {}", script.display()))?;
    let batches: Vec<String> = batches.iter().map(usize::to_string).collect();
    let threads = rayon::current_num_threads().to_string();
    let output = Command::new(python)
        .arg(&script)
        .args(["--models", &models.join(",")])
        .args(["--batches", &batches.join(",")])
        .args(["--runs", &runs.to_string(), "--threads", &threads])
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    if !output.status.success() {
        bail!(
            "{} failed: {}",
            python.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let mut run = TimmRun::default();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("unexpected output `{line}`"))?;
        if let (Some(t), Some(m)) = (value["torch"].as_str(), value["timm"].as_str()) {
            run.versions = format!("torch {t}, timm {m}");
        } else if let (Some(model), Some(batch), Some(ips)) = (
            value["model"].as_str(),
            value["batch"].as_u64(),
            value["images_per_second"].as_f64(),
        ) {
            run.rows.push((model.to_string(), batch as usize, ips));
        }
    }
    Ok(run)
}
