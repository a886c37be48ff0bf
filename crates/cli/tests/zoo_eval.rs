//! `idlevit eval` on LV-ViT and PVT-v2 models: the printed top-1 is the one the library's
//! forward pass gives on the same preprocessed images, dense and idle.

use std::process::Command;

use idlevit_cli::data::ImageFolder;
use idlevit_cli::evaluate::evaluate;
use idlevit_cli::policy::compared_policy;
use idlevit_zoo::{PolicyKind, TokenPolicy, ZooConfig, ZooModel};

mod common;
use common::{s, scratch, write_folder};

#[test]
fn eval_scores_every_zoo_family() {
    let dir = scratch("zoo-eval");
    let folder = dir.join("data");
    write_folder(&folder, 2);
    let data = ImageFolder::open(&folder).unwrap();
    for name in ["pvt_v2_b0", "lvvit_s"] {
        let config = ZooConfig::named(name).unwrap();
        let model = ZooModel::random(&config, 4).unwrap();
        let checkpoint = match &model {
            ZooModel::LvVit(m) => m.to_checkpoint().unwrap(),
            ZooModel::Pvt(m) => m.to_checkpoint().unwrap(),
            ZooModel::DeiT(m) => m.to_checkpoint().unwrap(),
        };
        let weights = dir.join(format!("{name}.safetensors"));
        checkpoint.save_safetensors(&weights).unwrap();
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
