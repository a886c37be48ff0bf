//! One clipped AdamW step against PyTorch (`fixtures/loss/adamw_step`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use idlevit_checkpoint::Checkpoint;
use idlevit_train::{AdamW, clip_grad_norm};
use idlevit_zoo::{DeiT, DeiTConfig};

#[test]
fn one_step_matches_torch_adamw_with_clipping() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/loss");
    let config = DeiTConfig::from_file(dir.join("config.json")).unwrap();
    let mut model = DeiT::load(
        &config,
        Checkpoint::load_safetensors(dir.join("weights.safetensors")).unwrap(),
    )
    .unwrap();
    let stored = Checkpoint::load_safetensors(dir.join("both_w20/grads.safetensors")).unwrap();
    // Gradients are stored in checkpoint shapes; the optimiser wants each parameter's own.
    let mut grads = BTreeMap::new();
    model.visit_params(&mut |p| {
        let g = stored
            .require(p.name())
            .unwrap()
            .reshape(p.value().shape())
            .unwrap();
        grads.insert(p.name().to_string(), g);
    });
    let norm = clip_grad_norm(&mut grads, 1.0);
    let expected_norm =
        Checkpoint::load_safetensors(dir.join("adamw_step/values.safetensors")).unwrap();
    let expected_norm = expected_norm.require("grad_norm").unwrap().to_vec()[0];
    assert!(
        (norm as f32 - expected_norm).abs() < 1e-5 * expected_norm,
        "{norm} vs {expected_norm}"
    );
    let mut optimizer = AdamW::new(0.05);
    optimizer.step(&mut model, &grads, 1e-3).unwrap();
    let expected = Checkpoint::load_safetensors(dir.join("adamw_step/params.safetensors")).unwrap();
    let got = model.to_checkpoint().unwrap();
    for (name, want) in expected.iter() {
        let diff = got.require(name).unwrap().max_abs_diff(want).unwrap();
        assert!(diff < 1e-6, "{name}: {diff:e}");
    }
}
