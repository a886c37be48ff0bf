//! Models from weight files (safetensors or `.pth`, read by content), and the embedded default
//! model: a small DeiT trained from scratch on the digits task ([`idlevit_data::digits`]), so
//! that `classify` and `cargo xtask repro` run with no download. `fixtures/README.md` gives
//! the exact command that trained it.

use std::path::Path;

use idlevit_checkpoint::Checkpoint;
use idlevit_data::DigitsTask;
use idlevit_data::weights::read_checkpoint;
use idlevit_zoo::{DeiT, DeiTConfig, LvVit, ZooConfig, ZooModel};

use crate::Result;
use crate::error::Context;

/// A DeiT from `weights` when given (`role` and `strict` as for [`read_checkpoint`]), else
/// seeded random weights.
pub fn load_model(
    config: &DeiTConfig,
    weights: Option<&Path>,
    role: &str,
    strict: bool,
) -> Result<DeiT> {
    match weights {
        Some(path) => {
            let ckpt = read_checkpoint(path, role, strict)?;
            DeiT::load(config, ckpt)
                .context(|| format!("{role} {} do not fit the model", path.display()))
        }
        None => Ok(DeiT::random(config, 0)?),
    }
}

/// A model of any family: from `weights` when given (LV-ViT release checkpoints adapted to
/// the zoo's names; `role` and `strict` as for [`read_checkpoint`]), else seeded random
/// weights.
pub fn load_zoo_model(
    config: &ZooConfig,
    weights: Option<&Path>,
    role: &str,
    strict: bool,
) -> Result<ZooModel> {
    let Some(path) = weights else {
        return Ok(ZooModel::random(config, 0)?);
    };
    let mut ckpt = read_checkpoint(path, role, strict)?;
    if matches!(config, ZooConfig::LvVit(_)) {
        ckpt = LvVit::adapt(ckpt);
    }
    ZooModel::load(config, ckpt)
        .context(|| format!("{role} {} do not fit the model", path.display()))
}

/// The default model's weights (safetensors, timm names).
pub const DEFAULT_WEIGHTS: &[u8] = include_bytes!("../assets/digits/model.safetensors");

/// The default model's config (JSON, the keys of `CFG.json`).
pub const DEFAULT_CONFIG: &str = include_str!("../assets/digits/config.json");

/// The default model's class names, by label.
pub const DEFAULT_LABELS: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

/// The default model's configuration: 64x64 images, patch 8, width 64, depth 12, 4 heads.
pub fn default_config() -> Result<DeiTConfig> {
    DeiTConfig::from_json(DEFAULT_CONFIG)
        .context(|| "the embedded default config is invalid".into())
}

/// The default model, dense.
pub fn default_model() -> Result<DeiT> {
    let ckpt = Checkpoint::from_safetensors_bytes(DEFAULT_WEIGHTS)?;
    DeiT::load(&default_config()?, ckpt)
        .context(|| "the embedded default weights do not fit".into())
}

/// The larger-digit model's weights: the default model finetuned on the larger-digit task.
pub const LARGER_DIGIT_WEIGHTS: &[u8] = include_bytes!("../assets/larger-digit/model.safetensors");

/// The dense model of a digits task: the default model for digits, its finetune on the
/// larger-digit task for that one; both have the default configuration.
pub fn task_model(task: DigitsTask) -> Result<DeiT> {
    match task {
        DigitsTask::Digit => default_model(),
        DigitsTask::LargerDigit => {
            let ckpt = Checkpoint::from_safetensors_bytes(LARGER_DIGIT_WEIGHTS)?;
            DeiT::load(&default_config()?, ckpt)
                .context(|| "the embedded larger-digit weights do not fit".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use idlevit_data::digits::{DigitsOptions, embedded_split};
    use idlevit_data::preprocess::{EvalTransform, preprocess};
    use idlevit_nn::Eager;
    use idlevit_tensor::Tensor;

    #[test]
    fn the_default_model_reads_validation_digits() {
        let model = default_model().unwrap();
        let split = embedded_split(&DigitsOptions::default()).unwrap();
        let transform = EvalTransform::for_size(64);
        let images: Vec<f32> = split.val[..64]
            .iter()
            .flat_map(|c| {
                let image = image::DynamicImage::ImageRgb8(c.image.clone());
                preprocess(&image, &transform).unwrap().into_vec()
            })
            .collect();
        let batch = Tensor::from_vec(vec![64, 3, 64, 64], images).unwrap();
        let logits = model.forward(&Eager, &batch).unwrap().to_vec();
        let correct = logits
            .chunks(10)
            .zip(&split.val[..64])
            .filter(|(row, c)| {
                let best = (0..10).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
                best == c.label
            })
            .count();
        // Chance is 6 of 64; the model reads 97.55% of all 449 validation canvases.
        assert!(correct >= 58, "{correct} of 64 validation digits right");
    }
}
