//! The `idlevit` binary end to end: golden logits through both weight formats, and a clear
//! error with a non-zero exit for every kind of bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use idlevit_checkpoint::Checkpoint;
use idlevit_tensor::Tensor;

mod common;
use common::scratch;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn deit(file: &str) -> PathBuf {
    fixtures().join("deit/p8_i32_d2").join(file)
}

fn idlevit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_idlevit"))
        .args(args)
        .args(["--threads", "2"])
        .output()
        .expect("the idlevit binary runs")
}

fn path(p: &Path) -> &str {
    p.to_str().expect("fixture paths are UTF-8")
}

/// Runs `logits` and returns stderr, asserting failure.
fn logits_fails(config: &Path, weights: &Path, input: &Path) -> String {
    let dir = scratch("fail");
    let out_file = dir.join("out.safetensors");
    let out = idlevit(&[
        "logits",
        "--config",
        path(config),
        "--weights",
        path(weights),
        "--input",
        path(input),
        "--output",
        path(&out_file),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr: {stderr}"
    );
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn logits_match_timm_from_safetensors_and_pth() {
    let expected = Checkpoint::load_safetensors(deit("logits.safetensors")).unwrap();
    let expected = expected.require("logits").unwrap();
    for weights in [deit("weights.safetensors"), deit("checkpoint.pth")] {
        let dir = scratch("golden");
        let out_file = dir.join("logits.safetensors");
        let out = idlevit(&[
            "logits",
            "--config",
            path(&deit("config.json")),
            "--weights",
            path(&weights),
            "--input",
            path(&deit("input.safetensors")),
            "--output",
            path(&out_file),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got = Checkpoint::load_safetensors(&out_file).unwrap();
        let diff = got
            .require("logits")
            .unwrap()
            .max_abs_diff(expected)
            .unwrap();
        assert!(diff <= 1e-4, "{}: max diff {diff:e}", weights.display());
    }
}

#[test]
fn truncated_and_corrupt_weights_are_refused() {
    let dir = scratch("corrupt");
    for source in ["weights.safetensors", "checkpoint.pth"] {
        let bytes = std::fs::read(deit(source)).unwrap();
        let truncated = dir.join(format!("truncated-{source}"));
        std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
        logits_fails(&deit("config.json"), &truncated, &deit("input.safetensors"));
        let mut flipped = bytes.clone();
        for b in flipped.iter_mut().take(64) {
            *b ^= 0x5a;
        }
        let corrupt = dir.join(format!("corrupt-{source}"));
        std::fs::write(&corrupt, &flipped).unwrap();
        logits_fails(&deit("config.json"), &corrupt, &deit("input.safetensors"));
    }
}

#[test]
fn checkpoint_without_weights_is_refused() {
    let err = logits_fails(
        &deit("config.json"),
        &fixtures().join("pth/no_weights.pth"),
        &deit("input.safetensors"),
    );
    assert!(
        err.contains("no float tensors") && err.contains("args, epoch"),
        "{err}"
    );
}

#[test]
fn misshaped_weights_name_the_tensor() {
    let dir = scratch("shapes");
    let mut ckpt = Checkpoint::load_safetensors(deit("weights.safetensors")).unwrap();
    ckpt.insert(
        "blocks.1.attn.qkv.weight",
        Tensor::zeros(&[192, 32]).unwrap(),
    );
    let weights = dir.join("bad.safetensors");
    ckpt.save_safetensors(&weights).unwrap();
    let err = logits_fails(&deit("config.json"), &weights, &deit("input.safetensors"));
    assert!(
        err.contains("blocks.1.attn.qkv.weight: expected [192, 64], found [192, 32]"),
        "{err}"
    );
}

#[test]
fn invalid_configs_are_refused() {
    let dir = scratch("configs");
    let valid = std::fs::read_to_string(deit("config.json")).unwrap();
    let depth_zero = valid.replace("\"depth\": 2", "\"depth\": 0");
    let bad_heads = valid.replace("\"num_heads\": 4", "\"num_heads\": 3");
    assert_ne!(depth_zero, valid, "fixture config layout changed");
    assert_ne!(bad_heads, valid, "fixture config layout changed");
    for (name, text, reason) in [
        ("depth0.json", depth_zero, "depth"),
        ("heads.json", bad_heads, "divisible"),
    ] {
        let config = dir.join(name);
        std::fs::write(&config, text).unwrap();
        let err = logits_fails(
            &config,
            &deit("weights.safetensors"),
            &deit("input.safetensors"),
        );
        assert!(err.contains(reason), "{err}");
    }
}

#[test]
fn empty_batch_and_wrong_image_size_are_refused() {
    let dir = scratch("inputs");
    for (name, shape) in [("empty", [0, 3, 32, 32]), ("size", [1, 3, 48, 48])] {
        let mut ckpt = Checkpoint::default();
        ckpt.insert("input", Tensor::zeros(&shape).unwrap());
        let input = dir.join(format!("{name}.safetensors"));
        ckpt.save_safetensors(&input).unwrap();
        let err = logits_fails(&deit("config.json"), &deit("weights.safetensors"), &input);
        assert!(err.contains("(batch >= 1, 3, 32, 32)"), "{err}");
    }
    let mut ckpt = Checkpoint::default();
    ckpt.insert("images", Tensor::zeros(&[1, 3, 32, 32]).unwrap());
    let input = dir.join("misnamed.safetensors");
    ckpt.save_safetensors(&input).unwrap();
    let err = logits_fails(&deit("config.json"), &deit("weights.safetensors"), &input);
    assert!(err.contains("`input`"), "{err}");
}

#[test]
fn oversized_batches_are_refused_before_allocating() {
    for batch in ["100000000000", "18446744073709551615"] {
        let out = idlevit(&[
            "bench",
            "--model",
            "deit_tiny",
            "--batch",
            batch,
            "--runs",
            "1",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(
            // Refused by the memory estimate, before any image batch is sized.
            stderr.starts_with("error: ") && stderr.contains("needs more memory than")
                || stderr.contains("GiB of memory, more than"),
            "{stderr}"
        );
    }
}

#[test]
fn classify_prints_top_classes_and_names_the_files_it_cannot_read() {
    let image = fixtures().join("images/sample.png");
    let out = idlevit(&[
        "classify",
        "--config",
        path(&deit("config.json")),
        "--weights",
        path(&deit("weights.safetensors")),
        "--top",
        "3",
        path(&image),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().count(), 4, "{stdout}");

    // An undecodable file among good ones is named, the others are still classified, and
    // the command fails at the end.
    let bad = fixtures().join("images/not_an_image.png");
    let out = idlevit(&[
        "classify",
        "--config",
        path(&deit("config.json")),
        "--weights",
        path(&deit("weights.safetensors")),
        "--top",
        "3",
        path(&image),
        path(&bad),
        path(&image),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stdout.lines().count(), 8, "{stdout}");
    assert_eq!(stdout.matches("sample.png").count(), 2, "{stdout}");
    assert!(!stdout.contains("not_an_image.png"), "{stdout}");
    assert_eq!(stderr.matches("not_an_image.png").count(), 1, "{stderr}");
    assert!(
        stderr.contains("1 of 3 image files could not be read") && !stderr.contains("panicked"),
        "{stderr}"
    );

    let out = idlevit(&[
        "classify",
        "--config",
        path(&deit("config.json")),
        "--weights",
        path(&deit("weights.safetensors")),
        path(&bad),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(
        stderr.contains("not_an_image.png") && !stderr.contains("panicked"),
        "{stderr}"
    );
}

#[test]
fn a_closed_pipe_ends_output_quietly() {
    // As `idlevit flops ... | head -0`, with the reader gone before the command writes.
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_idlevit"))
        .args(["flops", "--model", "deit_small", "--keep-rate", "0.7"])
        .stdout(writer)
        .output()
        .expect("the idlevit binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}
