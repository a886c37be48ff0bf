//! Cost: GMACs of every zoo model, dense and idle at r = 0.9..0.5, beside the paper.

use anyhow::Result;
use idlevit_zoo::{DeiTConfig, PolicyKind, Schedule, TokenPolicy, macs};

use super::table::{Table, cell};

/// The zoo's named models, with the paper's dense GMACs and top-1 (`docs/algorithm.md`, "Reference figures").
pub const ZOO: &[(&str, f64, f64)] = &[
    ("deit_tiny", 1.3, 72.2),
    ("deit_small", 4.6, 79.8),
    ("deit_base", 17.6, 81.8),
];

/// The keep rates of the cost and speed tables.
pub const RATES: [f64; 5] = [0.9, 0.8, 0.7, 0.6, 0.5];

/// EViT on DeiT-S as its paper reports it: `(r, top-1, GMACs)`.
pub const PAPER_EVIT_DEIT_S: [(f64, f64, f64); 2] = [(0.7, 79.5, 3.0), (0.5, 78.5, 2.3)];

/// GMACs of `config` under `kind` at base rate `rate` (DeiT schedules).
pub fn gmacs(config: &DeiTConfig, kind: PolicyKind, rate: Option<f64>) -> Result<f64> {
    let policy = match rate {
        None => TokenPolicy::Dense,
        Some(r) => {
            let schedule = match kind {
                PolicyKind::Evit => Schedule::evit_deit(r)?,
                PolicyKind::Idle | PolicyKind::Prune => Schedule::deit(r)?,
            };
            TokenPolicy::select(kind, schedule)
        }
    };
    Ok(macs(config, &policy)? / 1e9)
}

/// The cost tables: every zoo model (and the digits model) dense and idle at each rate,
/// and DeiT-S's three policies at 0.7 and 0.5 beside the EViT paper's figures.
pub fn cost_tables(digits: &DeiTConfig) -> Result<Vec<Table>> {
    let mut header = vec!["model", "paper dense", "dense"];
    let rate_names: Vec<String> = RATES.iter().map(|r| format!("idle r={r}")).collect();
    header.extend(rate_names.iter().map(String::as_str));
    let mut idle = Table::new(
        "GMACs per image, dense and IdleViT (the cost formula of docs/algorithm.md)",
        &header,
    );
    let mut models: Vec<(String, DeiTConfig, Option<f64>)> = ZOO
        .iter()
        .map(|&(name, paper, _)| Ok((name.to_string(), DeiTConfig::named(name)?, Some(paper))))
        .collect::<Result<_>>()?;
    models.push((
        "digits default (64x64, patch 8)".into(),
        digits.clone(),
        None,
    ));
    for (name, config, paper) in &models {
        let mut row = vec![
            name.clone(),
            cell(*paper, 1),
            format!("{:.3}", gmacs(config, PolicyKind::Idle, None)?),
        ];
        for r in RATES {
            row.push(format!("{:.3}", gmacs(config, PolicyKind::Idle, Some(r))?));
        }
        idle.push(row);
    }
    let mut policies = Table::new(
        "DeiT-S GMACs by policy (last column: the EViT paper, as the IdleViT paper quotes it)",
        &["r", "idle", "prune", "EViT", "EViT paper"],
    );
    let small = DeiTConfig::small();
    for (r, _, paper) in PAPER_EVIT_DEIT_S {
        policies.push(vec![
            format!("{r}"),
            format!("{:.3}", gmacs(&small, PolicyKind::Idle, Some(r))?),
            format!("{:.3}", gmacs(&small, PolicyKind::Prune, Some(r))?),
            format!("{:.3}", gmacs(&small, PolicyKind::Evit, Some(r))?),
            format!("{paper:.1}"),
        ]);
    }
    Ok(vec![idle, policies])
}
