//! `cargo xtask bench`: our images/s for each model, policy, keep rate and batch in one
//! markdown table, with timm's dense images/s measured in the same run (through
//! `IDLEVIT_PYTHON`) and the ratio of ours to it.

use std::path::Path;

use anyhow::Result;
use idlevit_zoo::DeiTConfig;

use crate::repro::speed::{SpeedOptions, SpeedRow, measure, policy_name};
use crate::repro::{Table, run_timm};

/// What to time.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Named DeiT models (`deit_tiny`, `deit_small`, `deit_base`).
    pub models: Vec<String>,
    /// Base keep rates of the policies (IdleViT, EViT, top-k pruning) beside dense.
    pub rates: Vec<f64>,
    /// Batch sizes.
    pub batches: Vec<usize>,
    /// Untimed passes of each form first.
    pub warmup: usize,
    /// Timed passes of each form (medians reported).
    pub runs: usize,
}

/// Times every form and, with `python`, timm's dense models in the same run; returns the
/// table and the timm versions line (empty without timm).
pub fn run(
    options: &BenchOptions,
    python: Option<&Path>,
    scratch: &Path,
) -> Result<(Table, String)> {
    let models = options
        .models
        .iter()
        .map(|name| Ok((name.clone(), DeiTConfig::named(name)?)))
        .collect::<Result<Vec<_>>>()?;
    let rows = measure(&SpeedOptions {
        models,
        rates: options.rates.clone(),
        batches: options.batches.clone(),
        warmup: options.warmup,
        runs: options.runs,
    })?;
    let timm = match python {
        Some(python) => {
            std::fs::create_dir_all(scratch)?;
            let run = run_timm(
                python,
                &options.models,
                &options.batches,
                options.runs,
                scratch,
            )?;
            (run.rows, run.versions)
        }
        None => (Vec::new(), String::new()),
    };
    Ok((bench_table(&rows, &timm.0), timm.1))
}

/// One row per model, policy, keep rate and batch: our images/s, the speed-up over our dense
/// model in the same run, timm's dense images/s and ours over it (dashes without timm).
pub fn bench_table(rows: &[SpeedRow], timm: &[(String, usize, f64)]) -> Table {
    let mut table = Table::new(
        "images/s: ours, and timm's dense model measured in the same run",
        &[
            "model",
            "policy",
            "keep rate",
            "batch",
            "ours images/s",
            "ours / our dense",
            "timm dense images/s",
            "ours / timm dense",
        ],
    );
    for row in rows {
        let timm_ips = timm
            .iter()
            .find(|(model, batch, _)| *model == row.model && *batch == row.batch)
            .map(|t| t.2);
        let (policy, rate) = match row.policy {
            None => ("dense".to_string(), "1".to_string()),
            Some((kind, rate)) => (policy_name(kind).to_string(), format!("{rate}")),
        };
        let dash = || "–".to_string();
        table.push(vec![
            row.model.clone(),
            policy,
            rate,
            row.batch.to_string(),
            format!("{:.2}", row.images_per_second),
            format!(
                "{:.3}x",
                row.images_per_second / row.dense_images_per_second
            ),
            timm_ips.map_or_else(dash, |t| format!("{t:.2}")),
            timm_ips.map_or_else(dash, |t| format!("{:.3}x", row.images_per_second / t)),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use idlevit_zoo::PolicyKind;

    #[test]
    fn rows_carry_ratios_to_our_dense_and_to_timm() {
        let row = |policy, ips| SpeedRow {
            model: "deit_small".into(),
            batch: 32,
            policy,
            images_per_second: ips,
            dense_images_per_second: 16.0,
        };
        let rows = [row(None, 16.0), row(Some((PolicyKind::Idle, 0.7)), 22.0)];
        let with_timm = bench_table(&rows, &[("deit_small".into(), 32, 15.0)]);
        assert_eq!(
            with_timm.rows[1],
            [
                "deit_small",
                "idle",
                "0.7",
                "32",
                "22.00",
                "1.375x",
                "15.00",
                "1.467x"
            ]
        );
        let without = bench_table(&rows, &[("deit_tiny".into(), 32, 40.0)]);
        assert_eq!(without.rows[0][6..], ["–", "–"]);
        assert_eq!(without.rows[0][5], "1.000x");
    }
}
