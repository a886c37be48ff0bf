//! Speed: images/s of dense, IdleViT, EViT and top-k pruning, timed interleaved in one run
//! per model and batch so that all see the same machine; ratios to dense (and to timm when
//! a Python with torch and timm is at hand).

use anyhow::Result;
use idlevit_train::bench::bench;
use idlevit_zoo::{DeiT, DeiTConfig, PolicyKind, Schedule, TokenPolicy, ZooModel};

use super::table::{Table, cell};

/// What to time.
#[derive(Clone, Debug)]
pub struct SpeedOptions {
    /// `(name, config)` of each model (seeded random weights: speed does not depend on them).
    pub models: Vec<(String, DeiTConfig)>,
    /// Base keep rates.
    pub rates: Vec<f64>,
    /// Batch sizes.
    pub batches: Vec<usize>,
    /// Untimed passes per model first.
    pub warmup: usize,
    /// Timed passes per model (median reported).
    pub runs: usize,
}

/// One timed configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct SpeedRow {
    /// Model name.
    pub model: String,
    /// Images per pass.
    pub batch: usize,
    /// `None` for dense.
    pub policy: Option<(PolicyKind, f64)>,
    /// Median images/s.
    pub images_per_second: f64,
    /// Images/s of dense in the same run.
    pub dense_images_per_second: f64,
}

/// The policy of `kind` at `rate` with the DeiT schedules (EViT at layers 3, 6, 9).
pub fn deit_policy(kind: PolicyKind, rate: f64) -> Result<TokenPolicy> {
    let schedule = match kind {
        PolicyKind::Evit => Schedule::evit_deit(rate)?,
        PolicyKind::Idle | PolicyKind::Prune => Schedule::deit(rate)?,
    };
    Ok(TokenPolicy::select(kind, schedule))
}

/// The policies compared, in table order.
pub const POLICIES: [PolicyKind; 3] = [PolicyKind::Idle, PolicyKind::Evit, PolicyKind::Prune];

/// Times every model at every batch: dense and each policy at each rate, interleaved.
pub fn measure(options: &SpeedOptions) -> Result<Vec<SpeedRow>> {
    let mut rows = Vec::new();
    for (name, config) in &options.models {
        let dense = DeiT::random(config, 0)?;
        let mut variants = vec![(None, dense.clone())];
        for kind in POLICIES {
            for &rate in &options.rates {
                let model = dense.clone().with_policy(deit_policy(kind, rate)?)?;
                variants.push((Some((kind, rate)), model));
            }
        }
        let variants: Vec<(Option<(PolicyKind, f64)>, ZooModel)> = variants
            .into_iter()
            .map(|(policy, m)| (policy, ZooModel::DeiT(Box::new(m))))
            .collect();
        let models: Vec<&ZooModel> = variants.iter().map(|(_, m)| m).collect();
        for &batch in &options.batches {
            let report = bench(
                &models,
                config.img_size,
                batch,
                options.warmup,
                options.runs,
            )?;
            let dense_ips = report.images_per_second(0);
            for (i, (policy, _)) in variants.iter().enumerate() {
                rows.push(SpeedRow {
                    model: name.clone(),
                    batch,
                    policy: *policy,
                    images_per_second: report.images_per_second(i),
                    dense_images_per_second: dense_ips,
                });
            }
        }
    }
    Ok(rows)
}

/// Short policy name.
pub fn policy_name(kind: PolicyKind) -> &'static str {
    match kind {
        PolicyKind::Idle => "idle",
        PolicyKind::Evit => "EViT",
        PolicyKind::Prune => "prune",
    }
}

/// One table per model and batch: images/s and speed-up over dense per policy and rate; a
/// timm column when `timm` has the model's figure at that batch.
pub fn speed_tables(rows: &[SpeedRow], timm: &[(String, usize, f64)]) -> Vec<Table> {
    let mut tables = Vec::new();
    let mut keys: Vec<(String, usize)> = rows.iter().map(|r| (r.model.clone(), r.batch)).collect();
    keys.dedup();
    for (model, batch) in keys {
        let group: Vec<&SpeedRow> = rows
            .iter()
            .filter(|r| r.model == model && r.batch == batch)
            .collect();
        let timm_ips = timm
            .iter()
            .find(|(m, b, _)| *m == model && *b == batch)
            .map(|t| t.2);
        let mut table = Table::new(
            &format!("{model}, batch {batch}: images/s (speed-up over our dense; over timm dense)"),
            &["r", "dense", "idle", "EViT", "prune", "timm dense"],
        );
        let dense = group
            .first()
            .map_or(f64::NAN, |r| r.dense_images_per_second);
        let mut rates: Vec<f64> = group.iter().filter_map(|r| r.policy.map(|p| p.1)).collect();
        rates.dedup();
        rates.sort_by(|a, b| b.total_cmp(a));
        rates.dedup();
        for rate in rates {
            let mut row = vec![format!("{rate}"), format!("{dense:.2}")];
            for kind in POLICIES {
                let ips = group
                    .iter()
                    .find(|r| r.policy == Some((kind, rate)))
                    .map_or(f64::NAN, |r| r.images_per_second);
                let over_timm = timm_ips.map_or(String::new(), |t| format!("; {:.2}x", ips / t));
                row.push(format!("{ips:.2} ({:.2}x{over_timm})", ips / dense));
            }
            row.push(cell(timm_ips, 2));
            table.push(row);
        }
        tables.push(table);
    }
    tables
}
