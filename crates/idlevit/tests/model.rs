//! The front door against timm: hub snapshots give timm's logits and top classes
//! (`fixtures/hub`, made by `fixtures/hub/make_hub_fixtures.py`), under every way of loading
//! a model, and its policy, precision and preprocessing options behave as documented.

use std::path::PathBuf;

use idlevit::checkpoint::Checkpoint;
use idlevit::zoo::DeiTConfig;
use idlevit::{EvalTransform, Model, PolicyKind, Precision, Schedule, Tensor, TokenPolicy};

fn hub() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/hub")
}

fn sample() -> PathBuf {
    hub().join("../images/sample.png")
}

fn expected(name: &str) -> Checkpoint {
    Checkpoint::load_safetensors(hub().join(format!("{name}.expected.safetensors"))).unwrap()
}

fn input() -> Tensor {
    let ckpt = Checkpoint::load_safetensors(hub().join("input.safetensors")).unwrap();
    ckpt.get("input").unwrap().clone()
}

fn largest_difference(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.shape(), b.shape());
    a.to_vec()
        .iter()
        .zip(b.to_vec())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn snapshots_give_timms_logits_and_top_classes() {
    let names = idlevit::data::labels::imagenet_1k();
    for name in ["deit_tiny", "vit_small"] {
        let model = Model::from_hub_dir(hub().join(name)).unwrap();
        let theirs = expected(name);
        let logits = model.logits(&input()).unwrap();
        let worst = largest_difference(&logits, theirs.get("logits").unwrap());
        assert!(worst < 1e-4, "{name}: logits differ from timm's by {worst}");

        let top = model.classify(sample(), 5).unwrap();
        let indices: Vec<f32> = top.iter().map(|p| p.index as f32).collect();
        assert_eq!(
            indices,
            theirs.get("image_top5").unwrap().to_vec(),
            "{name}"
        );
        for (ours, timm) in top
            .iter()
            .zip(theirs.get("image_probabilities").unwrap().to_vec())
        {
            // Our resize is not PIL's to the last bit, so pixels, and with them the
            // probabilities, differ slightly.
            assert!(
                (ours.probability - timm).abs() < 2e-3,
                "{name}: {ours:?} vs {timm}"
            );
            assert_eq!(ours.label.as_deref(), Some(names[ours.index]));
        }
    }
}

/// The vit_small snapshot normalises with mean = std = 0.5; DeiT's default would feed it other
/// pixels.
#[test]
fn preprocessing_follows_the_snapshot() {
    let vit = Model::from_hub_dir(hub().join("vit_small")).unwrap();
    assert_eq!(
        (vit.transform().mean, vit.transform().std),
        ([0.5; 3], [0.5; 3])
    );
    let ours = vit.preprocess(sample()).unwrap();
    let default = EvalTransform::for_size(224);
    let deit_default = idlevit::data::preprocess::load_image(&sample(), &default).unwrap();
    assert!(largest_difference(&ours, &deit_default) > 0.1);

    let decoded = image::open(sample()).unwrap();
    assert_eq!(vit.preprocess(&decoded).unwrap().to_vec(), ours.to_vec());
    assert_eq!(
        vit.classify(&decoded, 3).unwrap(),
        vit.classify(sample(), 3).unwrap()
    );
}

/// The same weights loaded three ways run the same model.
#[test]
fn a_config_or_a_name_with_a_weights_file_loads_the_same_model() {
    let snapshot = Model::from_hub_dir(hub().join("deit_tiny")).unwrap();
    let config = DeiTConfig {
        img_size: 224,
        patch_size: 16,
        embed_dim: 24,
        depth: 2,
        num_heads: 2,
        mlp_ratio: 4.0,
        num_classes: 1000,
        qkv_bias: true,
        idle_layers: None,
        keep_ratios: None,
    };
    let weights = hub().join("deit_tiny/model.safetensors");
    let custom = Model::from_config(config, &weights).unwrap();
    assert_eq!(custom.name(), "custom");
    let (a, b) = (
        snapshot.logits(&input()).unwrap(),
        custom.logits(&input()).unwrap(),
    );
    assert_eq!(a.to_vec(), b.to_vec());
    assert_eq!(custom.labels().map(<[String]>::len), Some(1000));

    let err = Model::from_file("deit_tiny_patch16_224.fb_in1k", &weights).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("cannot load model deit_tiny_patch16_224.fb_in1k"),
        "{message}"
    );
    assert!(
        message.contains("model.safetensors do not fit the model"),
        "{message}"
    );
}

#[test]
fn keeping_every_token_is_dense_and_fewer_costs_less() {
    let dense = Model::from_hub_dir(hub().join("deit_tiny")).unwrap();
    let keep_all = dense
        .clone()
        .with_schedule(PolicyKind::Idle, Schedule::new(vec![1], vec![1.0]).unwrap())
        .unwrap();
    let worst = largest_difference(
        &dense.logits(&input()).unwrap(),
        &keep_all.logits(&input()).unwrap(),
    );
    assert!(worst < 1e-4, "{worst}");
    for kind in [PolicyKind::Idle, PolicyKind::Prune, PolicyKind::Evit] {
        let half = dense
            .clone()
            .with_schedule(kind, Schedule::new(vec![1], vec![0.5]).unwrap())
            .unwrap();
        assert!(half.gmacs().unwrap() < dense.gmacs().unwrap(), "{kind}");
        assert_eq!(half.classify(sample(), 5).unwrap().len(), 5);
        assert_eq!(half.dense().unwrap().policy(), &TokenPolicy::Dense);
    }
    let err = dense
        .with_policy(PolicyKind::Prune, 0.7)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("prune at keep rate 0.7 on deit_tiny_patch16_224"),
        "{err}"
    );
    assert!(err.contains("depth 2"), "{err}");
}

#[test]
fn bf16_stays_close_to_f32() {
    let f32_model = Model::from_hub_dir(hub().join("deit_tiny")).unwrap();
    let bf16 = f32_model.clone().with_bf16().unwrap();
    assert_eq!(bf16.precision(), Precision::Bf16);
    let (a, b) = (
        f32_model.logits(&input()).unwrap(),
        bf16.logits(&input()).unwrap(),
    );
    let spread = a.to_vec().iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let worst = largest_difference(&a, &b);
    assert!(worst > 0.0 && worst < 0.05 * spread, "{worst} of {spread}");
    let back = bf16.with_precision(Precision::F32).unwrap();
    assert_eq!(back.logits(&input()).unwrap().to_vec(), a.to_vec());
}

#[test]
fn the_embedded_digits_model_reads_a_digit() {
    let model = Model::digits().unwrap();
    let options = idlevit::data::digits::DigitsOptions::default();
    let split = idlevit::data::digits::embedded_split(&options).unwrap();
    let canvases = &split.val[..32];
    let images: Vec<_> = canvases.iter().map(|c| &c.image).collect();
    let tops = model.classify_batch(&images, 1).unwrap();
    let correct = tops
        .iter()
        .zip(canvases)
        .filter(|(top, c)| top[0].label == Some(c.label.to_string()))
        .count();
    // The model reads 97.55% of all 449 validation canvases.
    assert!(correct >= 29, "{correct} of 32");
}

#[test]
fn wrong_inputs_are_refused_with_their_names() {
    let model = Model::from_hub_dir(hub().join("deit_tiny")).unwrap();
    let small = Tensor::zeros(&[1, 3, 64, 64]).unwrap();
    let err = model.logits(&small).unwrap_err().to_string();
    assert!(err.contains("224"), "{err}");
    let err = model
        .clone()
        .with_transform(EvalTransform::for_size(64))
        .unwrap_err();
    assert!(err.to_string().contains("crops 64 pixels"), "{err}");
    let none: [&str; 0] = [];
    assert!(model.classify_batch(&none, 5).is_err());
    let missing = hub().join("no-such-image.png");
    let err = model.classify(&missing, 5).unwrap_err().to_string();
    assert!(err.contains("no-such-image.png"), "{err}");
    let err = Model::from_hub_dir(hub().join("no-such-dir"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no-such-dir"), "{err}");
}
