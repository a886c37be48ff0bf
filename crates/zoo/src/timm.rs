//! Models as timm describes them in a hub snapshot's `config.json`: an architecture name and
//! the `model_args` timm's `save_for_hf` records when a model was built with other sizes than
//! the name's (`timm.create_model("vit_small_patch16_224", embed_dim=32, depth=2, ...)`).

use serde::Deserialize;

use crate::error::bail;
use crate::{Result, ZooConfig};

/// The architecture arguments of a timm model the zoo can build (the `model_args` object of a
/// snapshot's `config.json`); any other key is refused when parsed, since it would change the
/// architecture in a way the zoo does not follow.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimmArgs {
    /// Input image side, as a number or `[height, width]` (square only).
    pub img_size: Option<ImgSize>,
    /// Input channels (3 only).
    pub in_chans: Option<usize>,
    /// Classifier outputs.
    pub num_classes: Option<usize>,
    /// How the head pools the tokens: `token` for ViT / DeiT, `avg` for PVT-v2.
    pub global_pool: Option<String>,
    /// Patch side in pixels (ViT / DeiT).
    pub patch_size: Option<usize>,
    /// Token width (ViT / DeiT).
    pub embed_dim: Option<usize>,
    /// Number of blocks (ViT / DeiT).
    pub depth: Option<usize>,
    /// Attention heads (ViT / DeiT).
    pub num_heads: Option<usize>,
    /// MLP hidden width as a multiple of the token width (ViT / DeiT).
    pub mlp_ratio: Option<f64>,
    /// Whether the qkv projection has a bias (ViT / DeiT).
    pub qkv_bias: Option<bool>,
}

/// An image size as timm writes it: one side, or `[height, width]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum ImgSize {
    /// A square image's side.
    Side(usize),
    /// `[height, width]`.
    HeightWidth([usize; 2]),
}

impl ImgSize {
    /// The side of a square image, or an error naming both sides of another.
    fn square_side(&self) -> Result<usize> {
        match *self {
            Self::Side(side) => Ok(side),
            Self::HeightWidth([h, w]) if h == w => Ok(h),
            Self::HeightWidth([h, w]) => bail!("img_size [{h}, {w}] is not square"),
        }
    }
}

impl ZooConfig {
    /// The config of timm architecture `architecture` (a name [`ZooConfig::named`] knows;
    /// a pretrained tag after a dot is ignored) with `num_classes` outputs, resized by
    /// `args`. Every argument is checked against the family: a PVT-v2 takes no shape
    /// arguments, and the pooling must be the family's own.
    pub fn from_timm(architecture: &str, num_classes: usize, args: &TimmArgs) -> Result<Self> {
        let mut config = Self::named(architecture)?;
        if let Some(chans) = args.in_chans
            && chans != 3
        {
            bail!("in_chans is {chans}; the zoo's models take 3-channel (RGB) images");
        }
        if let Some(classes) = args.num_classes
            && classes != num_classes
        {
            bail!("model_args num_classes {classes} differs from num_classes {num_classes}");
        }
        let img_size = args
            .img_size
            .as_ref()
            .map(ImgSize::square_side)
            .transpose()?;
        let pool = match &config {
            Self::Pvt(_) => "avg",
            _ => "token",
        };
        if let Some(found) = &args.global_pool
            && found != pool
        {
            bail!(
                "global_pool `{}`: {architecture} pools with `{pool}` only",
                crate::config::quoted(found)
            );
        }
        match &mut config {
            Self::DeiT(c) => {
                c.img_size = img_size.unwrap_or(c.img_size);
                c.patch_size = args.patch_size.unwrap_or(c.patch_size);
                c.embed_dim = args.embed_dim.unwrap_or(c.embed_dim);
                c.depth = args.depth.unwrap_or(c.depth);
                c.num_heads = args.num_heads.unwrap_or(c.num_heads);
                c.mlp_ratio = args.mlp_ratio.unwrap_or(c.mlp_ratio);
                c.qkv_bias = args.qkv_bias.unwrap_or(c.qkv_bias);
                c.num_classes = num_classes;
                c.validate()?;
            }
            Self::Pvt(c) => {
                let shape_args = [
                    ("patch_size", args.patch_size.is_some()),
                    ("embed_dim", args.embed_dim.is_some()),
                    ("depth", args.depth.is_some()),
                    ("num_heads", args.num_heads.is_some()),
                    ("mlp_ratio", args.mlp_ratio.is_some()),
                    ("qkv_bias", args.qkv_bias.is_some()),
                ];
                if let Some((key, _)) = shape_args.iter().find(|(_, given)| *given) {
                    bail!("{architecture} takes no `{key}` argument");
                }
                c.img_size = img_size.unwrap_or(c.img_size);
                c.num_classes = num_classes;
                c.validate()?;
            }
            Self::LvVit(_) => bail!("{architecture} is not a timm architecture"),
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DeiTConfig, PvtConfig};

    fn args(json: &str) -> TimmArgs {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn timm_names_and_tags_are_architectures() {
        let none = TimmArgs::default();
        for (name, expected) in [
            ("deit_small_patch16_224.fb_in1k", DeiTConfig::small()),
            (
                "vit_tiny_patch16_224.augreg_in21k_ft_in1k",
                DeiTConfig::tiny(),
            ),
            ("vit_base_patch16_224", DeiTConfig::base()),
        ] {
            assert_eq!(ZooConfig::named(name).unwrap(), expected.clone().into());
            assert_eq!(
                ZooConfig::from_timm(name, 1000, &none).unwrap(),
                expected.into()
            );
        }
        assert_eq!(
            ZooConfig::from_timm("pvt_v2_b1.in1k", 1000, &args(r#"{"global_pool": "avg"}"#))
                .unwrap(),
            PvtConfig::b1().into()
        );
        let err = ZooConfig::named("deit_small_distilled_patch16_224.fb_in1k").unwrap_err();
        assert!(err.to_string().contains("vit_small_patch16_224"), "{err}");
    }

    #[test]
    fn model_args_resize_a_vit() {
        let recorded = args(
            r#"{"embed_dim": 32, "depth": 2, "num_heads": 4, "in_chans": 3,
                "num_classes": 7, "global_pool": "token", "img_size": [224, 224]}"#,
        );
        let ZooConfig::DeiT(config) =
            ZooConfig::from_timm("vit_small_patch16_224", 7, &recorded).unwrap()
        else {
            panic!("a ViT is a DeiT-family config");
        };
        assert_eq!(
            (
                config.embed_dim,
                config.depth,
                config.num_heads,
                config.num_classes
            ),
            (32, 2, 4, 7)
        );
    }

    #[test]
    fn model_args_the_zoo_cannot_follow_are_refused() {
        let cases = [
            (
                "deit_tiny_patch16_224",
                r#"{"in_chans": 1}"#,
                "in_chans is 1",
            ),
            ("deit_tiny_patch16_224", r#"{"num_classes": 10}"#, "differs"),
            (
                "deit_tiny_patch16_224",
                r#"{"img_size": [224, 192]}"#,
                "not square",
            ),
            (
                "deit_tiny_patch16_224",
                r#"{"global_pool": "avg"}"#,
                "`token` only",
            ),
            ("pvt_v2_b0", r#"{"global_pool": "token"}"#, "`avg` only"),
            ("pvt_v2_b0", r#"{"depth": 3}"#, "no `depth` argument"),
            (
                "deit_tiny_patch16_224",
                r#"{"num_heads": 5}"#,
                "not divisible",
            ),
        ];
        for (name, json, needle) in cases {
            let err = ZooConfig::from_timm(name, 1000, &args(json)).unwrap_err();
            assert!(err.to_string().contains(needle), "{json}: {err}");
        }
        let unknown = serde_json::from_str::<TimmArgs>(r#"{"class_token": false}"#);
        assert!(unknown.unwrap_err().to_string().contains("class_token"));
        assert!(ZooConfig::from_timm("lvvit_s", 1000, &TimmArgs::default()).is_err());
    }
}
