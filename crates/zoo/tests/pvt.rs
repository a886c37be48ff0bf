//! PVT-v2 against timm (`fixtures/pvt/*`): logits and every stage's output; idle layers in
//! their gathered and masked forms agree; keeping every token is the dense model.

mod common;

use common::{fixtures, images};
use idlevit_checkpoint::Checkpoint;
use idlevit_nn::{Backend, Eager};
use idlevit_tensor::Tensor;
use idlevit_zoo::{PolicyKind, PvtConfig, PvtV2, Schedule, TokenPolicy};
use proptest::prelude::*;

const FIXTURES: [&str; 2] = ["i64_d1221", "i48_d2222"];

fn load(name: &str) -> (PvtConfig, Checkpoint, Tensor, Checkpoint) {
    let dir = fixtures().join("pvt").join(name);
    let config =
        PvtConfig::from_json(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let weights = Checkpoint::load_safetensors(dir.join("weights.safetensors")).unwrap();
    let input = Checkpoint::load_safetensors(dir.join("input.safetensors")).unwrap();
    let expected = Checkpoint::load_safetensors(dir.join("logits.safetensors")).unwrap();
    (
        config,
        weights,
        input.require("input").unwrap().clone(),
        expected,
    )
}

#[test]
fn logits_match_timm() {
    for name in FIXTURES {
        let (config, weights, input, expected) = load(name);
        let model = PvtV2::load(&config, weights.clone()).unwrap();
        let logits = model.forward(&Eager, &input).unwrap();
        for key in ["logits", "logits_f64"] {
            let diff = logits.max_abs_diff(expected.require(key).unwrap()).unwrap();
            assert!(diff <= 1e-4, "{name} {key}: max |logits - timm| = {diff:e}");
        }
        assert_eq!(model.to_checkpoint().unwrap(), weights, "{name}");
    }
}

#[test]
fn bad_weights_and_inputs_are_named() {
    let (config, weights, _, _) = load(FIXTURES[0]);
    let mut missing = weights.clone();
    missing.remove("stages.1.blocks.0.attn.sr.weight");
    let err = PvtV2::load(&config, missing).unwrap_err().to_string();
    assert!(err.contains("stages.1.blocks.0.attn.sr.weight"), "{err}");
    let mut wrong = config.clone();
    wrong.sr_ratios[3] = 2;
    let err = PvtV2::load(&wrong, weights.clone())
        .unwrap_err()
        .to_string();
    assert!(err.contains("stages.3.blocks.0.attn.sr.weight"), "{err}");
    let model = PvtV2::load(&config, weights).unwrap();
    let images = Tensor::zeros(&[1, 3, 32, 32]).unwrap();
    let err = model
        .forward(&Eager, &Eager.constant(images))
        .unwrap_err()
        .to_string();
    assert!(err.contains("(batch >= 1, 3, 64, 64)"), "{err}");
    let stage_one = Schedule::new(vec![0], vec![0.5]).unwrap();
    let err = model
        .clone()
        .with_policy(TokenPolicy::select(PolicyKind::Idle, stage_one))
        .unwrap_err()
        .to_string();
    assert!(err.contains("stage 1"), "{err}");
    let later = Schedule::new(vec![1], vec![0.5]).unwrap();
    let err = model
        .with_policy(TokenPolicy::select(PolicyKind::Prune, later))
        .unwrap_err()
        .to_string();
    assert!(err.contains("idle policy only"), "{err}");
}

/// The published sizes' grids and the idle schedule's shape.
#[test]
fn named_sizes_and_schedule() {
    let b2 = PvtConfig::named("pvt_v2_b2").unwrap();
    assert_eq!(b2.grid_sides(), vec![56, 28, 14, 7]);
    let schedule = b2.idle_schedule(0.5).unwrap();
    assert_eq!(
        schedule.idle_layers(),
        (3..16).collect::<Vec<_>>().as_slice()
    );
    assert_eq!(schedule.keep_ratios()[0], 0.5);
    assert_eq!(schedule.keep_ratios()[12], 0.125);
    assert!(PvtConfig::named("pvt_v2_b9").is_err());
}

/// Small PVT shapes: 2-4 stages over 32-80 pixel images, with an idle ratio per block of
/// stages 2 and later (or dense).
fn case() -> impl Strategy<Value = (PvtConfig, Vec<Option<f64>>, usize, u64)> {
    (2usize..5, 2usize..6, 1usize..3, 1usize..3, any::<u64>())
        .prop_map(|(stages, size, depth, heads, seed)| {
            let sides_ok = |c: &PvtConfig| c.validate().is_ok();
            let mut config = PvtConfig {
                img_size: 16 * size,
                embed_dims: (0..stages).map(|i| 4 * heads * (i + 1)).collect(),
                depths: vec![depth; stages],
                num_heads: vec![heads; stages],
                sr_ratios: (0..stages).map(|i| 1 << (stages - 1 - i)).collect(),
                mlp_ratios: vec![2.0; stages],
                num_classes: 3,
                idle_layers: None,
                keep_ratios: None,
            };
            while !sides_ok(&config) {
                config
                    .sr_ratios
                    .iter_mut()
                    .for_each(|s| *s = (*s / 2).max(1));
            }
            (config, seed)
        })
        .prop_flat_map(|(config, seed)| {
            let ratios =
                proptest::collection::vec(proptest::option::of(0.05f64..=1.0), config.depth());
            (Just(config), ratios, 1usize..3, Just(seed))
        })
}

/// The idle policy of `ratios`, idling only blocks outside stage 1 that keep a token.
fn idle(config: &PvtConfig, ratios: &[Option<f64>]) -> TokenPolicy {
    let (layers, kept): (Vec<usize>, Vec<f64>) = ratios
        .iter()
        .enumerate()
        .filter_map(|(l, r)| {
            let (stage, _) = config.stage_of(l)?;
            let r = (*r)?;
            let tokens = config.stage_tokens(stage);
            (stage > 0 && (tokens as f64 * r).floor() >= 1.0).then_some((l, r))
        })
        .unzip();
    TokenPolicy::select(PolicyKind::Idle, Schedule::new(layers, kept).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// The gathered (inference) and masked (training) idle forms select the same tokens and
    /// give the same logits; keeping every token is the dense model.
    #[test]
    fn gathered_and_masked_forms_agree((config, ratios, batch, seed) in case()) {
        let dense = PvtV2::random(&config, seed).unwrap();
        let x = images(batch, config.img_size, seed);
        let model = dense.clone().with_policy(idle(&config, &ratios)).unwrap();
        let gathered = model.forward_traced(&Eager, &x).unwrap();
        let masked = model.forward_masked(&Eager, &x).unwrap();
        prop_assert_eq!(gathered.selections.len(), masked.selections.len());
        let as_set = |rows: &[usize]| rows.iter().copied().collect::<std::collections::BTreeSet<_>>();
        let mut same = true;
        for (g, m) in gathered.selections.iter().zip(&masked.selections) {
            prop_assert_eq!(g.layer, m.layer);
            for (a, b) in g.tokens.iter().zip(&m.tokens) {
                let (a, b) = (as_set(a), as_set(b));
                // The two forms round differently (by ~1e-8 relative) once a layer has idled,
                // so a later selection may flip at a near-tie: one token traded for the next
                // best. Anything more is a real difference.
                prop_assert!(a.difference(&b).count() <= 1, "layer {}: {:?} vs {:?}", g.layer, a, b);
                same &= a == b;
            }
            if !same {
                break;
            }
        }
        let scale = masked.logits.to_vec().iter().fold(1.0f32, |m, v| m.max(v.abs()));
        if same {
            let diff = gathered.logits.max_abs_diff(&masked.logits).unwrap() / scale;
            prop_assert!(diff <= 1e-5, "gathered and masked differ by {} relative", diff);
        }

        let all: Vec<Option<f64>> = vec![Some(1.0); config.depth()];
        let full = dense.clone().with_policy(idle(&config, &all)).unwrap();
        let reference = dense.forward(&Eager, &x).unwrap();
        let diff = full.forward(&Eager, &x).unwrap().max_abs_diff(&reference).unwrap() / scale;
        prop_assert!(diff <= 1e-5, "keep ratio 1 differs from dense by {} relative", diff);
    }
}
