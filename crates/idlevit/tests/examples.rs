//! The examples run as they are: each one's work is a function this test calls.

use std::path::PathBuf;

#[path = "../examples/classify.rs"]
#[allow(dead_code)]
mod classify;
#[path = "../examples/custom_model.rs"]
#[allow(dead_code)]
mod custom_model;
#[path = "../examples/finetune.rs"]
#[allow(dead_code)]
mod finetune;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn text(path: PathBuf) -> String {
    path.to_string_lossy().into_owned()
}

/// timm's top-5 classes of the sample image for the tiny DeiT snapshot
/// (`fixtures/hub/make_hub_fixtures.py`).
fn timm_top5() -> Vec<usize> {
    let expected = fixtures().join("hub/deit_tiny.expected.safetensors");
    let ckpt = idlevit::checkpoint::Checkpoint::load_safetensors(expected).unwrap();
    ckpt.get("image_top5")
        .unwrap()
        .to_vec()
        .iter()
        .map(|&i| i as usize)
        .collect()
}

#[test]
fn classify_gives_timms_top_classes_of_a_hub_snapshot() {
    let image = text(fixtures().join("images/sample.png"));
    let args = [
        text(fixtures().join("hub/deit_tiny")),
        image.clone(),
        image.clone(),
    ];
    let results = classify::classify(&args).unwrap();
    assert_eq!(results.len(), 2);
    let (name, top) = &results[0];
    assert_eq!(name, &image);
    let indices: Vec<usize> = top.iter().map(|p| p.index).collect();
    assert_eq!(indices, timm_top5());
    let names = idlevit::data::labels::imagenet_1k();
    assert_eq!(top[0].label.as_deref(), Some(names[indices[0]]));
    assert!(top.windows(2).all(|w| w[0].probability >= w[1].probability));
    assert_eq!(results[1].1, results[0].1, "one image twice in a batch");
}

#[test]
fn classify_names_what_it_cannot_use() {
    let hub = text(fixtures().join("hub/deit_tiny"));
    let image = text(fixtures().join("images/sample.png"));
    let broken = text(fixtures().join("images/not_an_image.png"));
    let cases = [
        (vec![hub.clone()], "usage"),
        (
            vec!["--idle".into(), "x".into(), hub.clone(), image.clone()],
            "usage",
        ),
        // The tiny snapshot has 2 blocks; DeiT's idle schedule starts at layer 3.
        (
            vec!["--idle".into(), "0.7".into(), hub.clone(), image.clone()],
            "depth 2",
        ),
        (vec![hub.clone(), broken.clone()], "not_an_image.png"),
        (
            vec![text(fixtures().join("images")), image.clone()],
            "not a timm hub snapshot",
        ),
        (
            vec![format!("deit_tiny={hub}"), image.clone()],
            "Model::from_hub_dir",
        ),
        (
            vec![format!("resnet50={broken}"), image.clone()],
            "unknown model `resnet50`",
        ),
        (
            vec![format!("deit_tiny={broken}"), image],
            "not_an_image.png",
        ),
    ];
    for (args, needle) in cases {
        let err = classify::classify(&args).unwrap_err().to_string();
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn custom_model_idles_and_keeping_every_token_is_dense() {
    let (selections, difference) = custom_model::idle_my_model().unwrap();
    let layers: Vec<usize> = selections.iter().map(|s| s.layer).collect();
    assert_eq!(layers, [1, 3]);
    // The class token and half, then a quarter, of the 16 image tokens, for both images.
    for (selection, kept) in selections.iter().zip([9, 5]) {
        for tokens in &selection.tokens {
            assert_eq!(tokens.len(), kept);
            assert_eq!(tokens[0], 0, "the class token is always computed");
        }
    }
    assert!(
        difference < 1e-4,
        "keeping every token differs from dense by {difference}"
    );
}

#[test]
fn finetune_learns_the_digits() {
    let (losses, accuracy) = finetune::finetune_digits(3).unwrap();
    let first = losses[0];
    let last: f32 = losses[losses.len() - 5..].iter().sum::<f32>() / 5.0;
    assert!(
        last < 0.6 * first,
        "loss fell only from {first} to {last}: {losses:?}"
    );
    assert!(accuracy > 0.3, "validation top-1 {accuracy}; chance is 0.1");
}
