//! A generated image-folder task shared by the finetuning and evaluation tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use idlevit_zoo::{DeiT, DeiTConfig};

/// A scratch directory of one test, removed with everything in it when dropped (so a test
/// run leaves nothing behind); it derefs to its path.
pub struct Scratch(tempfile::TempDir);

impl std::ops::Deref for Scratch {
    type Target = Path;

    fn deref(&self) -> &Path {
        self.0.path()
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        self.0.path()
    }
}

/// A fresh scratch directory named after `test`: `idlevit-cli-TEST-XXXXXX` in the system's
/// temp folder.
pub fn scratch(test: &str) -> Scratch {
    let dir = tempfile::Builder::new()
        .prefix(&format!("idlevit-cli-{test}-"))
        .tempdir()
        .expect("temp dir");
    Scratch(dir)
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

pub const CONFIG: &str = r#"{"img_size": 16, "patch_size": 8, "embed_dim": 16, "depth": 2, "num_heads": 2,
    "mlp_ratio": 2.0, "num_classes": 3, "qkv_bias": true, "idle_layers": [1], "keep_ratios": [0.5]}"#;

/// A tiny LV-ViT: 16 blocks (the release's S schedule) of width 8 over 4 tokens of 32x32
/// images, 3 classes.
pub const LVVIT: &str = r#"{"family": "lvvit", "img_size": 32, "patch_size": 16, "stem_channels": 4,
    "embed_dim": 8, "depth": 16, "num_heads": 2, "mlp_ratio": 3.0, "num_classes": 3,
    "skip_lam": 2.0}"#;

/// A tiny PVT-v2: four one-block stages on 16x16 to 2x2 grids of 64x64 images, 3 classes.
pub const PVT: &str = r#"{"family": "pvt_v2", "img_size": 64, "embed_dims": [4, 4, 8, 8],
    "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2], "sr_ratios": [4, 2, 1, 1],
    "mlp_ratios": [2.0, 2.0, 2.0, 2.0], "num_classes": 3}"#;

/// `dir/<class>/<i>.png`: class c is a bright square in corner c on a dark background.
pub fn write_folder(dir: &Path, per_class: usize) {
    for class in 0..3u32 {
        let folder = dir.join(format!("class{class}"));
        std::fs::create_dir_all(&folder).unwrap();
        for i in 0..per_class as u32 {
            let image = image::RgbImage::from_fn(20, 20, |x, y| {
                let corner = (x < 10) as u32 + 2 * (y < 10) as u32;
                let v = if corner == class {
                    220
                } else {
                    30 + ((x * 7 + y * 3 + i * 11) % 40) as u8 as u32
                };
                image::Rgb([v as u8, v as u8, v as u8])
            });
            image.save(folder.join(format!("{i}.png"))).unwrap();
        }
    }
}

/// A scratch directory holding a tiny DeiT's config and weights and an image folder
/// (`data/train`, `data/val`), with the config and weights paths.
pub fn setup(test: &str) -> (Scratch, PathBuf, PathBuf) {
    let dir = scratch(test);
    let config = dir.join("config.json");
    std::fs::write(&config, CONFIG).unwrap();
    let model = DeiT::random(&DeiTConfig::from_json(CONFIG).unwrap(), 3).unwrap();
    let weights = dir.join("weights.safetensors");
    model
        .to_checkpoint()
        .unwrap()
        .save_safetensors(&weights)
        .unwrap();
    write_folder(&dir.join("data/train"), 4);
    write_folder(&dir.join("data/val"), 2);
    (dir, config, weights)
}

/// `finetune --config C --weights W --data D --out O` followed by `extra`.
pub fn finetune_args(
    config: &Path,
    weights: &Path,
    data: &Path,
    out: &Path,
    extra: &[&str],
) -> Vec<String> {
    let mut args: Vec<String> = ["finetune", "--config", s(config), "--weights", s(weights)]
        .iter()
        .map(|a| a.to_string())
        .collect();
    args.extend(["--data", s(data), "--out", s(out)].map(String::from));
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

/// Runs the `idlevit` binary with `args`.
pub fn idlevit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_idlevit"))
        .args(args)
        .output()
        .expect("the idlevit binary runs")
}

/// The standard output of a run that must have succeeded.
pub fn success(run: &Output) -> String {
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    String::from_utf8_lossy(&run.stdout).into_owned()
}

/// The standard error of a run that must have failed.
pub fn failure(run: &Output) -> String {
    assert!(
        !run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stdout)
    );
    String::from_utf8_lossy(&run.stderr).into_owned()
}

/// The value on the `name value` line of `stdout`.
pub fn printed(stdout: &str, name: &str) -> f32 {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `{name}` line in {stdout}"))
}
