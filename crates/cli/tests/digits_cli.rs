//! `idlevit digits` writes the task as an image folder; `classify` without `--weights` runs
//! the embedded digits model; `finetune` trains from scratch and writes bare weights.

use std::path::PathBuf;
use std::process::{Command, Output};

mod common;
use common::scratch;

fn idlevit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_idlevit"))
        .args(args)
        .output()
        .expect("the idlevit binary runs")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn digits_folder_default_classify_and_training_from_scratch() {
    let dir = scratch("digits");
    let data = dir.join("digits");
    let data_str = data.to_str().unwrap();
    let stdout = ok(&idlevit(&[
        "digits",
        "--out",
        data_str,
        "--train-copies",
        "1",
    ]));
    assert!(
        stdout.contains("1348 training and 449 validation"),
        "{stdout}"
    );
    let mut sevens: Vec<PathBuf> = std::fs::read_dir(data.join("val/7"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    sevens.sort();
    assert!(sevens.len() > 30);

    // The embedded model, its digit names as labels: far more sevens come out as 7 than the
    // 2 of 20 chance would give.
    let images: Vec<&str> = sevens[..20].iter().map(|p| p.to_str().unwrap()).collect();
    let mut args = vec!["classify", "--top", "1"];
    args.extend(&images);
    let stdout = ok(&idlevit(&args));
    let sevens_read = stdout
        .lines()
        .filter(|l| l.trim().starts_with("7 "))
        .count();
    assert!(sevens_read >= 8, "{sevens_read} of 20\n{stdout}");
    let refused = idlevit(&["classify", "--model", "deit_tiny", images[0]]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("need --weights"));

    // From scratch on the validation half, a small model: bare weights come out and load.
    let config_path = dir.join("config.json");
    std::fs::write(
        &config_path,
        r#"{"img_size": 64, "patch_size": 16, "embed_dim": 16, "depth": 1, "num_heads": 2,
            "mlp_ratio": 2.0, "num_classes": 10, "qkv_bias": true,
            "idle_layers": [0], "keep_ratios": [0.5]}"#,
    )
    .unwrap();
    let config = config_path.to_str().unwrap();
    let weights = dir.join("w.safetensors");
    let out = dir.join("run");
    let stdout = ok(&idlevit(&[
        "finetune",
        "--config",
        config,
        "--data",
        data.join("val").to_str().unwrap(),
        "--epochs",
        "1",
        "--batch",
        "64",
        "--lr",
        "1e-3",
        "--init-seed",
        "3",
        "--out",
        out.to_str().unwrap(),
        "--weights-out",
        weights.to_str().unwrap(),
    ]));
    assert!(stdout.contains("epoch 1 mean loss"), "{stdout}");
    let stdout = ok(&idlevit(&[
        "eval",
        "--config",
        config,
        "--weights",
        weights.to_str().unwrap(),
        "--data",
        data.join("val").to_str().unwrap(),
        "--mode",
        "idle",
    ]));
    assert!(stdout.contains("(449 images)"), "{stdout}");
}
