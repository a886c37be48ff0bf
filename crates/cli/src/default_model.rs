//! The embedded default model: a small DeiT trained from scratch on the digits task
//! ([`crate::digits`]), so that `classify` and `cargo xtask repro` run with no download.
//! `fixtures/README.md` gives the exact command that trained it.

use anyhow::{Context, Result};
use idlevit_checkpoint::Checkpoint;
use idlevit_zoo::{DeiT, DeiTConfig};

/// The default model's weights (safetensors, timm names).
pub const DEFAULT_WEIGHTS: &[u8] = include_bytes!("../../../fixtures/digits/model.safetensors");

/// The default model's config (JSON, the keys of `CFG.json`).
pub const DEFAULT_CONFIG: &str = include_str!("../../../fixtures/digits/config.json");

/// The default model's class names, by label.
pub const DEFAULT_LABELS: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

/// The default model's configuration: 64x64 images, patch 8, width 64, depth 12, 4 heads.
pub fn default_config() -> Result<DeiTConfig> {
    DeiTConfig::from_json(DEFAULT_CONFIG).context("the embedded default config is invalid")
}

/// The default model, dense.
pub fn default_model() -> Result<DeiT> {
    let ckpt = Checkpoint::from_safetensors_bytes(DEFAULT_WEIGHTS)?;
    DeiT::load(&default_config()?, ckpt).context("the embedded default weights do not fit")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digits::{DigitsOptions, embedded_split};
    use crate::preprocess::{EvalTransform, preprocess};
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
        // Chance is 6 of 64; the trained model reads most digits.
        assert!(correct >= 40, "{correct} of 64 validation digits right");
    }
}
