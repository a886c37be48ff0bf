//! Turning the CLI's `--mode`, `--policy` and `--keep-rate` (and a config's schedule lists)
//! into the token policy a model is built with.

use anyhow::{Result, bail};
use idlevit_zoo::{PolicyKind, TokenPolicy, ZooConfig};

/// `--mode`: which form of the model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Every token through every layer.
    Dense,
    /// Selection layers in their gathered, inference form.
    Idle,
    /// Idle layers in their masked, training form (all tokens kept in the tensors).
    Masked,
}

/// The policy for `mode`, `kind` and an optional base keep rate, for a model of any family.
/// A config that lists `idle_layers` and `keep_ratios` supplies the schedule itself (then
/// `keep_rate` must be absent); otherwise `keep_rate` picks the family's schedule of the
/// policy (DeiT idle and prune: layers 4..11 at r, r^2, r^3; EViT: layers 3, 6, 9 at r;
/// LV-ViT and PVT-v2: theirs, see [`ZooConfig::schedule`]).
pub fn resolve_policy(
    config: &ZooConfig,
    mode: Mode,
    kind: PolicyKind,
    keep_rate: Option<f64>,
) -> Result<TokenPolicy> {
    if mode == Mode::Dense {
        if keep_rate.is_some() {
            bail!("--keep-rate needs --mode idle or --mode masked");
        }
        return Ok(TokenPolicy::Dense);
    }
    if mode == Mode::Masked && kind != PolicyKind::Idle {
        bail!(
            "--mode masked is the training form of the idle policy; --policy {} has none (it \
             runs in its gathered form: --mode idle)",
            kind
        );
    }
    let schedule = match (config.custom_schedule()?, keep_rate) {
        (Some(_), Some(_)) => {
            bail!("the config sets idle_layers and keep_ratios; drop --keep-rate or the lists")
        }
        (Some(schedule), None) => schedule,
        (None, Some(rate)) => config.schedule(kind, rate)?,
        (None, None) => bail!("give --keep-rate r, or idle_layers and keep_ratios in the config"),
    };
    let policy = TokenPolicy::select(kind, schedule);
    config.check_policy(&policy)?;
    Ok(policy)
}

/// The policy `flops` and `bench` compare with dense, and `loss` and `finetune` train
/// under (with `kind` idle): the family's schedule of `kind` at `keep_rate`, or the
/// config's own schedule lists when no rate is given; dense when neither.
pub fn compared_policy(
    config: &ZooConfig,
    kind: PolicyKind,
    keep_rate: Option<f64>,
) -> Result<TokenPolicy> {
    if keep_rate.is_none() && config.custom_schedule()?.is_none() {
        return Ok(TokenPolicy::Dense);
    }
    resolve_policy(config, Mode::Idle, kind, keep_rate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use idlevit_zoo::{DeiTConfig, Schedule};

    #[test]
    fn resolution_rules() {
        let small = ZooConfig::DeiT(DeiTConfig::small());
        assert_eq!(
            resolve_policy(&small, Mode::Dense, PolicyKind::Idle, None).unwrap(),
            TokenPolicy::Dense
        );
        let idle = resolve_policy(&small, Mode::Idle, PolicyKind::Idle, Some(0.7)).unwrap();
        assert_eq!(
            idle,
            TokenPolicy::select(PolicyKind::Idle, Schedule::deit(0.7).unwrap())
        );
        let errors = [
            (
                Mode::Dense,
                PolicyKind::Idle,
                Some(0.7),
                "--keep-rate needs",
            ),
            (
                Mode::Masked,
                PolicyKind::Evit,
                Some(0.7),
                "--policy evit has none",
            ),
            (Mode::Idle, PolicyKind::Idle, None, "give --keep-rate"),
            (Mode::Idle, PolicyKind::Idle, Some(0.0), "outside (0, 1]"),
            (Mode::Idle, PolicyKind::Prune, Some(1.5), "outside (0, 1]"),
        ];
        for (mode, kind, rate, needle) in errors {
            let err = resolve_policy(&small, mode, kind, rate)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{err}");
        }
        let mut shallow = DeiTConfig::small();
        shallow.depth = 6;
        let six_blocks = ZooConfig::DeiT(shallow.clone());
        let err = resolve_policy(&six_blocks, Mode::Idle, PolicyKind::Idle, Some(0.7))
            .unwrap_err()
            .to_string();
        assert!(err.contains("depth 6"), "{err}");
        shallow.idle_layers = Some(vec![2, 5]);
        shallow.keep_ratios = Some(vec![0.5, 0.25]);
        let shallow = ZooConfig::DeiT(shallow);
        let custom = resolve_policy(&shallow, Mode::Masked, PolicyKind::Idle, None).unwrap();
        assert_eq!(custom.at(5), Some((PolicyKind::Idle, 0.25)));
        assert!(resolve_policy(&shallow, Mode::Idle, PolicyKind::Idle, Some(0.5)).is_err());
    }
}
