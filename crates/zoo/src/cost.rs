//! Multiply-accumulate counts of the zoo's models under a token policy (the blocks by the
//! formula of `docs/algorithm.md`, "Cost").
//!
//! Counted: every matrix product (projections, attention scores and mixing, MLP, patch embed,
//! head). Not counted: norms, softmax, GELU, additions, gathers — as in the paper's figures.

use idlevit_selector::{PolicyKind, TokenPolicy, evit_keep_count, keep_count};

use crate::{DeiTConfig, LvVitConfig, PvtConfig, Result};

/// MACs of one dense block over `tokens` tokens: `4 T C^2 + 2 T hidden C + 2 T^2 C`.
fn dense_block(tokens: f64, c: f64, hidden: f64) -> f64 {
    4.0 * tokens * c * c + 2.0 * tokens * hidden * c + 2.0 * tokens * tokens * c
}

/// MACs of a gathered selection layer with `tokens` present that computes `kept` of them
/// (CLS included): keys for all, the CLS query, the scores, then q, v, proj, attention and
/// MLP on the kept rows.
fn selecting_block(tokens: f64, kept: f64, c: f64, hidden: f64) -> f64 {
    tokens * c * c
        + c * c
        + tokens * c
        + 3.0 * kept * c * c
        + 2.0 * kept * kept * c
        + 2.0 * kept * hidden * c
}

/// Total MACs of one image through `config` under `policy`.
pub fn macs(config: &DeiTConfig, policy: &TokenPolicy) -> Result<f64> {
    config.validate()?;
    policy.validate(config.depth, config.num_patches())?;
    let n = config.num_patches();
    let (c, hidden) = (config.embed_dim, config.mlp_hidden());
    let patch = config.patch_size as f64;
    let embed_and_head =
        n as f64 * c as f64 * 3.0 * patch * patch + (c * config.num_classes) as f64;
    Ok(embed_and_head + blocks(n, c, hidden, config.depth, policy)?.0)
}

/// Total MACs of one image through an LV-ViT under `policy`: the stem's three convolutions
/// at half resolution, the patch convolution, the blocks, the head on CLS and the aux head
/// on every other token present at the end.
pub fn lvvit_macs(config: &LvVitConfig, policy: &TokenPolicy) -> Result<f64> {
    config.validate()?;
    policy.validate(config.depth, config.num_patches())?;
    let n = config.num_patches();
    let (c, s) = (config.embed_dim as f64, config.stem_channels as f64);
    let half = (config.img_size / 2) as f64;
    let k = (config.patch_size / 2) as f64;
    let stem = half * half * (3.0 * s * 49.0 + 2.0 * s * s * 9.0);
    let proj = n as f64 * s * k * k * c;
    let (body, tokens) = blocks(
        n,
        config.embed_dim,
        config.mlp_hidden(),
        config.depth,
        policy,
    )?;
    let heads = tokens as f64 * c * config.num_classes as f64;
    Ok(stem + proj + body + heads)
}

/// Total MACs of one image through a PVT-v2 under `policy` (dense, or idle layers as
/// `docs/pvt-idle.md` derives): the patch embeddings, every block, the head.
pub fn pvt_macs(config: &PvtConfig, policy: &TokenPolicy) -> Result<f64> {
    config.validate()?;
    if let TokenPolicy::Select { schedule, .. } = policy {
        config.validate_schedule(schedule)?;
    }
    let sides = config.grid_sides();
    let dims = &config.embed_dims;
    let mut total = (sides[0] * sides[0] * 3 * 49 * dims[0]) as f64;
    let mut layer = 0;
    for (i, &side) in sides.iter().enumerate() {
        let (c, hidden, sr) = (
            dims[i] as f64,
            config.mlp_hidden(i) as f64,
            config.sr_ratios[i],
        );
        let n = side * side;
        if i > 0 {
            total += (n * 9 * dims[i - 1] * dims[i]) as f64;
        }
        let reduced_side = (side - sr) / sr + 1;
        let nr = (reduced_side * reduced_side) as f64;
        // The reduction convolution (every output sees sr^2 positions of C channels) and kv.
        let keys_values = if sr > 1 {
            nr * c * c * (sr * sr) as f64
        } else {
            0.0
        } + 2.0 * nr * c * c;
        let n = n as f64;
        for _ in 0..config.depths[i] {
            // fc1 and the depthwise convolution always run on the whole grid.
            let grid_mlp = n * c * hidden + 9.0 * n * hidden;
            total += keys_values
                + grid_mlp
                + match policy.at(layer) {
                    None => 2.0 * n * c * c + 2.0 * n * nr * c + n * c * hidden,
                    Some((_, ratio)) => {
                        let k = keep_count(side * side, ratio)? as f64;
                        // Virtual CLS query and its scores, full-resolution keys when the
                        // attention's own are reduced, then q, attention, proj and fc2 on K.
                        let extra_keys = if sr > 1 { n * c * c } else { 0.0 };
                        c * c
                            + n * c
                            + extra_keys
                            + 2.0 * k * c * c
                            + 2.0 * k * nr * c
                            + k * c * hidden
                    }
                };
            layer += 1;
        }
    }
    Ok(total + (dims[dims.len() - 1] * config.num_classes) as f64)
}

/// MACs of `depth` blocks of width `c` and MLP width `hidden` over `n` image tokens plus CLS
/// under `policy`, and the number of tokens left at the end (fewer after pruning or EViT).
fn blocks(
    n: usize,
    c: usize,
    hidden: usize,
    depth: usize,
    policy: &TokenPolicy,
) -> Result<(f64, usize)> {
    let (c, hidden) = (c as f64, hidden as f64);
    let mut total = 0.0;
    let mut tokens = n + 1;
    for layer in 0..depth {
        total += match policy.at(layer) {
            None => dense_block(tokens as f64, c, hidden),
            Some((kind @ (PolicyKind::Idle | PolicyKind::Prune), ratio)) => {
                let kept = keep_count(n, ratio)? + 1;
                let cost = selecting_block(tokens as f64, kept as f64, c, hidden);
                // Pruned tokens leave for good; idle ones stay for the next layer.
                if kind == PolicyKind::Prune {
                    tokens = kept;
                }
                cost
            }
            Some((PolicyKind::Evit, rate)) => {
                let t = tokens as f64;
                let attention = 4.0 * t * c * c + 2.0 * t * t * c;
                let keep = evit_keep_count(tokens - 1, rate)?;
                let fused = usize::from(keep < tokens - 1);
                // Weighted sum of the fused tokens: one MAC per feature per fused token.
                let fusion = ((tokens - 1 - keep) * fused) as f64 * c;
                tokens = keep + 1 + fused;
                attention + fusion + 2.0 * tokens as f64 * hidden * c
            }
        };
    }
    Ok((total, tokens))
}

#[cfg(test)]
mod tests {
    use super::*;
    use idlevit_selector::Schedule;

    fn gmacs(config: &DeiTConfig, policy: &TokenPolicy) -> f64 {
        macs(config, policy).unwrap() / 1e9
    }

    fn idle(rate: f64) -> TokenPolicy {
        TokenPolicy::select(PolicyKind::Idle, Schedule::deit(rate).unwrap())
    }

    #[test]
    fn deit_matches_the_spec_test_vectors() {
        let small = DeiTConfig::small();
        let expected = [
            (1.0, 4.60),
            (0.9, 4.07),
            (0.8, 3.62),
            (0.7, 3.24),
            (0.6, 2.91),
            (0.5, 2.64),
        ];
        assert!((gmacs(&small, &TokenPolicy::Dense) - 4.60).abs() < 0.005);
        for (rate, want) in &expected[1..] {
            let got = gmacs(&small, &idle(*rate));
            assert!(
                (got - want).abs() < 0.005,
                "DeiT-S r={rate}: {got:.3} vs {want}"
            );
        }
        assert!((gmacs(&DeiTConfig::tiny(), &TokenPolicy::Dense) - 1.25).abs() < 0.005);
        assert!((gmacs(&DeiTConfig::tiny(), &idle(0.7)) - 0.87).abs() < 0.005);
        assert!((gmacs(&DeiTConfig::base(), &TokenPolicy::Dense) - 17.56).abs() < 0.005);
        assert!((gmacs(&DeiTConfig::base(), &idle(0.7)) - 12.47).abs() < 0.005);
    }

    #[test]
    fn hand_count_of_a_tiny_model() {
        // 4 image tokens (img 8, patch 4), C = 2, hidden 4, one idle layer keeping 2 tokens,
        // then a pruned and an EViT variant of the same layer.
        let config = DeiTConfig {
            img_size: 8,
            patch_size: 4,
            embed_dim: 2,
            depth: 2,
            num_heads: 1,
            mlp_ratio: 2.0,
            num_classes: 3,
            qkv_bias: true,
            idle_layers: None,
            keep_ratios: None,
        };
        let embed_and_head = 4.0 * 2.0 * 48.0 + 2.0 * 3.0; // N C 3 p^2 + C classes
        let dense_block = 4.0 * 5.0 * 4.0 + 2.0 * 5.0 * 4.0 * 2.0 + 2.0 * 25.0 * 2.0; // 80 + 80 + 100
        let schedule = Schedule::new(vec![0], vec![0.5]).unwrap();
        // keys 5*4, q_cls 4, scores 5*2, q/v/proj 3*3*4, attention 2*9*2, MLP 2*3*4*2
        let idle_block = 20.0 + 4.0 + 10.0 + 36.0 + 36.0 + 48.0;
        let policy = |kind| TokenPolicy::select(kind, schedule.clone());
        assert_eq!(
            macs(&config, &TokenPolicy::Dense).unwrap(),
            embed_and_head + 2.0 * dense_block
        );
        assert_eq!(
            macs(&config, &policy(PolicyKind::Idle)).unwrap(),
            embed_and_head + idle_block + dense_block
        );
        // Pruning: the same layer, then a dense layer over the 3 rows left: 48 + 48 + 36.
        assert_eq!(
            macs(&config, &policy(PolicyKind::Prune)).unwrap(),
            embed_and_head + idle_block + 132.0
        );
        // EViT keeps ceil(0.5 * 4) = 2, fuses 2 into one: attention over 5 (80 + 100), fusion
        // 2 * 2, MLP over 4 rows (64); then a dense layer over 4 rows: 64 + 64 + 64.
        assert_eq!(
            macs(&config, &policy(PolicyKind::Evit)).unwrap(),
            embed_and_head + 248.0 + 192.0
        );
    }

    #[test]
    fn evit_and_pruning_on_deit_s() {
        let small = DeiTConfig::small();
        let evit = |r| TokenPolicy::select(PolicyKind::Evit, Schedule::evit_deit(r).unwrap());
        // The EViT paper reports 3.0 and 2.3 GMACs for r = 0.7 and 0.5 (ours counts the same
        // products; the paper rounds to one decimal).
        assert!(
            (gmacs(&small, &evit(0.7)) - 3.0).abs() < 0.06,
            "{}",
            gmacs(&small, &evit(0.7))
        );
        assert!(
            (gmacs(&small, &evit(0.5)) - 2.3).abs() < 0.06,
            "{}",
            gmacs(&small, &evit(0.5))
        );
        let prune = TokenPolicy::select(PolicyKind::Prune, Schedule::deit(0.7).unwrap());
        assert!(gmacs(&small, &prune) < gmacs(&small, &idle(0.7)));
    }
}

#[cfg(test)]
mod published {
    use super::*;

    /// Dense GMACs of the published sizes, rounded as papers print them.
    #[test]
    fn dense_gmacs_match_the_published_figures() {
        let g = |m: f64| (m / 1e8).round() / 10.0;
        let dense = TokenPolicy::Dense;
        for (config, want) in [
            (DeiTConfig::tiny(), 1.3),
            (DeiTConfig::small(), 4.6),
            (DeiTConfig::base(), 17.6),
        ] {
            assert_eq!(g(macs(&config, &dense).unwrap()), want, "{config:?}");
        }
        // LV-ViT-S: 6.55 (the LV-ViT and IdleViT papers print 6.6). LV-ViT-M: 12.68, as
        // DynamicViT reports it and as torch's FLOP counter finds for the release's
        // architecture (55.83M parameters, as its README lists); the 16.0 the LV-ViT and
        // IdleViT papers print for M at 224 cannot be reproduced from that architecture.
        assert_eq!(g(lvvit_macs(&LvVitConfig::small(), &dense).unwrap()), 6.6);
        assert_eq!(g(lvvit_macs(&LvVitConfig::medium(), &dense).unwrap()), 12.7);
        // The exact counts, as torch.utils.flop_counter gives them (halved: MACs).
        assert_eq!(
            lvvit_macs(&LvVitConfig::small(), &dense).unwrap(),
            6_551_485_440.0
        );
        assert_eq!(
            lvvit_macs(&LvVitConfig::medium(), &dense).unwrap(),
            12_678_045_696.0
        );
    }
}
