//! Idle, masked, top-k pruning and EViT against the PyTorch reference implementation
//! (`fixtures/idle/*`, written by `fixtures/idle_reference.py`): logits and every selection.

mod common;

use std::collections::BTreeMap;

use common::{Case, fixtures, stored_selection};
use idlevit_checkpoint::Checkpoint;
use idlevit_nn::Eager;
use idlevit_zoo::{DeiT, DeiTConfig, PolicyKind, Schedule, TokenPolicy};

const FIXTURES: [&str; 3] = ["p8_i32_d2", "p16_i64_d4", "p8_i64_d6"];

#[test]
fn every_policy_matches_the_reference() {
    let mut checked = 0;
    for name in FIXTURES {
        let config =
            DeiTConfig::from_file(fixtures().join("deit").join(name).join("config.json")).unwrap();
        let weights = Checkpoint::load_safetensors(
            fixtures()
                .join("deit")
                .join(name)
                .join("weights.safetensors"),
        )
        .unwrap();
        let dense = DeiT::load(&config, weights).unwrap();
        let dir = fixtures().join("idle").join(name);
        let input = Checkpoint::load_safetensors(dir.join("input.safetensors")).unwrap();
        let input = input.require("input").unwrap();
        let cases: BTreeMap<String, Case> =
            serde_json::from_str(&std::fs::read_to_string(dir.join("schedules.json")).unwrap())
                .unwrap();
        for (key, case) in cases {
            let bytes = std::fs::read(dir.join(format!("{key}.safetensors"))).unwrap();
            let expected = Checkpoint::from_safetensors_bytes(&bytes).unwrap();
            let expected_logits = expected.require("logits").unwrap();
            let kind = match case.policy.as_str() {
                "masked" => PolicyKind::Idle,
                other => other.parse().unwrap(),
            };
            let schedule =
                Schedule::new(case.idle_layers.clone(), case.keep_ratios.clone()).unwrap();
            let model = dense
                .clone()
                .with_policy(TokenPolicy::select(kind, schedule))
                .unwrap();
            let (logits, selections) = if case.policy == "masked" {
                let out = model.forward_masked(&Eager, input).unwrap();
                for (layer, masked) in &out.layers {
                    let mask = expected.require(&format!("mask.layer{layer}")).unwrap();
                    let ours = masked.token_mask.reshape(mask.shape()).unwrap();
                    assert_eq!(
                        ours.to_vec(),
                        mask.to_vec(),
                        "{name} {key} layer {layer} mask"
                    );
                }
                let selections = out
                    .layers
                    .iter()
                    .map(|(l, m)| (*l, m.selection.indices().to_vec()))
                    .collect();
                (out.logits, selections)
            } else {
                let out = model.forward_traced(&Eager, input).unwrap();
                let selections: Vec<_> = out
                    .selections
                    .into_iter()
                    .map(|s| (s.layer, s.tokens))
                    .collect();
                (out.logits, selections)
            };
            let diff = logits.max_abs_diff(expected_logits).unwrap();
            assert!(diff <= 1e-5, "{name} {key}: logits differ by {diff:e}");
            if case.policy != "evit" {
                assert_eq!(selections.len(), case.idle_layers.len(), "{name} {key}");
                for (layer, tokens) in selections {
                    assert_eq!(
                        tokens,
                        stored_selection(&bytes, layer),
                        "{name} {key} layer {layer}"
                    );
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 27, "three fixtures of nine cases each");
}
