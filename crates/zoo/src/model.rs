//! Any model of the zoo behind one type, for the code that serves every family alike (the
//! CLI's `--model`, benchmarks, cost counts, family-independent tests).

use std::path::Path;

use idlevit_checkpoint::Checkpoint;
use idlevit_nn::{Backend, ParamVisitor, ParamVisitorMut};
use idlevit_selector::{PolicyKind, Schedule, TokenPolicy};

use crate::{
    DeiT, DeiTConfig, LVVIT_MODELS, LvVit, LvVitConfig, MaskedForward, PVT_MODELS, PvtConfig,
    PvtV2, Result, Traced, ZooError, cost,
};

/// Checks that images are `(batch >= 1, 3, side, side)`.
pub(crate) fn check_images(shape: &[usize], side: usize) -> Result<()> {
    if shape.len() != 4 || shape[1..] != [3, side, side] || shape[0] == 0 {
        return Err(idlevit_nn::NnError::shape(
            "input images",
            format!("(batch >= 1, 3, {side}, {side})"),
            shape,
        )
        .into());
    }
    Ok(())
}

/// The configuration of a model of any family.
#[derive(Clone, Debug, PartialEq)]
pub enum ZooConfig {
    /// A DeiT / ViT.
    DeiT(DeiTConfig),
    /// An LV-ViT.
    LvVit(LvVitConfig),
    /// A PVT-v2.
    Pvt(PvtConfig),
}

/// The values of a config's `family` key ([`ZooConfig::from_json`]).
pub const FAMILIES: &[&str] = &["deit", "lvvit", "pvt_v2"];

/// Every name [`ZooConfig::named`] accepts.
pub fn model_names() -> Vec<&'static str> {
    let mut names = crate::config::NAMED_MODELS.to_vec();
    names.extend_from_slice(LVVIT_MODELS);
    names.extend_from_slice(PVT_MODELS);
    names
}

impl ZooConfig {
    /// A published model by name: `deit_{tiny,small,base}` (or timm's full DeiT names),
    /// `lvvit_{s,m}`, `pvt_v2_b{0,1,2}`.
    pub fn named(name: &str) -> Result<Self> {
        if let Ok(config) = DeiTConfig::named(name) {
            return Ok(Self::DeiT(config));
        }
        if let Ok(config) = LvVitConfig::named(name) {
            return Ok(Self::LvVit(config));
        }
        if let Ok(config) = PvtConfig::named(name) {
            return Ok(Self::Pvt(config));
        }
        Err(crate::config::unknown_model(name, &model_names()))
    }

    /// Parses and validates a JSON config of any family: the key `family` (`deit`, `lvvit`
    /// or `pvt_v2`) picks the family and the other keys are that family's config; without
    /// `family` the config is a DeiT's (the CLI's original `CFG.json`).
    pub fn from_json(text: &str) -> Result<Self> {
        let mut value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| ZooError::Config(e.to_string()))?;
        let Some(fields) = value.as_object_mut() else {
            return Err(ZooError::Config(format!(
                "a model config is a JSON object, found {value}"
            )));
        };
        let family = match fields.remove("family") {
            None => {
                return DeiTConfig::from_json(text)
                    .map(Self::DeiT)
                    .map_err(|e| match e {
                        ZooError::Config(m) if m.contains("unknown field") => {
                            ZooError::Config(format!(
                                "{m} (a config without `family` describes a DeiT; set \
                                 `family` to one of {} for another family)",
                                FAMILIES.join(", ")
                            ))
                        }
                        e => e,
                    });
            }
            Some(serde_json::Value::String(family)) => family,
            Some(other) => {
                return Err(ZooError::Config(format!(
                    "`family` must be one of {}, found {other}",
                    FAMILIES.join(", ")
                )));
            }
        };
        let rest = value.to_string();
        match family.as_str() {
            "deit" => DeiTConfig::from_json(&rest).map(Self::DeiT),
            "lvvit" => LvVitConfig::from_json(&rest).map(Self::LvVit),
            "pvt_v2" => PvtConfig::from_json(&rest).map(Self::Pvt),
            other => Err(ZooError::Config(format!(
                "unknown family `{other}`; expected one of {}",
                FAMILIES.join(", ")
            ))),
        }
    }

    /// Reads, parses and validates a JSON config file of any family ([`Self::from_json`]).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        crate::config::read_config_file(path.as_ref(), Self::from_json)
    }

    /// The family's name, as the `family` key of a config spells it.
    pub fn family(&self) -> &'static str {
        match self {
            Self::DeiT(_) => FAMILIES[0],
            Self::LvVit(_) => FAMILIES[1],
            Self::Pvt(_) => FAMILIES[2],
        }
    }

    /// The number of blocks.
    pub fn depth(&self) -> usize {
        match self {
            Self::DeiT(c) => c.depth,
            Self::LvVit(c) => c.depth,
            Self::Pvt(c) => c.depth(),
        }
    }

    /// The number of image tokens at the model input (PVT: of its first stage).
    pub fn num_patches(&self) -> usize {
        match self {
            Self::DeiT(c) => c.num_patches(),
            Self::LvVit(c) => c.num_patches(),
            Self::Pvt(c) => c.stage_tokens(0),
        }
    }

    /// Input image side in pixels.
    pub fn img_size(&self) -> usize {
        match self {
            Self::DeiT(c) => c.img_size,
            Self::LvVit(c) => c.img_size,
            Self::Pvt(c) => c.img_size,
        }
    }

    /// Number of classes the model predicts.
    pub fn num_classes(&self) -> usize {
        match self {
            Self::DeiT(c) => c.num_classes,
            Self::LvVit(c) => c.num_classes,
            Self::Pvt(c) => c.num_classes,
        }
    }

    /// Width of the features distillation compares: the token width (DeiT, LV-ViT) or the
    /// last stage's (PVT-v2).
    pub fn feature_dim(&self) -> usize {
        match self {
            Self::DeiT(c) => c.embed_dim,
            Self::LvVit(c) => c.embed_dim,
            Self::Pvt(c) => c.embed_dims.last().copied().unwrap_or(0),
        }
    }

    /// The release's schedule of `kind` at base rate `rate` for this model: the DeiT and
    /// LV-ViT idle schedules of spec section 1 (pruning shares them), EViT's layers 3, 6, 9;
    /// PVT-v2's stages 2-4 (idle only).
    pub fn schedule(&self, kind: PolicyKind, rate: f64) -> Result<Schedule> {
        match (self, kind) {
            (Self::Pvt(c), PolicyKind::Idle) => c.idle_schedule(rate),
            (Self::Pvt(_), kind) => Err(ZooError::Config(format!(
                "PVT-v2 runs the idle policy only, not {kind:?}"
            ))),
            (_, PolicyKind::Evit) => Ok(Schedule::evit_deit(rate)?),
            (Self::DeiT(_), _) => Ok(Schedule::deit(rate)?),
            (Self::LvVit(c), _) => c.idle_schedule(rate),
        }
    }

    /// Multiply-accumulates of one image under `policy`.
    pub fn macs(&self, policy: &TokenPolicy) -> Result<f64> {
        match self {
            Self::DeiT(c) => cost::macs(c, policy),
            Self::LvVit(c) => cost::lvvit_macs(c, policy),
            Self::Pvt(c) => cost::pvt_macs(c, policy),
        }
    }
}

/// A model of any family.
#[derive(Clone, Debug)]
pub enum ZooModel {
    /// A DeiT / ViT (boxed: the families differ much in size).
    DeiT(Box<DeiT>),
    /// An LV-ViT.
    LvVit(Box<LvVit>),
    /// A PVT-v2.
    Pvt(Box<PvtV2>),
}

impl ZooModel {
    /// Builds the model from its family's weight names.
    pub fn load(config: &ZooConfig, checkpoint: Checkpoint) -> Result<Self> {
        Ok(match config {
            ZooConfig::DeiT(c) => Self::DeiT(Box::new(DeiT::load(c, checkpoint)?)),
            ZooConfig::LvVit(c) => Self::LvVit(Box::new(LvVit::load(c, checkpoint)?)),
            ZooConfig::Pvt(c) => Self::Pvt(Box::new(PvtV2::load(c, checkpoint)?)),
        })
    }

    /// A model with seeded random weights.
    pub fn random(config: &ZooConfig, seed: u64) -> Result<Self> {
        Ok(match config {
            ZooConfig::DeiT(c) => Self::DeiT(Box::new(DeiT::random(c, seed)?)),
            ZooConfig::LvVit(c) => Self::LvVit(Box::new(LvVit::random(c, seed)?)),
            ZooConfig::Pvt(c) => Self::Pvt(Box::new(PvtV2::random(c, seed)?)),
        })
    }

    /// The same model running `policy`.
    pub fn with_policy(self, policy: TokenPolicy) -> Result<Self> {
        Ok(match self {
            Self::DeiT(m) => Self::DeiT(Box::new(m.with_policy(policy)?)),
            Self::LvVit(m) => Self::LvVit(Box::new(m.with_policy(policy)?)),
            Self::Pvt(m) => Self::Pvt(Box::new(m.with_policy(policy)?)),
        })
    }

    /// The same model with stochastic depth `rate` at its last block (linear from 0 at the
    /// first), for training; see [`DeiT::with_drop_path`].
    pub fn with_drop_path(self, rate: f32) -> Result<Self> {
        Ok(match self {
            Self::DeiT(m) => Self::DeiT(Box::new(m.with_drop_path(rate)?)),
            Self::LvVit(m) => Self::LvVit(Box::new(m.with_drop_path(rate)?)),
            Self::Pvt(m) => Self::Pvt(Box::new(m.with_drop_path(rate)?)),
        })
    }

    /// The model's configuration.
    pub fn config(&self) -> ZooConfig {
        match self {
            Self::DeiT(m) => ZooConfig::DeiT(m.config().clone()),
            Self::LvVit(m) => ZooConfig::LvVit(m.config().clone()),
            Self::Pvt(m) => ZooConfig::Pvt(m.config().clone()),
        }
    }

    /// The weights under the family's names, ready to save (and to [`load`](Self::load)).
    pub fn to_checkpoint(&self) -> Result<Checkpoint> {
        match self {
            Self::DeiT(m) => m.to_checkpoint(),
            Self::LvVit(m) => m.to_checkpoint(),
            Self::Pvt(m) => m.to_checkpoint(),
        }
    }

    /// Side of the square input image.
    pub fn img_size(&self) -> usize {
        match self {
            Self::DeiT(m) => m.config().img_size,
            Self::LvVit(m) => m.config().img_size,
            Self::Pvt(m) => m.config().img_size,
        }
    }

    /// Number of classes the head predicts.
    pub fn num_classes(&self) -> usize {
        match self {
            Self::DeiT(m) => m.config().num_classes,
            Self::LvVit(m) => m.config().num_classes,
            Self::Pvt(m) => m.config().num_classes,
        }
    }

    /// The token policy the model runs.
    pub fn policy(&self) -> &TokenPolicy {
        match self {
            Self::DeiT(m) => m.policy(),
            Self::LvVit(m) => m.policy(),
            Self::Pvt(m) => m.policy(),
        }
    }

    /// Images `(batch, 3, img, img)` to logits `(batch, classes)` under the model's policy.
    pub fn forward<B: Backend>(&self, bk: &B, images: &B::Value) -> Result<B::Value> {
        match self {
            Self::DeiT(m) => m.forward(bk, images),
            Self::LvVit(m) => m.forward(bk, images),
            Self::Pvt(m) => m.forward(bk, images),
        }
    }

    /// [`forward`](Self::forward), also returning each selecting layer's choice.
    pub fn forward_traced<B: Backend>(
        &self,
        bk: &B,
        images: &B::Value,
    ) -> Result<Traced<B::Value>> {
        match self {
            Self::DeiT(m) => m.forward_traced(bk, images),
            Self::LvVit(m) => m.forward_traced(bk, images),
            Self::Pvt(m) => m.forward_traced(bk, images),
        }
    }

    /// The training form (idle layers masked) with what the cut loss needs; PVT-v2 has no
    /// CLS attention for a cut loss (its masked form is [`PvtV2::forward_masked`]).
    pub fn forward_masked<B: Backend>(
        &self,
        bk: &B,
        images: &B::Value,
    ) -> Result<MaskedForward<B::Value>> {
        match self {
            Self::DeiT(m) => m.forward_masked(bk, images),
            Self::LvVit(m) => m.forward_masked(bk, images),
            Self::Pvt(_) => Err(ZooError::Config(
                "PVT-v2 has no CLS attention, hence no cut-loss outputs; its masked form is \
                 PvtV2::forward_masked"
                    .into(),
            )),
        }
    }

    /// Packs every linear weight for the inference GEMM now (where the CPU runs the packed
    /// kernel), so loading pays it once and the first image does not. Clones made afterwards
    /// share the copies; an optimiser step drops the copy of the weight it changes. A bf16
    /// model does not need it: its linear layers run on their bf16 copies.
    pub fn pack_for_inference(&self) {
        self.visit_params(&mut |p| {
            let _ = p.packed_f32();
        });
    }

    /// Visits every learnable parameter.
    pub fn visit_params(&self, f: &mut ParamVisitor<'_>) {
        match self {
            Self::DeiT(m) => m.visit_params(f),
            Self::LvVit(m) => m.visit_params(f),
            Self::Pvt(m) => m.visit_params(f),
        }
    }

    /// Visits every learnable parameter mutably.
    pub fn visit_params_mut(&mut self, f: &mut ParamVisitorMut<'_>) {
        match self {
            Self::DeiT(m) => m.visit_params_mut(f),
            Self::LvVit(m) => m.visit_params_mut(f),
            Self::Pvt(m) => m.visit_params_mut(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_files_name_their_family() {
        let deit = r#"{"img_size": 32, "patch_size": 8, "embed_dim": 16, "depth": 2,
            "num_heads": 2, "mlp_ratio": 2.0, "num_classes": 3, "qkv_bias": true}"#;
        let ZooConfig::DeiT(parsed) = ZooConfig::from_json(deit).unwrap() else {
            panic!("a config without `family` is a DeiT's");
        };
        assert_eq!(parsed.embed_dim, 16);
        let with_family = deit.replacen('{', r#"{"family": "deit", "#, 1);
        assert_eq!(
            ZooConfig::from_json(&with_family).unwrap(),
            ZooConfig::DeiT(parsed)
        );

        let lvvit = r#"{"family": "lvvit", "img_size": 32, "patch_size": 16,
            "stem_channels": 4, "embed_dim": 8, "depth": 16, "num_heads": 2, "mlp_ratio": 3.0,
            "num_classes": 5, "skip_lam": 2.0}"#;
        let config = ZooConfig::from_json(lvvit).unwrap();
        assert_eq!(config.family(), "lvvit");
        assert_eq!((config.depth(), config.num_patches()), (16, 4));

        let pvt = r#"{"family": "pvt_v2", "img_size": 32, "embed_dims": [4, 8],
            "depths": [1, 1], "num_heads": [1, 2], "sr_ratios": [2, 1],
            "mlp_ratios": [2.0, 2.0], "num_classes": 3}"#;
        let config = ZooConfig::from_json(pvt).unwrap();
        assert_eq!(config.family(), "pvt_v2");
        assert_eq!(config.depth(), 2);

        let errors = [
            (r#"{"family": "resnet"}"#, "unknown family `resnet`"),
            (
                r#"{"family": 3}"#,
                "`family` must be one of deit, lvvit, pvt_v2",
            ),
            ("[1]", "a model config is a JSON object"),
            (
                &lvvit.replace(r#""family": "lvvit", "#, ""),
                "set `family` to one of",
            ),
            (&pvt.replace("pvt_v2", "lvvit"), "unknown field"),
        ];
        for (text, needle) in errors {
            let err = ZooConfig::from_json(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
