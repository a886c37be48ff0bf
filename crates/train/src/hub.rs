//! timm hub snapshots: a directory holding `config.json` and `model.safetensors`, as
//! `huggingface-cli download timm/NAME` fetches one and timm's `save_for_hf` writes one. The
//! architecture comes from `architecture` (and `model_args` when timm recorded other sizes),
//! the classes from `num_classes`, the preprocessing from `pretrained_cfg`.

use std::path::{Path, PathBuf};

use idlevit_data::preprocess::{
    CropMode, EvalTransform, IMAGENET_MEAN, IMAGENET_STD, Interpolation,
};
use idlevit_zoo::{TimmArgs, ZooConfig};
use serde_json::{Map, Value};

use crate::{Result, TrainError};

/// The file of a snapshot that describes the model.
pub const CONFIG_FILE: &str = "config.json";

/// The file of a snapshot that holds the weights.
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// Largest `config.json` read: hub configs are a few kilobytes.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// A hub snapshot's model, preprocessing and weights file.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// timm's architecture name (`deit_small_patch16_224`).
    pub architecture: String,
    /// The model's configuration.
    pub config: ZooConfig,
    /// How images are prepared for it.
    pub transform: EvalTransform,
    /// The `model.safetensors` file.
    pub weights: PathBuf,
}

impl Snapshot {
    /// Reads the snapshot in directory `dir`; every error names the file, and the field of
    /// `config.json` where one is wrong.
    pub fn open(dir: &Path) -> Result<Self> {
        let config_path = dir.join(CONFIG_FILE);
        let weights = dir.join(WEIGHTS_FILE);
        if !config_path.is_file() || !weights.is_file() {
            return Err(TrainError::Invalid(format!(
                "{} is a directory but not a timm hub snapshot: it needs {CONFIG_FILE} and \
                 {WEIGHTS_FILE} (missing: {})",
                dir.display(),
                [&config_path, &weights]
                    .iter()
                    .filter(|p| !p.is_file())
                    .filter_map(|p| p.file_name())
                    .map(|n| n.to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let bytes = idlevit_checkpoint::read_file_capped(
            &config_path,
            MAX_CONFIG_BYTES,
            "snapshot config",
        )?;
        let located =
            |message: String| TrainError::Invalid(format!("{}: {message}", config_path.display()));
        let text = String::from_utf8(bytes).map_err(|_| located("not UTF-8 text".into()))?;
        let (architecture, config, transform) = parse_config(&text).map_err(located)?;
        Ok(Self {
            architecture,
            config,
            transform,
            weights,
        })
    }
}

/// The architecture name, model config and transform of a snapshot's `config.json` text, or
/// a message naming the field that is wrong.
pub fn parse_config(text: &str) -> std::result::Result<(String, ZooConfig, EvalTransform), String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(fields) = value else {
        return Err("not a JSON object".into());
    };
    let empty = Map::new();
    let pretrained = match fields.get("pretrained_cfg") {
        None => &empty,
        Some(Value::Object(map)) => map,
        Some(_) => return Err("`pretrained_cfg` is not an object".into()),
    };
    let architecture = match fields.get("architecture") {
        Some(Value::String(name)) => name.clone(),
        Some(_) => return Err("`architecture` is not a string".into()),
        None => return Err("no `architecture` field".into()),
    };
    let num_classes = match (fields.get("num_classes"), pretrained.get("num_classes")) {
        (Some(v), _) => count(v, "num_classes")?,
        (None, Some(v)) => count(v, "pretrained_cfg.num_classes")?,
        (None, None) => return Err("no `num_classes` field".into()),
    };
    if num_classes == 0 {
        return Err(format!(
            "`num_classes` is 0: {architecture} here has no classifier head (a feature \
             extractor); the zoo runs classifiers"
        ));
    }
    let mut args: TimmArgs = match fields.get("model_args") {
        None => TimmArgs::default(),
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| format!("`model_args`: {e}"))?,
    };
    match (fields.get("global_pool"), &args.global_pool) {
        (Some(Value::String(pool)), None) => args.global_pool = Some(pool.clone()),
        (Some(Value::String(_)), Some(_)) | (None, _) => {}
        (Some(_), _) => return Err("`global_pool` is not a string".into()),
    }
    let config = ZooConfig::from_timm(&architecture, num_classes, &args)
        .map_err(|e| format!("`architecture` {architecture}: {e}"))?;
    let transform = data_config(pretrained, config.img_size())?;
    Ok((architecture, config, transform))
}

/// The eval transform of `pretrained_cfg` for a model taking `img_size` images; a missing
/// key takes timm's default (bicubic, crop_pct 0.875, center, ImageNet mean and std).
fn data_config(
    cfg: &Map<String, Value>,
    img_size: usize,
) -> std::result::Result<EvalTransform, String> {
    let field = |key: &str| format!("`pretrained_cfg.{key}`");
    if let Some(v) = cfg.get("input_size") {
        let sizes = numbers(v, &field("input_size"))?;
        let side = img_size as f64;
        if sizes != [3.0, side, side] {
            return Err(format!(
                "{} is {v}; the model takes [3, {img_size}, {img_size}]",
                field("input_size")
            ));
        }
    }
    let interpolation = match cfg.get("interpolation").map(Value::as_str) {
        None | Some(Some("bicubic")) => Interpolation::Bicubic,
        Some(Some("bilinear")) => Interpolation::Bilinear,
        Some(_) => {
            return Err(format!(
                "{} is {}; supported: bicubic, bilinear",
                field("interpolation"),
                cfg["interpolation"]
            ));
        }
    };
    let crop_mode = match cfg.get("crop_mode").map(Value::as_str) {
        None | Some(Some("center")) => CropMode::Center,
        Some(Some("squash")) => CropMode::Squash,
        Some(Some("border")) => CropMode::Border,
        Some(_) => {
            return Err(format!(
                "{} is {}; expected center, squash or border",
                field("crop_mode"),
                cfg["crop_mode"]
            ));
        }
    };
    let crop_pct = match cfg.get("crop_pct") {
        None | Some(Value::Null) => 0.875,
        Some(v) => v
            .as_f64()
            .ok_or_else(|| format!("{} is {v}, not a number", field("crop_pct")))?,
    };
    let channels = |key: &str, default: [f32; 3]| match cfg.get(key) {
        None => Ok(default),
        Some(v) => match numbers(v, &field(key))?.as_slice() {
            &[r, g, b] => Ok([r as f32, g as f32, b as f32]),
            _ => Err(format!(
                "{} is {v}; expected three numbers (RGB)",
                field(key)
            )),
        },
    };
    let mean = channels("mean", IMAGENET_MEAN)?;
    let std = channels("std", IMAGENET_STD)?;
    EvalTransform::timm(img_size, crop_pct, crop_mode, interpolation, mean, std)
        .map_err(|e| format!("`pretrained_cfg`: {e}"))
}

/// The transform for a model named `--model NAME` (weights given as a plain file): timm's
/// `vit_*` checkpoints are normalised with mean = std = 0.5 at crop 0.9; every other name
/// takes the DeiT default of [`EvalTransform::for_size`].
pub fn named_transform(name: &str, img_size: usize) -> EvalTransform {
    let default = EvalTransform::for_size(img_size);
    if name.starts_with("vit_") {
        let half = [0.5; 3];
        EvalTransform::timm(
            img_size,
            0.9,
            CropMode::Center,
            Interpolation::Bicubic,
            half,
            half,
        )
        .unwrap_or(default)
    } else {
        default
    }
}

/// A non-negative integer field.
fn count(v: &Value, key: &str) -> std::result::Result<usize, String> {
    v.as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| format!("`{key}` is {v}, not a non-negative integer"))
}

/// A list of numbers, named `key` in errors.
fn numbers(v: &Value, key: &str) -> std::result::Result<Vec<f64>, String> {
    v.as_array()
        .and_then(|items| items.iter().map(Value::as_f64).collect::<Option<Vec<_>>>())
        .ok_or_else(|| format!("{key} is {v}, not a list of numbers"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEIT: &str = r#"{"architecture": "deit_small_patch16_224", "num_classes": 1000,
        "global_pool": "token", "pretrained_cfg": {"tag": "fb_in1k", "input_size": [3, 224, 224],
        "interpolation": "bicubic", "crop_pct": 0.9, "crop_mode": "center",
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "num_classes": 1000}}"#;

    #[test]
    fn a_hub_config_gives_model_and_transform() {
        let (name, config, transform) = parse_config(DEIT).unwrap();
        assert_eq!(name, "deit_small_patch16_224");
        assert_eq!(config, idlevit_zoo::DeiTConfig::small().into());
        assert_eq!((transform.resize, transform.crop), (248, 224));
        assert_eq!(transform.mean, IMAGENET_MEAN);
        let bilinear = DEIT
            .replace("bicubic", "bilinear")
            .replace("center", "squash")
            .replace("[0.485, 0.456, 0.406]", "[0.5, 0.5, 0.5]");
        let (_, _, transform) = parse_config(&bilinear).unwrap();
        assert_eq!(transform.interpolation, Interpolation::Bilinear);
        assert_eq!(transform.crop_mode, CropMode::Squash);
        assert_eq!(transform.mean, [0.5; 3]);
    }

    #[test]
    fn named_models_take_their_checkpoints_normalisation() {
        let vit = named_transform("vit_small_patch16_224.augreg_in21k_ft_in1k", 224);
        assert_eq!((vit.mean, vit.std, vit.resize), ([0.5; 3], [0.5; 3], 248));
        let deit = named_transform("deit_small_patch16_224.fb_in1k", 224);
        assert_eq!(deit, EvalTransform::for_size(224));
    }

    /// A PVT-v2 snapshot as `save_for_hf` writes it: `avg` pooling, no shape arguments.
    #[test]
    fn a_pvt_snapshot_config_is_read() {
        let pvt = r#"{"architecture": "pvt_v2_b0", "num_classes": 1000, "num_features": 256,
            "global_pool": "avg", "model_args": {"in_chans": 3, "num_classes": 1000,
            "global_pool": "avg"}, "pretrained_cfg": {"tag": "in1k", "input_size": [3, 224, 224],
            "interpolation": "bicubic", "crop_pct": 0.9, "crop_mode": "center"}}"#;
        let (_, config, transform) = parse_config(pvt).unwrap();
        assert_eq!(config, idlevit_zoo::PvtConfig::b0().into());
        assert_eq!((transform.resize, transform.std), (248, IMAGENET_STD));
        let token = pvt.replace("\"avg\"", "\"token\"");
        assert!(parse_config(&token).unwrap_err().contains("`avg` only"));
    }

    #[test]
    fn every_wrong_field_is_named() {
        let cases = [
            (
                DEIT.replace("deit_small_patch16_224", "resnet50"),
                "unknown model `resnet50`",
            ),
            (
                DEIT.replace("\"num_classes\": 1000,\n", "\"num_classes\": 0,\n"),
                "no classifier",
            ),
            (
                DEIT.replace("[3, 224, 224]", "[3, 256, 256]"),
                "pretrained_cfg.input_size",
            ),
            (
                DEIT.replace("\"bicubic\"", "\"lanczos\""),
                "pretrained_cfg.interpolation",
            ),
            (
                DEIT.replace("\"center\"", "\"middle\""),
                "pretrained_cfg.crop_mode",
            ),
            (
                DEIT.replace("0.9,", "1.5,"),
                "crop_pct 1.5 is not in (0, 1]",
            ),
            (DEIT.replace("0.9,", "\"a\","), "pretrained_cfg.crop_pct"),
            (
                DEIT.replace("[0.229, 0.224, 0.225]", "[0.2, 0.2]"),
                "pretrained_cfg.std",
            ),
            (
                DEIT.replace("[0.229, 0.224, 0.225]", "[0.2, 0.2, 0]"),
                "not positive",
            ),
            (DEIT.replace("\"token\"", "\"avg\""), "`token` only"),
            (
                DEIT.replace(
                    "\"global_pool\"",
                    "\"model_args\": {\"class_token\": false}, \"g\"",
                ),
                "`model_args`: unknown field `class_token`",
            ),
            ("[]".into(), "not a JSON object"),
        ];
        for (text, needle) in cases {
            let err = parse_config(&text).unwrap_err();
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }

    #[test]
    fn a_directory_without_both_files_is_named() {
        let dir = std::env::temp_dir().join(format!("idlevit-hub-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = Snapshot::open(&dir).unwrap_err().to_string();
        assert!(err.contains("config.json, model.safetensors"), "{err}");
        std::fs::write(dir.join(CONFIG_FILE), "{\"architecture\": 3}").unwrap();
        std::fs::write(dir.join(WEIGHTS_FILE), "").unwrap();
        let err = Snapshot::open(&dir).unwrap_err().to_string();
        assert!(
            err.contains("config.json: `architecture` is not a string"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
