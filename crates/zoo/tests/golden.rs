//! Dense DeiT against timm: golden logits and intermediates from `fixtures/deit/*`.

use std::path::PathBuf;

use idlevit_checkpoint::Checkpoint;
use idlevit_nn::{Backend, Eager};
use idlevit_zoo::{DeiT, DeiTConfig};

const FIXTURES: [&str; 3] = ["p8_i32_d2", "p16_i64_d4", "p8_i64_d6"];

fn fixture(name: &str, file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/deit")
        .join(name)
        .join(file)
}

fn load(name: &str) -> (DeiT, Checkpoint, Checkpoint) {
    let config = DeiTConfig::from_file(fixture(name, "config.json")).unwrap();
    let weights = Checkpoint::load_safetensors(fixture(name, "weights.safetensors")).unwrap();
    let model = DeiT::load(&config, weights).unwrap();
    let input = Checkpoint::load_safetensors(fixture(name, "input.safetensors")).unwrap();
    let expected = Checkpoint::load_safetensors(fixture(name, "logits.safetensors")).unwrap();
    (model, input, expected)
}

#[test]
fn logits_match_timm() {
    for name in FIXTURES {
        let (model, input, expected) = load(name);
        let logits = model
            .forward(&Eager, input.require("input").unwrap())
            .unwrap();
        let diff = logits
            .max_abs_diff(expected.require("logits").unwrap())
            .unwrap();
        assert!(diff <= 1e-4, "{name}: max |logits - timm| = {diff:e}");
        let exact = logits
            .max_abs_diff(expected.require("logits_f64").unwrap())
            .unwrap();
        assert!(
            exact <= 1e-4,
            "{name}: max |logits - f64 reference| = {exact:e}"
        );
    }
}

#[test]
fn every_block_matches_timm() {
    for name in FIXTURES {
        let (model, input, expected) = load(name);
        let mut x = model
            .embed(&Eager, input.require("input").unwrap())
            .unwrap();
        let diff = x.max_abs_diff(expected.require("tokens").unwrap()).unwrap();
        assert!(diff <= 1e-5, "{name}: embedded tokens differ by {diff:e}");
        for (i, block) in model.blocks().iter().enumerate() {
            x = block.forward(&Eager, &x).unwrap();
            let reference = expected.require(&format!("block{i}")).unwrap();
            let scale = reference.view().iter().fold(1.0f32, |m, v| m.max(v.abs()));
            let diff = x.max_abs_diff(reference).unwrap();
            assert!(
                diff <= 1e-5 * scale,
                "{name}: block {i} differs by {diff:e} (scale {scale})"
            );
        }
    }
}

#[test]
fn misshaped_missing_and_unexpected_weights_are_named() {
    let name = FIXTURES[0];
    let config = DeiTConfig::from_file(fixture(name, "config.json")).unwrap();
    let weights = Checkpoint::load_safetensors(fixture(name, "weights.safetensors")).unwrap();

    let mut wider = config.clone();
    wider.num_heads = 2;
    wider.embed_dim = 32;
    let err = DeiT::load(&wider, weights.clone()).unwrap_err().to_string();
    assert!(
        err.contains("patch_embed.proj.weight: expected [32, 3, 8, 8], found [64, 3, 8, 8]"),
        "{err}"
    );

    let mut missing = weights.clone();
    missing.remove("blocks.1.mlp.fc2.bias");
    let err = DeiT::load(&config, missing).unwrap_err().to_string();
    assert!(
        err.contains("blocks.1.mlp.fc2.bias") && err.contains("missing"),
        "{err}"
    );

    let mut extra = weights.clone();
    extra.insert(
        "dist_token",
        idlevit_tensor::Tensor::zeros(&[1, 1, 64]).unwrap(),
    );
    let err = DeiT::load(&config, extra).unwrap_err().to_string();
    assert!(
        err.contains("unexpected") && err.contains("dist_token"),
        "{err}"
    );

    let mut shallower = config.clone();
    shallower.depth = 1;
    let err = DeiT::load(&shallower, weights).unwrap_err().to_string();
    assert!(err.contains("blocks.1."), "{err}");
}

#[test]
fn wrong_image_size_and_empty_batch_are_errors() {
    let (model, _, _) = load(FIXTURES[0]);
    for shape in [[1, 3, 64, 64], [1, 1, 32, 32], [0, 3, 32, 32]] {
        let images = idlevit_tensor::Tensor::zeros(&shape).unwrap();
        let err = model
            .forward(&Eager, &Eager.constant(images))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("input images") && err.contains("(batch >= 1, 3, 32, 32)"),
            "{err}"
        );
    }
}

#[test]
fn to_checkpoint_round_trips_every_weight() {
    let name = FIXTURES[2];
    let config = DeiTConfig::from_file(fixture(name, "config.json")).unwrap();
    let weights = Checkpoint::load_safetensors(fixture(name, "weights.safetensors")).unwrap();
    let model = DeiT::load(&config, weights.clone()).unwrap();
    assert_eq!(model.to_checkpoint().unwrap(), weights);
}
