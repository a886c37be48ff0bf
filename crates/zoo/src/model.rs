//! Any model of the zoo behind one type, for the code that serves every family alike (the
//! CLI's `--model`, benchmarks, cost counts, family-independent tests).
//!
//! A [`Family`] joins the zoo with one line of `families!` below (its variant, model and
//! config types, `family` key and published names) and its arms in the few [`ZooConfig`]
//! methods whose meaning differs by family (depth, tokens, schedules, costs); everything else
//! dispatches through the `each_family!` that line generates, to the [`Family`] and
//! [`Params`] methods and to the model's `config`, `policy`, `with_policy`,
//! `with_drop_path`, `forward` and `forward_traced`.

use idlevit_nn::Fused;
use std::path::Path;

use idlevit_checkpoint::Checkpoint;
use idlevit_nn::{ParamVisitor, ParamVisitorMut, Params};
use idlevit_selector::TokenPolicy;

use crate::config::quoted;
use crate::error::bail;
use crate::{
    DeiT, DeiTConfig, Family, LVVIT_MODELS, LayerSelection, LvVit, LvVitConfig, MaskedForward,
    PVT_MODELS, PvtConfig, PvtV2, Result, Traced, ZooError, cost,
};

/// Registers the families: generates [`ZooConfig`], [`ZooModel`], their `From` impls,
/// [`FAMILIES`], [`model_names`], the name and key lookups, and `each_family!`. The leading
/// `$` is passed in as `$d` so that the generated macro can have metavariables of its own.
macro_rules! families {
    ($d:tt $($variant:ident($model:ty, $config:ty): $key:literal, $names:expr, $doc:literal;)+) => {
        /// The configuration of a model of any family.
        #[derive(Clone, Debug, PartialEq)]
        pub enum ZooConfig {
            $(#[doc = $doc] $variant($config),)+
        }

        /// A model of any family (boxed: the families differ much in size).
        #[derive(Clone, Debug)]
        pub enum ZooModel {
            $(#[doc = $doc] $variant(Box<$model>),)+
        }

        /// The values of a config's `family` key ([`ZooConfig::from_json`]).
        pub const FAMILIES: &[&str] = &[$($key),+];

        /// Every name [`ZooConfig::named`] accepts.
        pub fn model_names() -> Vec<&'static str> {
            [$($names),+].concat()
        }

        $(
            impl From<$model> for ZooModel {
                fn from(model: $model) -> Self {
                    Self::$variant(Box::new(model))
                }
            }

            impl From<$config> for ZooConfig {
                fn from(config: $config) -> Self {
                    Self::$variant(config)
                }
            }
        )+

        impl ZooConfig {
            /// A published model by name: `deit_{tiny,small,base}` (or timm's full DeiT
            /// names), `vit_{tiny,small,base}_patch16_224`, `lvvit_{s,m}`, `pvt_v2_b{0,1,2}`.
            /// A timm pretrained tag after a dot (`deit_small_patch16_224.fb_in1k`) names
            /// weights, not an architecture, and is ignored.
            pub fn named(name: &str) -> Result<Self> {
                let architecture = name.split_once('.').map_or(name, |(base, _)| base);
                $(if let Ok(config) = <$config>::named(architecture) {
                    return Ok(config.into());
                })+
                Err(crate::config::unknown_model(name, &model_names()))
            }

            /// The family's name, as the `family` key of a config spells it.
            pub fn family(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => $key,)+
                }
            }

            /// The config of the family keyed `key` from JSON `text`; `None` for an unknown
            /// key.
            fn from_family_json(key: &str, text: &str) -> Option<Result<Self>> {
                match key {
                    $($key => Some(<$config>::from_json(text).map(Self::from)),)+
                    _ => None,
                }
            }
        }

        /// `$body` for the family that `$value` (a [`ZooConfig`] or a [`ZooModel`], named by
        /// `$kind`) holds, with `$m` bound to its config or model and `$family`, if given,
        /// naming the family's model type.
        #[macro_export]
        macro_rules! each_family {
            ($d value:expr, $d kind:ident, $d m:ident $d(, $d family:ident)? => $d body:expr) => {
                match $d value {
                    $($d kind::$variant($d m) => { $d(type $d family = $model;)? $d body })+
                }
            };
        }
    };
}

families! { $
    DeiT(DeiT, DeiTConfig): "deit", crate::config::NAMED_MODELS, "A DeiT / ViT.";
    LvVit(LvVit, LvVitConfig): "lvvit", LVVIT_MODELS, "An LV-ViT.";
    Pvt(PvtV2, PvtConfig): "pvt_v2", PVT_MODELS, "A PVT-v2.";
}

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

impl ZooConfig {
    /// Parses and validates a JSON config of any family: the key `family` (`deit`, `lvvit`
    /// or `pvt_v2`) picks the family and the other keys are that family's config; without
    /// `family` the config is a DeiT's (the CLI's original `CFG.json`).
    pub fn from_json(text: &str) -> Result<Self> {
        let mut value: serde_json::Value =
            serde_json::from_str(text).map_err(crate::config::json_error)?;
        let Some(fields) = value.as_object_mut() else {
            bail!(
                "a model config is a JSON object, found {}",
                quoted(&value.to_string())
            );
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
            Some(other) => bail!(
                "`family` must be one of {}, found {}",
                FAMILIES.join(", "),
                quoted(&other.to_string())
            ),
        };
        Self::from_family_json(&family, &value.to_string()).unwrap_or_else(|| {
            Err(ZooError::Config(format!(
                "unknown family `{}`; expected one of {}",
                quoted(&family),
                FAMILIES.join(", ")
            )))
        })
    }

    /// Reads, parses and validates a JSON config file of any family ([`Self::from_json`]).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        crate::config::read_config_file(path.as_ref(), Self::from_json)
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

    /// The custom idle schedule of the config's `idle_layers` and `keep_ratios` lists, if
    /// set (PVT-v2: global block indices over all stages).
    pub fn custom_schedule(&self) -> Result<Option<idlevit_selector::Schedule>> {
        each_family!(self, Self, c => c.schedule())
    }

    /// The number of learnable weights, or `None` when it overflows `usize`.
    pub fn parameter_count(&self) -> Option<usize> {
        each_family!(self, Self, c => c.parameter_count())
    }

    /// Input image side in pixels.
    pub fn img_size(&self) -> usize {
        each_family!(self, Self, c => c.img_size)
    }

    /// Number of classes the model predicts.
    pub fn num_classes(&self) -> usize {
        each_family!(self, Self, c => c.num_classes)
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

    /// Multiply-accumulates of one image under `policy`.
    pub fn macs(&self, policy: &TokenPolicy) -> Result<f64> {
        match self {
            Self::DeiT(c) => cost::macs(c, policy),
            Self::LvVit(c) => cost::lvvit_macs(c, policy),
            Self::Pvt(c) => cost::pvt_macs(c, policy),
        }
    }
}

impl ZooModel {
    /// Builds the model from its family's weight names.
    pub fn load(config: &ZooConfig, checkpoint: Checkpoint) -> Result<Self> {
        each_family!(config, ZooConfig, c, F => <F as Family>::load(c, checkpoint).map(Self::from))
    }

    /// A model with seeded random weights.
    pub fn random(config: &ZooConfig, seed: u64) -> Result<Self> {
        each_family!(config, ZooConfig, c, F => <F as Family>::random(c, seed).map(Self::from))
    }

    /// The same model running `policy`.
    pub fn with_policy(self, policy: TokenPolicy) -> Result<Self> {
        each_family!(self, Self, m => m.with_policy(policy).map(Self::from))
    }

    /// The same model with stochastic depth `rate` at its last block (linear from 0 at the
    /// first), for training; see [`DeiT::with_drop_path`].
    pub fn with_drop_path(self, rate: f32) -> Result<Self> {
        each_family!(self, Self, m => m.with_drop_path(rate).map(Self::from))
    }

    /// The model's configuration.
    pub fn config(&self) -> ZooConfig {
        each_family!(self, Self, m => m.config().clone().into())
    }

    /// The weights under the family's names, ready to save (and to [`load`](Self::load)).
    pub fn to_checkpoint(&self) -> Result<Checkpoint> {
        each_family!(self, Self, m => Ok(Params::to_checkpoint(m.as_ref())?))
    }

    /// Side of the square input image.
    pub fn img_size(&self) -> usize {
        each_family!(self, Self, m => m.config().img_size)
    }

    /// Number of classes the head predicts.
    pub fn num_classes(&self) -> usize {
        each_family!(self, Self, m => m.config().num_classes)
    }

    /// The token policy the model runs.
    pub fn policy(&self) -> &TokenPolicy {
        each_family!(self, Self, m => m.policy())
    }

    /// Images `(batch, 3, img, img)` to logits `(batch, classes)` under the model's policy.
    pub fn forward<B: Fused>(&self, bk: &B, images: &B::Value) -> Result<B::Value> {
        each_family!(self, Self, m => m.forward(bk, images))
    }

    /// [`forward`](Self::forward), also returning each selecting layer's choice.
    pub fn forward_traced<B: Fused>(&self, bk: &B, images: &B::Value) -> Result<Traced<B::Value>> {
        each_family!(self, Self, m => m.forward_traced(bk, images))
    }

    /// The training form (idle layers masked) with what the cut loss needs; PVT-v2 has no
    /// CLS attention for a cut loss, so it has no such outputs (its own masked form is
    /// [`PvtV2::forward_masked`]).
    pub fn forward_masked<B: Fused>(
        &self,
        bk: &B,
        images: &B::Value,
    ) -> Result<MaskedForward<B::Value>> {
        match self {
            Self::DeiT(m) => m.forward_masked(bk, images),
            Self::LvVit(m) => m.forward_masked(bk, images),
            Self::Pvt(_) => Err(ZooError::Config(
                "PVT-v2 has no masked form with cut-loss outputs: it has no class token whose \
                 attention the cut loss reads; run it dense or in its idle (gathered) form"
                    .into(),
            )),
        }
    }

    /// The masked (training) form's logits and features, and each idle layer's selection,
    /// for a model of any family (PVT-v2's included, which has no cut-loss outputs).
    pub fn forward_masked_traced<B: Fused>(
        &self,
        bk: &B,
        images: &B::Value,
    ) -> Result<Traced<B::Value>> {
        let out = match self {
            Self::Pvt(m) => return m.forward_masked(bk, images),
            Self::DeiT(m) => m.forward_masked(bk, images)?,
            Self::LvVit(m) => m.forward_masked(bk, images)?,
        };
        let selections = out
            .layers
            .into_iter()
            .map(|(layer, masked)| LayerSelection {
                layer,
                tokens: masked.selection.indices().to_vec(),
            });
        Ok(Traced {
            logits: out.logits,
            features: out.features,
            tokens: out.tokens,
            selections: selections.collect(),
        })
    }

    /// The same model running its linear layers in `precision` for inference; see
    /// [`DeiT::with_precision`].
    pub fn with_precision(self, precision: idlevit_nn::Precision) -> Result<Self> {
        each_family!(self, Self, m => m.with_precision(precision).map(Self::from))
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
        each_family!(self, Self, m => m.visit(f))
    }

    /// Visits every learnable parameter mutably.
    pub fn visit_params_mut(&mut self, f: &mut ParamVisitorMut<'_>) {
        each_family!(self, Self, m => m.visit_mut(f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use idlevit_selector::{PolicyKind, Schedule};

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
        let listed = pvt.replace(
            "\"num_classes\": 3",
            "\"num_classes\": 3, \"idle_layers\": [1], \"keep_ratios\": [0.5]",
        );
        let schedule = ZooConfig::from_json(&listed)
            .unwrap()
            .custom_schedule()
            .unwrap()
            .unwrap();
        assert_eq!(
            (schedule.idle_layers(), schedule.keep_ratios()),
            (&[1][..], &[0.5][..])
        );

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
            (
                &lvvit.replace(
                    "\"skip_lam\": 2.0",
                    "\"skip_lam\": 2.0, \"idle_layers\": [3]",
                ),
                "idle_layers and keep_ratios must be given together",
            ),
            (
                &lvvit.replace(
                    "\"skip_lam\": 2.0",
                    "\"skip_lam\": 2.0, \"idle_layers\": [16], \"keep_ratios\": [0.5]",
                ),
                "idle_layers / keep_ratios: invalid idle schedule: idle layer 16 does not exist",
            ),
            (
                &pvt.replace(
                    "\"num_classes\": 3",
                    "\"num_classes\": 3, \"idle_layers\": [0], \"keep_ratios\": [0.5]",
                ),
                "idle_layers / keep_ratios: idle layer 0 is in stage 1",
            ),
        ];
        for (text, needle) in errors {
            let err = ZooConfig::from_json(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    /// Errors a user can meet name policies and forms as the CLI does, not Rust types.
    #[test]
    fn policy_errors_name_no_rust_types() {
        let pvt_config = ZooConfig::named("pvt_v2_b0").unwrap();
        let tiny = ZooConfig::from_json(
            r#"{"family": "pvt_v2", "img_size": 32, "embed_dims": [4, 8],
            "depths": [1, 1], "num_heads": [1, 2], "sr_ratios": [2, 1],
            "mlp_ratios": [2.0, 2.0], "num_classes": 3}"#,
        )
        .unwrap();
        let pvt = ZooModel::random(&tiny, 1).unwrap();
        let images = idlevit_nn::Backend::constant(
            &idlevit_nn::Eager,
            idlevit_tensor::Tensor::zeros(&[1, 3, 32, 32]).unwrap(),
        );
        let deit = ZooModel::random(
            &ZooConfig::from_json(
                r#"{"img_size": 32, "patch_size": 8, "embed_dim": 16, "depth": 2,
                "num_heads": 2, "mlp_ratio": 2.0, "num_classes": 3, "qkv_bias": true}"#,
            )
            .unwrap(),
            1,
        )
        .unwrap();
        let prune = TokenPolicy::select(
            PolicyKind::Prune,
            Schedule::new(vec![1], vec![0.5]).unwrap(),
        );
        let errors = [
            pvt_config
                .schedule(PolicyKind::Evit, 0.7)
                .unwrap_err()
                .to_string(),
            pvt.clone()
                .with_policy(prune.clone())
                .unwrap_err()
                .to_string(),
            pvt.forward_masked(&idlevit_nn::Eager, &images)
                .unwrap_err()
                .to_string(),
            idlevit_selector::masked_form_refusal(PolicyKind::Prune).to_string(),
        ];
        for err in &errors {
            assert!(
                !err.contains("::") && !err.contains("Evit") && !err.contains("Prune"),
                "{err}"
            );
        }
        assert!(
            errors[0].contains("idle policy only, not evit"),
            "{}",
            errors[0]
        );
        assert!(
            errors[1].contains("idle policy only, not prune"),
            "{}",
            errors[1]
        );
        assert!(errors[2].contains("no class token"), "{}", errors[2]);
        assert!(errors[3].contains("not prune's"), "{}", errors[3]);
        assert!(deit.with_policy(prune).is_ok());
    }
}
