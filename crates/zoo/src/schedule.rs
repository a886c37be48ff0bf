//! The release's token schedules for a model of any family, checked so that an error about a
//! keep rate too small quotes the rate the user gave.

use idlevit_selector::{PolicyKind, Schedule, SelectorError, TokenPolicy, keep_count};

use crate::error::bail;
use crate::{Result, ZooConfig, ZooError};

impl ZooConfig {
    /// The release's schedule of `kind` at base rate `rate` for this model: the DeiT and
    /// LV-ViT idle schedules (`docs/algorithm.md`, "Keep schedules"; pruning shares them), EViT's layers 3, 6, 9;
    /// PVT-v2's stages 2-4 (idle only).
    /// The model must have the schedule's layers, and every idle and pruning layer must keep
    /// at least one token: an error names the keep rate given, the layer, and the ratio the
    /// rate compounds to there.
    pub fn schedule(&self, kind: PolicyKind, rate: f64) -> Result<Schedule> {
        let schedule = match (self, kind) {
            (Self::Pvt(c), PolicyKind::Idle) => c.idle_schedule(rate)?,
            (Self::Pvt(_), kind) => bail!("{}", crate::pvt::policy_refusal(kind)),
            (_, PolicyKind::Evit) => Schedule::evit_deit(rate)?,
            (Self::DeiT(_), _) => Schedule::deit(rate)?,
            (Self::LvVit(c), _) => c.idle_schedule(rate)?,
        };
        if let Some(&last) = schedule.idle_layers().last()
            && last >= self.depth()
        {
            bail!(
                "the {kind} schedule of a keep rate uses layers {:?}, but the model has depth \
                 {}; set idle_layers and keep_ratios in the config",
                schedule.idle_layers(),
                self.depth()
            );
        }
        if kind == PolicyKind::Evit {
            // EViT keeps ceil(r n) tokens, never none.
            return Ok(schedule);
        }
        for (&layer, &ratio) in schedule.idle_layers().iter().zip(schedule.keep_ratios()) {
            let (tokens, place) = match self {
                Self::Pvt(c) => {
                    let stage = c.stage_of(layer).map_or(0, |(stage, _)| stage);
                    (c.stage_tokens(stage), format!("in stage {}", stage + 1))
                }
                _ => (self.num_patches(), format!("at layer {layer}")),
            };
            match keep_count(tokens, ratio) {
                Err(SelectorError::NothingKept { .. }) => {
                    return Err(ZooError::Config(nothing_kept(rate, ratio, tokens, &place)));
                }
                other => other?,
            };
        }
        Ok(schedule)
    }
}

impl ZooConfig {
    /// Checks `policy` against this model: its layers exist and keep a token each, and
    /// its kind runs on the family (PVT-v2: idle only, outside stage 1).
    pub fn check_policy(&self, policy: &TokenPolicy) -> Result<()> {
        match (self, policy) {
            (_, TokenPolicy::Dense) => Ok(()),
            (Self::Pvt(c), TokenPolicy::Select { kind, schedule }) => {
                if *kind != PolicyKind::Idle {
                    bail!("{}", crate::pvt::policy_refusal(*kind));
                }
                c.validate_schedule(schedule)
            }
            (config, policy) => Ok(policy.validate(config.depth(), config.num_patches())?),
        }
    }
}

/// The error for keep rate `rate` compounding to `ratio` where `tokens` tokens are (`place`,
/// "at layer 10" or "in stage 4"), which keeps none of them.
fn nothing_kept(rate: f64, ratio: f64, tokens: usize, place: &str) -> String {
    // The release's schedules compound the rate per stage: ratio = rate^k.
    let power = if ratio == rate || !(rate > 0.0 && rate < 1.0) {
        String::new()
    } else {
        let k = (ratio.ln() / rate.ln()).round();
        format!(" ({rate}^{k} = {} of them)", short_number(ratio))
    };
    format!("keep rate {rate} keeps no token of the {tokens} {place}{power}; raise the keep rate")
}

/// `x` with at most four significant decimals, for messages (0.7^3 prints 0.343, not
/// 0.34299999999999997).
fn short_number(x: f64) -> String {
    if x >= 1e-3 {
        let fixed = format!("{x:.4}");
        fixed
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    } else {
        let scientific = format!("{x:.3e}");
        let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
        let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
        format!("{mantissa}e{exponent}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PvtConfig;

    /// A keep rate too small for a layer is reported in the user's words: the rate given,
    /// where, and what it compounds to there.
    #[test]
    fn keep_rate_errors_quote_the_rate_given() {
        // At 64 x 64 pixels the stages' grids are 16, 8, 4 and 2 tokens wide.
        let pvt = ZooConfig::Pvt(PvtConfig {
            img_size: 64,
            ..PvtConfig::b0()
        });
        let err = pvt.schedule(PolicyKind::Idle, 0.5).unwrap_err().to_string();
        assert!(
            err.contains(
                "keep rate 0.5 keeps no token of the 4 in stage 4 (0.5^3 = 0.125 of them); \
                 raise the keep rate"
            ),
            "{err}"
        );
        let deit = ZooConfig::named("deit_small").unwrap();
        let err = deit
            .schedule(PolicyKind::Prune, 0.004)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("keep rate 0.004 keeps no token of the 196 at layer 4;"),
            "{err}"
        );
        let err = deit
            .schedule(PolicyKind::Idle, 0.01)
            .unwrap_err()
            .to_string();
        assert!(err.contains("at layer 7 (0.01^2 = 1e-4 of them)"), "{err}");
        let err = deit
            .schedule(PolicyKind::Idle, 0.1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("at layer 10 (0.1^3 = 0.001 of them)"), "{err}");
        assert!(deit.schedule(PolicyKind::Evit, 0.01).is_ok());
        assert!(pvt.schedule(PolicyKind::Idle, 0.7).is_ok());
    }
}
