//! Any model of the zoo behind one type, for the code that serves every family alike (the
//! CLI's `--model`, benchmarks, cost counts, family-independent tests).

use idlevit_nn::Fused;
use std::path::Path;

use idlevit_checkpoint::Checkpoint;
use idlevit_nn::{ParamVisitor, ParamVisitorMut};
use idlevit_selector::{PolicyKind, Schedule, SelectorError, TokenPolicy, keep_count};

use crate::config::quoted;
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
            serde_json::from_str(text).map_err(crate::config::json_error)?;
        let Some(fields) = value.as_object_mut() else {
            return Err(ZooError::Config(format!(
                "a model config is a JSON object, found {}",
                quoted(&value.to_string())
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
                    "`family` must be one of {}, found {}",
                    FAMILIES.join(", "),
                    quoted(&other.to_string())
                )));
            }
        };
        let rest = value.to_string();
        match family.as_str() {
            "deit" => DeiTConfig::from_json(&rest).map(Self::DeiT),
            "lvvit" => LvVitConfig::from_json(&rest).map(Self::LvVit),
            "pvt_v2" => PvtConfig::from_json(&rest).map(Self::Pvt),
            other => Err(ZooError::Config(format!(
                "unknown family `{}`; expected one of {}",
                quoted(other),
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

    /// The number of learnable weights, or `None` when it overflows `usize`.
    pub fn parameter_count(&self) -> Option<usize> {
        match self {
            Self::DeiT(c) => c.parameter_count(),
            Self::LvVit(c) => c.parameter_count(),
            Self::Pvt(c) => c.parameter_count(),
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
    /// Every idle and pruning layer must keep at least one token: an error names the keep
    /// rate given, the layer, and the ratio the rate compounds to there.
    pub fn schedule(&self, kind: PolicyKind, rate: f64) -> Result<Schedule> {
        let schedule = match (self, kind) {
            (Self::Pvt(c), PolicyKind::Idle) => c.idle_schedule(rate)?,
            (Self::Pvt(_), kind) => {
                return Err(ZooError::Config(format!(
                    "PVT-v2 runs the idle policy only, not {kind}: top-k pruning and EViT \
                     have no form for its pyramid of token grids"
                )));
            }
            // EViT keeps ceil(r n) tokens, never none.
            (_, PolicyKind::Evit) => return Ok(Schedule::evit_deit(rate)?),
            (Self::DeiT(_), _) => Schedule::deit(rate)?,
            (Self::LvVit(c), _) => c.idle_schedule(rate)?,
        };
        for (&layer, &ratio) in schedule.idle_layers().iter().zip(schedule.keep_ratios()) {
            let (tokens, place) = match self {
                Self::Pvt(c) => {
                    let stage = c.stage_of(layer).map_or(0, |(stage, _)| stage);
                    (c.stage_tokens(stage), format!("in stage {}", stage + 1))
                }
                _ => (self.num_patches(), format!("at layer {layer}")),
            };
            match keep_count(tokens, ratio) {
                Err(SelectorError::NothingKept { .. }) => {
                    return Err(ZooError::Config(nothing_kept(rate, ratio, tokens, &place)));
                }
                other => other?,
            };
        }
        Ok(schedule)
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

/// The error for keep rate `rate` compounding to `ratio` where `tokens` tokens are (`place`,
/// "at layer 10" or "in stage 4"), which keeps none of them.
fn nothing_kept(rate: f64, ratio: f64, tokens: usize, place: &str) -> String {
    // The release's schedules compound the rate per stage: ratio = rate^k.
    let power = if ratio == rate || !(rate > 0.0 && rate < 1.0) {
        String::new()
    } else {
        let k = (ratio.ln() / rate.ln()).round();
        format!(" ({rate}^{k} = {} of them)", short_number(ratio))
    };
    format!("keep rate {rate} keeps no token of the {tokens} {place}{power}; raise the keep rate")
}

/// `x` with at most four significant decimals, for messages (0.7^3 prints 0.343, not
/// 0.34299999999999997).
fn short_number(x: f64) -> String {
    if x >= 1e-3 {
        let fixed = format!("{x:.4}");
        fixed
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    } else {
        let scientific = format!("{x:.3e}");
        let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
        let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
        format!("{mantissa}e{exponent}")
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
    pub fn forward<B: Fused>(&self, bk: &B, images: &B::Value) -> Result<B::Value> {
        match self {
            Self::DeiT(m) => m.forward(bk, images),
            Self::LvVit(m) => m.forward(bk, images),
            Self::Pvt(m) => m.forward(bk, images),
        }
    }

    /// [`forward`](Self::forward), also returning each selecting layer's choice.
    pub fn forward_traced<B: Fused>(&self, bk: &B, images: &B::Value) -> Result<Traced<B::Value>> {
        match self {
            Self::DeiT(m) => m.forward_traced(bk, images),
            Self::LvVit(m) => m.forward_traced(bk, images),
            Self::Pvt(m) => m.forward_traced(bk, images),
        }
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

    /// A keep rate too small for a layer is reported in the user's words: the rate given,
    /// where, and what it compounds to there.
    #[test]
    fn keep_rate_errors_quote_the_rate_given() {
        // At 64 x 64 pixels the stages' grids are 16, 8, 4 and 2 tokens wide.
        let pvt = ZooConfig::Pvt(PvtConfig {
            img_size: 64,
            ..PvtConfig::b0()
        });
        let err = pvt.schedule(PolicyKind::Idle, 0.5).unwrap_err().to_string();
        assert!(
            err.contains(
                "keep rate 0.5 keeps no token of the 4 in stage 4 (0.5^3 = 0.125 of them); \
                 raise the keep rate"
            ),
            "{err}"
        );
        let deit = ZooConfig::named("deit_small").unwrap();
        let err = deit
            .schedule(PolicyKind::Prune, 0.004)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("keep rate 0.004 keeps no token of the 196 at layer 4;"),
            "{err}"
        );
        let err = deit
            .schedule(PolicyKind::Idle, 0.01)
            .unwrap_err()
            .to_string();
        assert!(err.contains("at layer 7 (0.01^2 = 1e-4 of them)"), "{err}");
        let err = deit
            .schedule(PolicyKind::Idle, 0.1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("at layer 10 (0.1^3 = 0.001 of them)"), "{err}");
        assert!(deit.schedule(PolicyKind::Evit, 0.01).is_ok());
        assert!(pvt.schedule(PolicyKind::Idle, 0.7).is_ok());
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
