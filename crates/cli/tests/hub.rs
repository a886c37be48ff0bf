//! timm hub snapshots as `save_for_hf` writes them (`fixtures/hub`, made by
//! `make_hub_fixtures.py`): `logits` matches timm's logits, `classify` timm's top-5 on an image
//! prepared by the snapshot's own `pretrained_cfg`, with ImageNet names; `--model` beside a
//! snapshot must agree with it.

use std::path::PathBuf;

use idlevit_checkpoint::Checkpoint;

mod common;
use common::{failure, idlevit, s, scratch, success};

fn hub() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/hub")
}

fn expected(name: &str) -> Checkpoint {
    Checkpoint::load_safetensors(hub().join(format!("{name}.expected.safetensors"))).unwrap()
}

#[test]
fn logits_of_a_snapshot_match_timm() {
    let dir = scratch("hub-logits");
    for name in ["deit_tiny", "vit_small"] {
        let out = dir.join(format!("{name}.safetensors"));
        let snapshot = hub().join(name);
        let input = hub().join("input.safetensors");
        success(&idlevit(&[
            "logits",
            "--weights",
            s(&snapshot),
            "--input",
            s(&input),
            "--output",
            s(&out),
        ]));
        let ours = Checkpoint::load_safetensors(&out).unwrap();
        let ours = ours.require("logits").unwrap();
        let theirs = expected(name);
        let theirs = theirs.require("logits").unwrap();
        assert_eq!(ours.shape(), &[1, 1000]);
        let diff = ours.max_abs_diff(theirs).unwrap();
        assert!(diff < 1e-4, "{name}: max |logits - timm| = {diff}");
    }
}

/// The class indices and names `classify` prints for its one image.
fn classify(args: &[&str]) -> Vec<(usize, String)> {
    let stdout = success(&idlevit(args));
    stdout
        .lines()
        .skip(1)
        .map(|line| {
            let mut parts = line.split_whitespace();
            let index = parts.next().unwrap().parse().unwrap();
            let _probability = parts.next().unwrap();
            (index, parts.collect::<Vec<_>>().join(" "))
        })
        .collect()
}

#[test]
fn classify_by_a_snapshot_gives_timms_top5_with_imagenet_names() {
    let image = hub().join("../images/sample.png");
    let names = idlevit_data::labels::imagenet_1k();
    for name in ["deit_tiny", "vit_small"] {
        let snapshot = hub().join(name);
        let top = classify(&["classify", "--weights", s(&snapshot), s(&image)]);
        let theirs: Vec<usize> = expected(name)
            .require("image_top5")
            .unwrap()
            .to_vec()
            .iter()
            .map(|&i| i as usize)
            .collect();
        let ours: Vec<usize> = top.iter().map(|(i, _)| *i).collect();
        assert_eq!(ours, theirs, "{name}");
        for (index, label) in &top {
            assert_eq!(label, names[*index], "{name}");
        }
        // The machine-readable form gives the same classes.
        let json: serde_json::Value = serde_json::from_str(&success(&idlevit(&[
            "classify",
            "--weights",
            s(&snapshot),
            "--json",
            s(&image),
        ])))
        .unwrap();
        let top = json["images"][0]["top"].as_array().unwrap();
        let indices: Vec<usize> = top
            .iter()
            .map(|t| t["index"].as_u64().unwrap() as usize)
            .collect();
        assert_eq!(indices, theirs, "{name} --json");
        assert_eq!(top[0]["label"].as_str().unwrap(), names[theirs[0]]);
    }
}

#[test]
fn a_model_given_beside_a_snapshot_must_agree() {
    let image = hub().join("../images/sample.png");
    let snapshot = hub().join("deit_tiny");
    let err = failure(&idlevit(&[
        "classify",
        "--model",
        "deit_tiny_patch16_224.fb_in1k",
        "--weights",
        s(&snapshot),
        s(&image),
    ]));
    assert!(err.contains("differs from the one --model"), "{err}");
    assert!(err.contains("depth 2"), "{err}");

    let dir = scratch("hub-agree");
    let config = dir.join("config.json");
    std::fs::write(
        &config,
        r#"{"img_size": 224, "patch_size": 16, "embed_dim": 24, "depth": 2, "num_heads": 2,
            "mlp_ratio": 4.0, "num_classes": 1000, "qkv_bias": true}"#,
    )
    .unwrap();
    let top = classify(&[
        "classify",
        "--config",
        s(&config),
        "--weights",
        s(&snapshot),
        s(&image),
    ]);
    assert_eq!(top.len(), 5);
}

#[test]
fn a_directory_that_is_no_snapshot_is_named() {
    let dir = scratch("hub-not-a-snapshot");
    let image = hub().join("../images/sample.png");
    let err = failure(&idlevit(&["classify", "--weights", s(&dir), s(&image)]));
    assert!(err.contains("not a timm hub snapshot"), "{err}");
    assert!(err.contains("config.json, model.safetensors"), "{err}");

    let broken = dir.join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    let text = std::fs::read_to_string(hub().join("vit_small/config.json")).unwrap();
    std::fs::write(
        broken.join("config.json"),
        text.replace("\"bicubic\"", "\"lanczos\""),
    )
    .unwrap();
    std::fs::copy(
        hub().join("vit_small/model.safetensors"),
        broken.join("model.safetensors"),
    )
    .unwrap();
    let err = failure(&idlevit(&["classify", "--weights", s(&broken), s(&image)]));
    assert!(err.contains("config.json"), "{err}");
    assert!(err.contains("pretrained_cfg.interpolation"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Finetuning normalises with the ImageNet statistics, so a snapshot normalised otherwise is
/// refused before anything is trained or written; a teacher snapshot of another model too.
#[test]
fn finetune_refuses_what_it_would_feed_wrongly() {
    let dir = scratch("hub-finetune");
    common::write_folder(&dir.join("data"), 1);
    let (data, out) = (dir.join("data"), dir.join("out"));
    let run = |weights: &str, extra: &[&str]| {
        let mut args = vec!["finetune", "--weights", weights, "--data"];
        args.extend([s(&data), "--out", s(&out), "--epochs", "1"]);
        args.extend(extra);
        failure(&idlevit(&args))
    };
    let err = run(s(&hub().join("vit_small")), &[]);
    assert!(err.contains("mean [0.5, 0.5, 0.5]"), "{err}");
    assert!(err.contains("ImageNet mean and std"), "{err}");
    let err = run(
        s(&hub().join("deit_tiny")),
        &["--teacher", s(&hub().join("vit_small"))],
    );
    assert!(err.contains("differs from the student"), "{err}");
    assert!(!out.exists(), "nothing is written");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// An output path inside a snapshot that names one of its files is refused before anything
/// is read or written.
#[test]
fn outputs_never_replace_a_snapshots_files() {
    let dir = scratch("hub-outputs");
    let snapshot = dir.join("deit_tiny");
    std::fs::create_dir_all(&snapshot).unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(hub().join("deit_tiny").join(file), snapshot.join(file)).unwrap();
    }
    let weights = snapshot.join("model.safetensors");
    let before = std::fs::read(&weights).unwrap();
    let input = hub().join("input.safetensors");
    let err = failure(&idlevit(&[
        "logits",
        "--weights",
        s(&snapshot),
        "--input",
        s(&input),
        "--output",
        s(&weights),
    ]));
    assert!(err.contains("is the same file as --weights"), "{err}");
    assert_eq!(std::fs::read(&weights).unwrap(), before);
    std::fs::remove_dir_all(&dir).unwrap();
}
