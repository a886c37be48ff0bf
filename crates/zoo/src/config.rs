//! DeiT hyper-parameters: the published sizes and free-form JSON configs.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Result, ZooError};

/// The shape of a DeiT / ViT model, with the keys of the CLI's `CFG.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeiTConfig {
    /// Input image side in pixels (square images).
    pub img_size: usize,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// Token width `C`.
    pub embed_dim: usize,
    /// Number of transformer blocks.
    pub depth: usize,
    /// Attention heads per block.
    pub num_heads: usize,
    /// MLP hidden width as a multiple of `embed_dim`.
    pub mlp_ratio: f64,
    /// Classifier outputs; 0 means no head (the model returns CLS features).
    pub num_classes: usize,
    /// Whether the qkv projection has a bias.
    pub qkv_bias: bool,
}

/// Names accepted by [`DeiTConfig::named`].
pub const NAMED_MODELS: &[&str] = &["deit_tiny", "deit_small", "deit_base"];

impl DeiTConfig {
    /// DeiT-Tiny, patch 16, 224x224 (timm `deit_tiny_patch16_224`).
    pub fn tiny() -> Self {
        Self::imagenet(192, 3)
    }

    /// DeiT-Small, patch 16, 224x224 (timm `deit_small_patch16_224`).
    pub fn small() -> Self {
        Self::imagenet(384, 6)
    }

    /// DeiT-Base, patch 16, 224x224 (timm `deit_base_patch16_224`).
    pub fn base() -> Self {
        Self::imagenet(768, 12)
    }

    fn imagenet(embed_dim: usize, num_heads: usize) -> Self {
        Self {
            img_size: 224,
            patch_size: 16,
            embed_dim,
            depth: 12,
            num_heads,
            mlp_ratio: 4.0,
            num_classes: 1000,
            qkv_bias: true,
        }
    }

    /// A published size by name: `deit_tiny`, `deit_small` or `deit_base` (timm's full names
    /// such as `deit_small_patch16_224` work too).
    pub fn named(name: &str) -> Result<Self> {
        match name.trim_end_matches("_patch16_224") {
            "deit_tiny" => Ok(Self::tiny()),
            "deit_small" => Ok(Self::small()),
            "deit_base" => Ok(Self::base()),
            _ => Err(ZooError::UnknownModel {
                name: name.to_string(),
                known: NAMED_MODELS.join(", "),
            }),
        }
    }

    /// Parses and validates a JSON config; unknown keys are an error.
    pub fn from_json(text: &str) -> Result<Self> {
        let config: Self =
            serde_json::from_str(text).map_err(|e| ZooError::Config(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a JSON config file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let located = |message: String| ZooError::ConfigFile {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| located(e.to_string()))?;
        Self::from_json(&text).map_err(|e| located(e.to_string()))
    }

    /// Checks that the numbers describe a model that can run.
    pub fn validate(&self) -> Result<()> {
        let fail = |msg: String| Err(ZooError::Config(msg));
        if self.depth == 0 {
            return fail("depth must be at least 1".into());
        }
        if self.embed_dim == 0 || self.num_heads == 0 {
            return fail("embed_dim and num_heads must be at least 1".into());
        }
        if !self.embed_dim.is_multiple_of(self.num_heads) {
            return fail(format!(
                "embed_dim {} is not divisible by num_heads {}",
                self.embed_dim, self.num_heads
            ));
        }
        if self.patch_size == 0
            || self.img_size == 0
            || !self.img_size.is_multiple_of(self.patch_size)
        {
            return fail(format!(
                "img_size {} must be a positive multiple of patch_size {}",
                self.img_size, self.patch_size
            ));
        }
        if !(self.mlp_ratio.is_finite() && self.mlp_ratio > 0.0) || self.mlp_hidden() == 0 {
            return fail(format!(
                "mlp_ratio {} gives no hidden units",
                self.mlp_ratio
            ));
        }
        Ok(())
    }

    /// The number of image tokens `N`.
    pub fn num_patches(&self) -> usize {
        (self.img_size / self.patch_size).pow(2)
    }

    /// The MLP hidden width, `int(embed_dim * mlp_ratio)` as timm computes it.
    pub fn mlp_hidden(&self) -> usize {
        (self.embed_dim as f64 * self.mlp_ratio) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"{"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2,
        "num_heads": 4, "mlp_ratio": 4.0, "num_classes": 10, "qkv_bias": true}"#;

    #[test]
    fn parses_valid_and_names() {
        let cfg = DeiTConfig::from_json(VALID).unwrap();
        assert_eq!((cfg.num_patches(), cfg.mlp_hidden()), (16, 256));
        assert_eq!(
            DeiTConfig::named("deit_small_patch16_224").unwrap(),
            DeiTConfig::small()
        );
        assert!(
            DeiTConfig::named("resnet50")
                .unwrap_err()
                .to_string()
                .contains("deit_tiny")
        );
    }

    #[test]
    fn rejects_bad_configs_with_reasons() {
        let cases = [
            (VALID.replace("\"depth\": 2", "\"depth\": 0"), "depth"),
            (
                VALID.replace("\"num_heads\": 4", "\"num_heads\": 3"),
                "divisible",
            ),
            (
                VALID.replace("\"patch_size\": 8", "\"patch_size\": 5"),
                "multiple",
            ),
            (
                VALID.replace("\"mlp_ratio\": 4.0", "\"mlp_ratio\": 0.0"),
                "mlp_ratio",
            ),
            (
                VALID.replace("\"qkv_bias\": true", "\"qkv_bias\": true, \"drop\": 0.1"),
                "unknown field",
            ),
            (VALID.replace("\"img_size\": 32,", ""), "missing field"),
            ("[1, 2]".to_string(), "expected struct DeiTConfig"),
            ("{\"img_size\": \"big\"}".to_string(), "invalid type"),
        ];
        for (json, reason) in cases {
            let err = DeiTConfig::from_json(&json).unwrap_err().to_string();
            assert!(err.contains(reason), "{json}: {err}");
        }
    }
}
