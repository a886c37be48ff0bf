//! LV-ViT against the PyTorch reference of `fixtures/lvvit_reference.py` (`fixtures/lvvit/`):
//! dense logits and intermediates, idle and masked logits with every selection, and the
//! weights round trip.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::{Case, fixtures, stored_selection};
use idlevit_checkpoint::Checkpoint;
use idlevit_nn::{Backend, Eager};
use idlevit_zoo::{LvVit, LvVitConfig, PolicyKind, Schedule, TokenPolicy};

fn fixture(file: &str) -> PathBuf {
    fixtures().join("lvvit").join(file)
}

fn config() -> LvVitConfig {
    LvVitConfig::from_json(&std::fs::read_to_string(fixture("config.json")).unwrap()).unwrap()
}

fn weights() -> Checkpoint {
    Checkpoint::load_safetensors(fixture("weights.safetensors")).unwrap()
}

fn input() -> idlevit_tensor::Tensor {
    Checkpoint::load_safetensors(fixture("input.safetensors"))
        .unwrap()
        .require("input")
        .unwrap()
        .clone()
}

#[test]
fn logits_and_every_block_match_the_reference() {
    let model = LvVit::load(&config(), weights()).unwrap();
    let expected = Checkpoint::load_safetensors(fixture("logits.safetensors")).unwrap();
    let x = input();
    let mut tokens = model.embed(&Eager, &x).unwrap();
    let diff = tokens
        .max_abs_diff(expected.require("tokens").unwrap())
        .unwrap();
    assert!(diff <= 1e-5, "stem and embedding differ by {diff:e}");
    for (i, block) in model.blocks().iter().enumerate() {
        tokens = block.forward(&Eager, &tokens).unwrap();
        let diff = tokens
            .max_abs_diff(expected.require(&format!("block{i}")).unwrap())
            .unwrap();
        assert!(diff <= 1e-4, "block {i} differs by {diff:e}");
    }
    let logits = model.forward(&Eager, &x).unwrap();
    for key in ["logits", "logits_f64"] {
        let diff = logits.max_abs_diff(expected.require(key).unwrap()).unwrap();
        assert!(diff <= 1e-4, "{key}: max |logits - reference| = {diff:e}");
    }
}

/// A layer and the tokens it selected per batch item.
type LayerTokens = (usize, Vec<Vec<usize>>);

#[test]
fn idle_and_masked_forms_match_the_reference() {
    let dense = LvVit::load(&config(), weights()).unwrap();
    let x = input();
    let cases: BTreeMap<String, Case> =
        serde_json::from_str(&std::fs::read_to_string(fixture("schedules.json")).unwrap()).unwrap();
    assert_eq!(cases.len(), 4);
    for (key, case) in cases {
        let bytes = std::fs::read(fixture(&format!("{key}.safetensors"))).unwrap();
        let expected = Checkpoint::from_safetensors_bytes(&bytes).unwrap();
        let schedule = Schedule::new(case.idle_layers.clone(), case.keep_ratios).unwrap();
        let model = dense
            .clone()
            .with_policy(TokenPolicy::select(PolicyKind::Idle, schedule))
            .unwrap();
        let (logits, selections): (_, Vec<LayerTokens>) = if case.policy == "masked" {
            let out = model.forward_masked(&Eager, &x).unwrap();
            let sel = out
                .layers
                .iter()
                .map(|(l, m)| (*l, m.selection.indices().to_vec()))
                .collect();
            (out.logits, sel)
        } else {
            let out = model.forward_traced(&Eager, &x).unwrap();
            let sel = out
                .selections
                .into_iter()
                .map(|s| (s.layer, s.tokens))
                .collect();
            (out.logits, sel)
        };
        let diff = logits
            .max_abs_diff(expected.require("logits").unwrap())
            .unwrap();
        assert!(diff <= 1e-4, "{key}: logits differ by {diff:e}");
        assert_eq!(selections.len(), case.idle_layers.len(), "{key}");
        for (layer, tokens) in selections {
            assert_eq!(
                tokens,
                stored_selection(&bytes, layer),
                "{key} layer {layer}"
            );
        }
    }
}

#[test]
fn checkpoint_round_trips_and_bad_weights_are_named() {
    let model = LvVit::load(&config(), weights()).unwrap();
    assert_eq!(model.to_checkpoint().unwrap(), weights());

    let mut missing = weights();
    missing.remove("patch_embed.bn2.running_var");
    let err = LvVit::load(&config(), missing).unwrap_err().to_string();
    assert!(err.contains("patch_embed.bn2.running_var"), "{err}");

    let mut negative = weights();
    let var = negative
        .require("patch_embed.bn1.running_var")
        .unwrap()
        .map(|v| -v);
    negative.insert("patch_embed.bn1.running_var", var);
    let err = LvVit::load(&config(), negative).unwrap_err().to_string();
    assert!(err.contains("variances >= 0"), "{err}");

    let mut wider = config();
    wider.stem_channels = 32;
    let err = LvVit::load(&wider, weights()).unwrap_err().to_string();
    assert!(
        err.contains("patch_embed.conv1.weight: expected [32, 3, 7, 7], found [16, 3, 7, 7]"),
        "{err}"
    );

    let images = idlevit_tensor::Tensor::zeros(&[1, 3, 64, 64]).unwrap();
    let err = model
        .forward(&Eager, &Eager.constant(images))
        .unwrap_err()
        .to_string();
    assert!(err.contains("(batch >= 1, 3, 32, 32)"), "{err}");
}
