//! `idlevit flops`: multiply-accumulates per image, dense and under a policy.

use anyhow::Result;
use clap::Args;
use idlevit_zoo::{PolicyKind, TokenPolicy};

use super::Globals;
use crate::args::ModelArgs;
use crate::policy::compared_policy;

/// The arguments of `flops`.
#[derive(Args)]
pub struct Flops {
    #[command(flatten)]
    model: ModelArgs,
    /// Selection policy (idle, prune or evit).
    #[arg(long, default_value = "idle", value_name = "POLICY")]
    policy: PolicyKind,
    /// Base keep rate r; dense only when absent (unless the config lists a schedule).
    #[arg(long, value_name = "R")]
    keep_rate: Option<f64>,
}

/// Runs `flops` (counting allocates nothing, so no global flag matters).
pub fn run(args: Flops, _globals: &Globals) -> Result<()> {
    let name = args.model.name();
    let config = args.model.zoo_config()?;
    let dense = config.macs(&TokenPolicy::Dense)?;
    let token_policy = compared_policy(&config, args.policy, args.keep_rate)?;
    println!("{name} dense: {:.2} GMACs", dense / 1e9);
    if token_policy != TokenPolicy::Dense {
        let reduced = config.macs(&token_policy)?;
        let label = args
            .keep_rate
            .map_or("config schedule".into(), |r| format!("r={r}"));
        println!(
            "{name} {} {label}: {:.2} GMACs ({:.3}x fewer than dense)",
            args.policy,
            reduced / 1e9,
            dense / reduced
        );
    }
    Ok(())
}
