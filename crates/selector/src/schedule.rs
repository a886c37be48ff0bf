//! Which layers idle and how many tokens each keeps.

use crate::{Result, SelectorError};

/// Idle layers (block indices, ascending) and the keep ratio of each.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    idle_layers: Vec<usize>,
    keep_ratios: Vec<f64>,
}

/// `r^k` by repeated multiplication in f64, as the reference computes it (so that
/// `floor(196 * 0.7^2)` is 96, not 97).
fn power(rate: f64, k: usize) -> f64 {
    (1..k).fold(rate, |acc, _| acc * rate)
}

fn check_ratio(ratio: f64) -> Result<()> {
    if ratio > 0.0 && ratio <= 1.0 {
        Ok(())
    } else {
        Err(SelectorError::KeepRatio(ratio))
    }
}

/// Tokens an idle layer keeps: `floor(tokens * ratio)` in f64, at least 1.
pub fn keep_count(tokens: usize, ratio: f64) -> Result<usize> {
    check_ratio(ratio)?;
    let kept = (tokens as f64 * ratio).floor() as usize;
    if kept == 0 {
        return Err(SelectorError::NothingKept { ratio, tokens });
    }
    Ok(kept)
}

/// Tokens an EViT layer keeps of the `tokens` present: `ceil(tokens * rate)` in f64.
pub fn evit_keep_count(tokens: usize, rate: f64) -> Result<usize> {
    check_ratio(rate)?;
    Ok(((tokens as f64 * rate).ceil() as usize).min(tokens))
}

impl Schedule {
    /// A schedule from explicit lists; they must have equal lengths, ascending distinct layers
    /// and ratios in (0, 1].
    pub fn new(idle_layers: Vec<usize>, keep_ratios: Vec<f64>) -> Result<Self> {
        if idle_layers.len() != keep_ratios.len() {
            return Err(SelectorError::Schedule(format!(
                "{} idle layers but {} keep ratios; give one ratio per idle layer",
                idle_layers.len(),
                keep_ratios.len()
            )));
        }
        if idle_layers.windows(2).any(|w| w[0] >= w[1]) {
            return Err(SelectorError::Schedule(format!(
                "idle layers {idle_layers:?} must be strictly ascending"
            )));
        }
        keep_ratios.iter().try_for_each(|&r| check_ratio(r))?;
        Ok(Self {
            idle_layers,
            keep_ratios,
        })
    }

    /// Three stages of layers at ratios `r`, `r^2`, `r^3` (the release's schedules).
    fn staged(rate: f64, stages: [&[usize]; 3]) -> Result<Self> {
        check_ratio(rate)?;
        let (mut layers, mut ratios) = (Vec::new(), Vec::new());
        for (k, stage) in stages.iter().enumerate() {
            layers.extend_from_slice(stage);
            ratios.extend(std::iter::repeat_n(power(rate, k + 1), stage.len()));
        }
        Self::new(layers, ratios)
    }

    /// DeiT-T/S/B: layers 4..11 at `r, r, r, r^2, r^2, r^2, r^3, r^3`.
    pub fn deit(rate: f64) -> Result<Self> {
        Self::staged(rate, [&[4, 5, 6], &[7, 8, 9], &[10, 11]])
    }

    /// LV-ViT-S: layers 4..15 at `r` x4, `r^2` x4, `r^3` x4.
    pub fn lvvit_s(rate: f64) -> Result<Self> {
        Self::staged(rate, [&[4, 5, 6, 7], &[8, 9, 10, 11], &[12, 13, 14, 15]])
    }

    /// LV-ViT-M: layers 5..19 at `r` x5, `r^2` x5, `r^3` x5.
    pub fn lvvit_m(rate: f64) -> Result<Self> {
        Self::staged(
            rate,
            [
                &[5, 6, 7, 8, 9],
                &[10, 11, 12, 13, 14],
                &[15, 16, 17, 18, 19],
            ],
        )
    }

    /// A pyramid of stages with `depths` blocks (PVT-v2, four stages): every block of stages
    /// 2, 3 and 4 idles, keeping `r`, `r^2` and `r^3` of its stage's tokens (the release's
    /// three-stage schedule, one pyramid stage per schedule stage). Stage 1 never idles: its
    /// grid is what the later stages downsample.
    pub fn pyramid(rate: f64, depths: &[usize]) -> Result<Self> {
        let &[first, second, third, fourth] = depths else {
            return Err(SelectorError::Schedule(format!(
                "the PVT idle schedule needs 4 stages, found {}",
                depths.len()
            )));
        };
        let layers = |start: usize, count: usize| (start..start + count).collect::<Vec<_>>();
        let (s2, s3) = (first + second, first + second + third);
        Self::staged(
            rate,
            [
                &layers(first, second),
                &layers(s2, third),
                &layers(s3, fourth),
            ],
        )
    }

    /// EViT on DeiT: layers 3, 6 and 9, each keeping `ceil(r n)` of the `n` tokens present.
    pub fn evit_deit(rate: f64) -> Result<Self> {
        Self::new(vec![3, 6, 9], vec![rate; 3])
    }

    /// The idle layers, ascending.
    pub fn idle_layers(&self) -> &[usize] {
        &self.idle_layers
    }

    /// The keep ratio of each idle layer.
    pub fn keep_ratios(&self) -> &[f64] {
        &self.keep_ratios
    }

    /// The keep ratio of `layer`, if it is an idle layer.
    pub fn ratio_at(&self, layer: usize) -> Option<f64> {
        self.idle_layers
            .iter()
            .position(|&l| l == layer)
            .map(|i| self.keep_ratios[i])
    }

    /// Checks the schedule against a model of `depth` blocks and `tokens` image tokens:
    /// every layer exists and every layer keeps at least one token.
    pub fn validate(&self, depth: usize, tokens: usize) -> Result<()> {
        if let Some(&bad) = self.idle_layers.iter().find(|&&l| l >= depth) {
            return Err(SelectorError::Schedule(format!(
                "idle layer {bad} does not exist in a model of depth {depth} (layers are 0..{})",
                depth.saturating_sub(1)
            )));
        }
        for (&layer, &ratio) in self.idle_layers.iter().zip(&self.keep_ratios) {
            keep_count(tokens, ratio).map_err(|e| match e {
                SelectorError::NothingKept { .. } => {
                    SelectorError::Schedule(format!("idle layer {layer}: {e}"))
                }
                e => e,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PolicyKind;

    #[test]
    fn keep_counts_match_the_spec_test_vector() {
        let expected = [
            (0.9, [176, 158, 142]),
            (0.8, [156, 125, 100]),
            (0.7, [137, 96, 67]),
            (0.6, [117, 70, 42]),
            (0.5, [98, 49, 24]),
        ];
        for (rate, counts) in expected {
            let schedule = Schedule::deit(rate).unwrap();
            let got: Vec<usize> = [0, 3, 6]
                .iter()
                .map(|&i| keep_count(196, schedule.keep_ratios()[i]).unwrap())
                .collect();
            assert_eq!(got, counts, "rate {rate}");
        }
    }

    #[test]
    fn bad_schedules_are_refused_with_reasons() {
        for ratio in [0.0, -0.5, 1.5, f64::NAN] {
            assert!(
                Schedule::deit(ratio)
                    .unwrap_err()
                    .to_string()
                    .contains("outside (0, 1]")
            );
        }
        let err = Schedule::new(vec![1, 2], vec![0.5])
            .unwrap_err()
            .to_string();
        assert!(err.contains("2 idle layers but 1 keep ratios"), "{err}");
        assert!(Schedule::new(vec![2, 1], vec![0.5, 0.5]).is_err());
        let err = Schedule::deit(0.7)
            .unwrap()
            .validate(6, 196)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("idle layer 6 does not exist in a model of depth 6"),
            "{err}"
        );
        let err = Schedule::deit(0.5)
            .unwrap()
            .validate(12, 4)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("idle layer 10: keep ratio 0.125 keeps no token of 4"),
            "{err}"
        );
        assert_eq!(Schedule::lvvit_m(0.5).unwrap().idle_layers().len(), 15);
        assert_eq!(evit_keep_count(196, 0.7).unwrap(), 138);
        let names: Vec<String> = [PolicyKind::Idle, PolicyKind::Prune, PolicyKind::Evit]
            .iter()
            .map(|k| k.to_string())
            .collect();
        assert_eq!(names, ["idle", "prune", "evit"]);
        for name in &names {
            assert_eq!(name.parse::<PolicyKind>().unwrap().to_string(), *name);
        }
    }
}
