//! `idlevit eval` and `logits` on LV-ViT and PVT-v2 models: the printed top-1 is the one the
//! library's forward pass gives on the same preprocessed images, and the written logits are
//! the library's, dense and idle.

use std::process::Command;

use idlevit_checkpoint::Checkpoint;
use idlevit_cli::policy::compared_policy;
use idlevit_data::ImageFolder;
use idlevit_nn::Eager;
use idlevit_tensor::Tensor;
use idlevit_train::evaluate::evaluate;
use idlevit_zoo::{PolicyKind, TokenPolicy, ZooConfig, ZooModel};

mod common;
use common::{s, scratch, write_folder};

/// Writes `model`'s weights under its family's names and returns the path.
fn save_weights(model: &ZooModel, path: &std::path::Path) -> std::path::PathBuf {
    let checkpoint = match model {
        ZooModel::LvVit(m) => m.to_checkpoint().unwrap(),
        ZooModel::Pvt(m) => m.to_checkpoint().unwrap(),
        ZooModel::DeiT(m) => m.to_checkpoint().unwrap(),
    };
    checkpoint.save_safetensors(path).unwrap();
    path.to_path_buf()
}

#[test]
fn eval_scores_every_zoo_family() {
    let dir = scratch("zoo-eval");
    let folder = dir.join("data");
    write_folder(&folder, 2);
    let data = ImageFolder::open(&folder).unwrap();
    for name in ["pvt_v2_b0", "lvvit_s"] {
        let config = ZooConfig::named(name).unwrap();
        let model = ZooModel::random(&config, 4).unwrap();
        let weights = save_weights(&model, &dir.join(format!("{name}.safetensors")));
        let idle = compared_policy(&config, PolicyKind::Idle, Some(0.7)).unwrap();
        for (policy, mode) in [(TokenPolicy::Dense, None), (idle, Some("0.7"))] {
            let expected =
                evaluate(&model.clone().with_policy(policy).unwrap(), &data, 3, false).unwrap();
            let mut args = vec!["eval", "--model", name, "--weights", s(&weights)];
            args.extend(["--data", s(&folder), "--batch", "3"]);
            if let Some(rate) = mode {
                args.extend(["--mode", "idle", "--keep-rate", rate]);
            }
            let out = Command::new(env!("CARGO_BIN_EXE_idlevit"))
                .args(&args)
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let line = format!(
                "top-1 {:.2}%  top-5 {:.2}%  (6 images)",
                100.0 * expected.top1,
                100.0 * expected.top5
            );
            assert!(
                stdout.contains(&line),
                "{name} {mode:?}: {stdout} vs {line}"
            );
        }
    }
}

#[test]
fn logits_runs_every_zoo_family() {
    let dir = scratch("zoo-logits");
    for name in ["pvt_v2_b0", "lvvit_s"] {
        let config = ZooConfig::named(name).unwrap();
        let model = ZooModel::random(&config, 5).unwrap();
        let weights = save_weights(&model, &dir.join(format!("{name}.safetensors")));
        let side = config.img_size();
        let values = (0..3 * side * side).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0);
        let image = Tensor::from_vec(vec![1, 3, side, side], values.collect()).unwrap();
        let mut input = Checkpoint::default();
        input.insert("input", image.clone());
        let input_path = dir.join("input.safetensors");
        input.save_safetensors(&input_path).unwrap();
        let output = dir.join(format!("{name}-logits.safetensors"));
        let idle = compared_policy(&config, PolicyKind::Idle, Some(0.7)).unwrap();
        let expected = model
            .with_policy(idle)
            .unwrap()
            .forward(&Eager, &image)
            .unwrap();
        let args = [
            "logits",
            "--model",
            name,
            "--weights",
            s(&weights),
            "--input",
            s(&input_path),
            "--output",
            s(&output),
            "--mode",
            "idle",
            "--keep-rate",
            "0.7",
        ];
        let out = Command::new(env!("CARGO_BIN_EXE_idlevit"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let written = Checkpoint::load_safetensors(&output).unwrap();
        assert_eq!(
            written.get("logits").unwrap().to_vec(),
            expected.to_vec(),
            "{name}"
        );
    }
}
