//! DeiT hyper-parameters: the published sizes and free-form JSON configs; the limits every
//! family's config keeps to; and (`file`) how config text and files are read.

mod file;

use std::path::Path;

use idlevit_selector::Schedule;
use serde::{Deserialize, Serialize};

pub use file::MAX_CONFIG_BYTES;
pub(crate) use file::{json_error, parse_json, quoted, read_config_file, unknown_model};

use crate::error::bail;
use crate::{Result, ZooError};

/// The shape of a DeiT / ViT model, with the keys of the CLI's `CFG.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a DeiT config object")]
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
    /// Classifier outputs (at least 1).
    pub num_classes: usize,
    /// Whether the qkv projection has a bias.
    pub qkv_bias: bool,
    /// Idle layers (0-based block indices) of a custom idle schedule; with `keep_ratios`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_layers: Option<Vec<usize>>,
    /// Keep ratio of each idle layer of a custom schedule; with `idle_layers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_ratios: Option<Vec<f64>>,
}

/// The custom idle schedule of a config's `idle_layers` and `keep_ratios` lists (every family
/// reads them alike), or `None` without them; one list without the other is an error.
pub(crate) fn schedule_lists(
    idle_layers: &Option<Vec<usize>>,
    keep_ratios: &Option<Vec<f64>>,
) -> Result<Option<Schedule>> {
    match (idle_layers, keep_ratios) {
        (None, None) => Ok(None),
        (Some(layers), Some(ratios)) => Schedule::new(layers.clone(), ratios.clone())
            .map(Some)
            .map_err(|e| lists_error(e.into())),
        _ => Err(ZooError::Config(
            "idle_layers and keep_ratios must be given together".into(),
        )),
    }
}

/// `error`, found in a config's schedule lists, under the names of the two fields.
pub(crate) fn lists_error(error: ZooError) -> ZooError {
    let message = match error {
        ZooError::Config(message) => message,
        other => other.to_string(),
    };
    ZooError::Config(format!("idle_layers / keep_ratios: {message}"))
}

/// Most transformer blocks a config may have.
pub const MAX_DEPTH: usize = 1 << 10;

/// Most image patches (tokens besides the class token) a config may have: 16 Ki, a 2048x2048
/// image at patch 16. Attention holds `batch * heads * (patches + 1)^2` scores at once.
pub const MAX_PATCHES: usize = 1 << 14;

/// Most parameters a config may describe: 4 Gi, 16 GiB of `f32` weights.
pub const MAX_PARAMETERS: usize = 1 << 32;

/// Names accepted by [`DeiTConfig::named`]. timm's `vit_*_patch16_224` are the same
/// architecture as its `deit_*_patch16_224` (class token, no distillation token, LayerNorm eps
/// 1e-6, head on the class token); only their published weights and preprocessing differ.
pub const NAMED_MODELS: &[&str] = &[
    "deit_tiny",
    "deit_small",
    "deit_base",
    "vit_tiny_patch16_224",
    "vit_small_patch16_224",
    "vit_base_patch16_224",
];

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
            idle_layers: None,
            keep_ratios: None,
        }
    }

    /// A published size by name: `deit_tiny`, `deit_small` or `deit_base` (timm's full names
    /// such as `deit_small_patch16_224` work too), or timm's `vit_{tiny,small,base}_patch16_224`.
    pub fn named(name: &str) -> Result<Self> {
        match name.trim_end_matches("_patch16_224") {
            "deit_tiny" => Ok(Self::tiny()),
            "deit_small" => Ok(Self::small()),
            "deit_base" => Ok(Self::base()),
            "vit_tiny" if name.ends_with("_patch16_224") => Ok(Self::tiny()),
            "vit_small" if name.ends_with("_patch16_224") => Ok(Self::small()),
            "vit_base" if name.ends_with("_patch16_224") => Ok(Self::base()),
            _ => Err(unknown_model(name, NAMED_MODELS)),
        }
    }

    /// Parses and validates a JSON config; unknown keys are an error.
    pub fn from_json(text: &str) -> Result<Self> {
        parse_json(text, Self::validate)
    }

    /// Reads, parses and validates a JSON config file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        read_config_file(path.as_ref(), Self::from_json)
    }

    /// Checks that the numbers describe a model that can run.
    pub fn validate(&self) -> Result<()> {
        let (img, patch) = (self.img_size, self.patch_size);
        let (dim, heads, depth) = (self.embed_dim, self.num_heads, self.depth);
        if depth == 0 {
            bail!("depth must be at least 1");
        }
        if dim == 0 || heads == 0 {
            bail!("embed_dim and num_heads must be at least 1");
        }
        if self.num_classes == 0 {
            bail!("num_classes must be at least 1");
        }
        if !dim.is_multiple_of(heads) {
            bail!("embed_dim {dim} is not divisible by num_heads {heads}");
        }
        if patch == 0 || img == 0 || !img.is_multiple_of(patch) {
            bail!("img_size {img} must be a positive multiple of patch_size {patch}");
        }
        if !(self.mlp_ratio.is_finite() && self.mlp_ratio > 0.0) || self.mlp_hidden() == 0 {
            bail!("mlp_ratio {} gives no hidden units", self.mlp_ratio);
        }
        if depth > MAX_DEPTH {
            bail!("depth {depth} exceeds the limit of {MAX_DEPTH}");
        }
        let patches = self.num_patches();
        if patches > MAX_PATCHES {
            bail!(
                "img_size {img} with patch_size {patch} gives {patches} patches, more than the \
                 limit of {MAX_PATCHES}"
            );
        }
        match self.parameter_count() {
            Some(n) if n <= MAX_PARAMETERS => {}
            found => bail!(
                "the model would have {} parameters, more than the limit of {MAX_PARAMETERS}",
                found.map_or_else(|| "too many to count".to_string(), |n| n.to_string())
            ),
        }
        if let Some(schedule) = self.schedule()? {
            schedule
                .validate(depth, patches)
                .map_err(|e| lists_error(e.into()))?;
        }
        Ok(())
    }

    /// The custom idle schedule of the config's `idle_layers` and `keep_ratios`, if set;
    /// one list without the other is an error.
    pub fn schedule(&self) -> Result<Option<Schedule>> {
        schedule_lists(&self.idle_layers, &self.keep_ratios)
    }

    /// The number of image tokens `N` (saturating at `usize::MAX` for configs that
    /// [`validate`](Self::validate) refuses).
    pub fn num_patches(&self) -> usize {
        self.img_size
            .checked_div(self.patch_size)
            .unwrap_or(0)
            .saturating_pow(2)
    }

    /// The number of weights of the model, or `None` when it overflows `usize`.
    pub fn parameter_count(&self) -> Option<usize> {
        let c = self.embed_dim;
        let hidden = self.mlp_hidden();
        let p = self.patch_size;
        let patch_embed = c
            .checked_mul(3)?
            .checked_mul(p)?
            .checked_mul(p)?
            .checked_add(c)?;
        let tokens = self.num_patches().checked_add(2)?.checked_mul(c)?;
        let qkv_bias = if self.qkv_bias { c.checked_mul(3)? } else { 0 };
        let attention = c
            .checked_mul(c)?
            .checked_mul(4)?
            .checked_add(c)?
            .checked_add(qkv_bias)?;
        let mlp = hidden
            .checked_mul(c)?
            .checked_mul(2)?
            .checked_add(hidden)?
            .checked_add(c)?;
        let norms = c.checked_mul(4)?;
        let block = attention.checked_add(mlp)?.checked_add(norms)?;
        let head = self.num_classes.checked_mul(c.checked_add(1)?)?;
        block
            .checked_mul(self.depth)?
            .checked_add(patch_embed)?
            .checked_add(tokens)?
            .checked_add(c.checked_mul(2)?)?
            .checked_add(head)
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
        assert_eq!(
            DeiTConfig::named("vit_base_patch16_224").unwrap(),
            DeiTConfig::base()
        );
        assert!(DeiTConfig::named("vit_base").is_err());
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
            (
                VALID.replace(
                    "\"qkv_bias\": true",
                    "\"qkv_bias\": true, \"idle_layers\": [1]",
                ),
                "together",
            ),
            (
                VALID.replace(
                    "\"qkv_bias\": true",
                    "\"qkv_bias\": true, \"idle_layers\": [1, 2], \"keep_ratios\": [0.5, 0.5]",
                ),
                "idle layer 2 does not exist",
            ),
            (
                VALID.replace(
                    "\"qkv_bias\": true",
                    "\"qkv_bias\": true, \"idle_layers\": [1], \"keep_ratios\": [0.5, 0.5]",
                ),
                "1 idle layers but 2 keep ratios",
            ),
            (
                VALID.replace(
                    "\"qkv_bias\": true",
                    "\"qkv_bias\": true, \"idle_layers\": [1], \"keep_ratios\": [1.5]",
                ),
                "outside (0, 1]",
            ),
            (
                VALID.replace(
                    "\"qkv_bias\": true",
                    "\"qkv_bias\": true, \"idle_layers\": [1], \"keep_ratios\": [0.05]",
                ),
                "keeps no token of 16",
            ),
            ("[1, 2]".to_string(), "expected a DeiT config object"),
            (
                VALID.replace("\"num_classes\": 10", "\"num_classes\": 0"),
                "num_classes must be at least 1",
            ),
            ("{\"img_size\": \"big\"}".to_string(), "invalid type"),
        ];
        for (json, reason) in cases {
            let err = DeiTConfig::from_json(&json).unwrap_err().to_string();
            assert!(err.contains(reason), "{json}: {err}");
        }
    }

    #[test]
    fn parameter_count_matches_the_weights() {
        let mut cfg = DeiTConfig::from_json(VALID).unwrap();
        for (qkv_bias, num_classes) in [(true, 10), (false, 1)] {
            cfg.qkv_bias = qkv_bias;
            cfg.num_classes = num_classes;
            let weights = crate::DeiT::random(&cfg, 1)
                .unwrap()
                .to_checkpoint()
                .unwrap();
            let total: usize = weights.iter().map(|(_, t)| t.numel()).sum();
            assert_eq!(cfg.parameter_count(), Some(total));
        }
    }

    /// Configs that once overflowed `num_patches` (`img_size` 2^33 at patch 1) or asked for
    /// more memory than exists are refused with the limit they break.
    #[test]
    fn huge_configs_are_refused() {
        let huge = [
            (
                VALID
                    .replace("\"img_size\": 32", "\"img_size\": 8589934592")
                    .replace("\"patch_size\": 8", "\"patch_size\": 1"),
                "patches",
            ),
            (
                VALID.replace("\"depth\": 2", "\"depth\": 1099511627776"),
                "depth",
            ),
            (
                VALID
                    .replace("\"embed_dim\": 64", "\"embed_dim\": 4294967296")
                    .replace("\"num_heads\": 4", "\"num_heads\": 1"),
                "parameters",
            ),
            (
                VALID.replace("\"mlp_ratio\": 4.0", "\"mlp_ratio\": 1e300"),
                "too many to count",
            ),
            (
                VALID.replace(
                    "\"num_classes\": 10",
                    "\"num_classes\": 18446744073709551615",
                ),
                "parameters",
            ),
            (
                VALID
                    .replace("\"img_size\": 32", "\"img_size\": 4294967296")
                    .replace("\"patch_size\": 8", "\"patch_size\": 4294967296"),
                "parameters",
            ),
        ];
        for (json, reason) in huge {
            let err = DeiTConfig::from_json(&json).unwrap_err().to_string();
            assert!(err.contains(reason), "{json}: {err}");
        }
        assert_eq!(
            DeiTConfig {
                patch_size: 0,
                ..DeiTConfig::tiny()
            }
            .num_patches(),
            0
        );
    }
}
