//! `idlevit flops`: multiply-accumulates per image, dense and under a policy.

use anyhow::Result;
use clap::Args;
use idlevit_zoo::{PolicyKind, TokenPolicy};

use super::Globals;
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
}

/// Runs `flops` (counting allocates nothing, so no global flag matters).
pub fn run(args: Flops, _globals: &Globals) -> Result<()> {
    let name = args.model.name();
    let config = args.model.zoo_config()?;
    let dense = config.macs(&TokenPolicy::Dense)?;
    let policy = PolicyKind::from(args.policy);
    let token_policy = compared_policy(&config, policy, args.keep_rate)?;
    println!("{name} dense: {:.2} GMACs", dense / 1e9);
    if token_policy != TokenPolicy::Dense {
        let reduced = config.macs(&token_policy)?;
        let label = args
            .keep_rate
            .map_or("config schedule".into(), |r| format!("r={r}"));
        println!(
            "{name} {} {label}: {:.2} GMACs ({:.3}x fewer than dense)",
            policy,
            reduced / 1e9,
            dense / reduced
        );
    }
    Ok(())
}
