//! `idlevit flops`: multiply-accumulates per image, dense and under a policy.

use anyhow::Result;
use clap::Args;
use idlevit_zoo::{PolicyKind, TokenPolicy};

use serde_json::json;

use super::{Globals, print_json};
use crate::args::{ModelArgs, PolicyChoice};
use crate::policy::compared_policy;

/// The arguments of `flops`.
#[derive(Args)]
pub struct Flops {
    #[command(flatten)]
    model: ModelArgs,
    /// The selection policy counted beside dense.
    #[arg(long, value_enum, default_value_t = PolicyChoice::Idle)]
    policy: PolicyChoice,
    /// Base keep rate r; dense only when absent (unless the config lists a schedule).
    #[arg(long, value_name = "R")]
    keep_rate: Option<f64>,
    /// Print one JSON object on stdout instead of text (its fields: README).
    #[arg(long)]
    json: bool,
}

/// Runs `flops` (counting allocates nothing, so no global flag matters).
pub fn run(args: Flops, _globals: &Globals) -> Result<()> {
    let name = args.model.name();
    let config = args.model.zoo_config()?;
    let dense = config.macs(&TokenPolicy::Dense)?;
    let policy = PolicyKind::from(args.policy);
    let token_policy = compared_policy(&config, policy, args.keep_rate)?;
    let reduced = match token_policy {
        TokenPolicy::Dense => None,
        _ => Some(config.macs(&token_policy)?),
    };
    if args.json {
        let policy_json = reduced.map(|reduced| {
            json!({
                "policy": policy.to_string(),
                "keep_rate": args.keep_rate,
                "gmacs": reduced / 1e9,
                "dense_over_policy": dense / reduced,
            })
        });
        return print_json(&json!({
            "model": name,
            "dense_gmacs": dense / 1e9,
            "policy": policy_json,
        }));
    }
    println!("{name} dense: {:.2} GMACs", dense / 1e9);
    if let Some(reduced) = reduced {
        let label = args
            .keep_rate
            .map_or("config schedule".into(), |r| format!("r={r}"));
        println!(
            "{name} {policy} {label}: {:.2} GMACs ({:.3}x fewer than dense)",
            reduced / 1e9,
            dense / reduced
        );
    }
    Ok(())
}
