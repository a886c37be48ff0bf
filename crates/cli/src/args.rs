//! Argument groups several commands share: the model, the token policy, the finetuning
//! objective and its regularisation.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use idlevit_data::DigitsTask;
use idlevit_data::files::NamedPath;
use idlevit_zoo::{PolicyKind, ZooConfig};

use crate::checks;
use crate::policy::Mode;

/// Which model to run: a named size or a JSON config (at most one: clap refuses both). That
/// one of them is given is checked when the command runs, because a timm hub snapshot
/// directory given as `--weights` selects the model instead, and clap cannot tell a
/// directory from a file.
#[derive(Args)]
#[group(id = "model-selection", multiple = false)]
pub struct ModelArgs {
    /// Model config JSON. A DeiT's keys: img_size, patch_size, embed_dim, depth, num_heads,
    /// mlp_ratio, num_classes, qkv_bias. With "family": "lvvit" or "pvt_v2", that family's
    /// keys (see the README). Every family takes optional idle_layers and keep_ratios lists
    /// (a custom idle schedule); unknown keys are an error.
    #[arg(long, value_name = "CFG.json")]
    pub config: Option<PathBuf>,
    /// A named model instead of --config: deit_tiny, deit_small, deit_base, lvvit_s,
    /// lvvit_m, pvt_v2_b0, pvt_v2_b1, pvt_v2_b2, or timm's names (deit_small_patch16_224,
    /// vit_{tiny,small,base}_patch16_224, with or without a tag such as .fb_in1k); every
    /// command takes every family. Not needed when --weights is a timm hub snapshot.
    #[arg(long, value_name = "NAME")]
    pub model: Option<String>,
}

impl ModelArgs {
    /// The config of any zoo family from `--config FILE` (its `family` key picks the family;
    /// a DeiT's without it) or `--model NAME` (one must be given; clap refuses both).
    pub fn zoo_config(&self) -> Result<ZooConfig> {
        match (&self.config, &self.model) {
            (Some(path), None) => Ok(ZooConfig::from_file(path)?),
            (None, Some(name)) => Ok(ZooConfig::named(name)?),
            (Some(_), Some(_)) => bail!("give either --config or --model, not both"),
            (None, None) => bail!("give --config CFG.json or --model NAME"),
        }
    }

    /// The `--config` file as an input a command reads, when one was given.
    pub fn config_input(&self) -> Vec<NamedPath<'_>> {
        crate::cmd::named("--config", &self.config)
            .into_iter()
            .collect()
    }

    /// The model's name in reports: the `--model` name, or "custom" for a config.
    pub fn name(&self) -> String {
        self.model.clone().unwrap_or_else(|| "custom".into())
    }
}

/// How tokens are selected: the form of the model and the policy at its selection layers.
#[derive(Args)]
pub struct PolicyArgs {
    /// The form of the model: every token everywhere, or selection layers gathered
    /// (inference) or masked (training).
    #[arg(long, value_enum, default_value_t = Mode::Dense)]
    pub mode: Mode,
    /// What selection layers do with the tokens they leave out.
    #[arg(long, value_enum, default_value_t = PolicyChoice::Idle)]
    pub policy: PolicyChoice,
    /// Base keep rate r in (0, 1]: DeiT idle/prune layers 4..11 keep r, r^2, r^3 of the
    /// tokens (LV-ViT-S 4..15, LV-ViT-M 5..19; PVT-v2 idles stages 2-4); EViT layers 3, 6, 9
    /// keep r of those present. Not needed when the config lists idle_layers and
    /// keep_ratios.
    #[arg(long, value_name = "R", value_parser = checks::keep_rate, allow_negative_numbers = true)]
    pub keep_rate: Option<f64>,
}

/// `--policy`: what a selection layer does with the tokens it leaves out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PolicyChoice {
    /// IdleViT: they skip the layer and stay, selectable again later.
    Idle,
    /// Top-k pruning: they are dropped for good.
    Prune,
    /// EViT: they are fused into one token.
    Evit,
}

impl From<PolicyChoice> for PolicyKind {
    fn from(choice: PolicyChoice) -> Self {
        match choice {
            PolicyChoice::Idle => Self::Idle,
            PolicyChoice::Prune => Self::Prune,
            PolicyChoice::Evit => Self::Evit,
        }
    }
}

/// `--cut-loss`: which terms of the token cut loss to train with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CutLossChoice {
    /// Both terms, inter + intra (the release's default).
    Both,
    /// Only the attention crossing the cut.
    Inter,
    /// Only the attention kept inside the selected tokens.
    Intra,
    /// No cut loss.
    None,
}

impl From<CutLossChoice> for idlevit_cutloss::CutLoss {
    fn from(choice: CutLossChoice) -> Self {
        match choice {
            CutLossChoice::Both => Self::Both,
            CutLossChoice::Inter => Self::Inter,
            CutLossChoice::Intra => Self::Intra,
            CutLossChoice::None => Self::None,
        }
    }
}

/// `--objective`: whose objective to train.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ObjectiveChoice {
    /// The paper's: every idle layer's cut loss; distillation of the CLS features.
    Paper,
    /// The authors' released code's: the cut loss of every other idle layer (still divided
    /// by all of them); for LV-ViT, distillation of the masked final token map.
    Release,
}

/// `--batchnorm`: which statistics batch norms (LV-ViT's stem) normalise with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BatchNormChoice {
    /// Running statistics, never updated (PyTorch's eval mode).
    Frozen,
    /// Each batch's statistics in student and teacher; finetuning updates the student's
    /// running statistics (PyTorch's train mode, as the release trains).
    Train,
}

impl From<BatchNormChoice> for idlevit_nn::BatchNormMode {
    fn from(choice: BatchNormChoice) -> Self {
        match choice {
            BatchNormChoice::Frozen => Self::Frozen,
            BatchNormChoice::Train => Self::Train,
        }
    }
}

/// The terms of the finetuning objective.
#[derive(Args)]
pub struct ObjectiveArgs {
    /// Whose objective: the paper's, or the authors' released code's (docs/algorithm.md,
    /// "Where the authors' release departs").
    #[arg(long, value_enum, default_value_t = ObjectiveChoice::Paper)]
    pub objective: ObjectiveChoice,
    /// Batch statistics in LV-ViT's stem: frozen (running statistics) or train (each
    /// batch's, as the release finetunes).
    #[arg(long, value_enum, default_value_t = BatchNormChoice::Frozen)]
    pub batchnorm: BatchNormChoice,
    /// Which terms of the token cut loss to train with.
    #[arg(long, value_enum, default_value_t = CutLossChoice::Both)]
    pub cut_loss: CutLossChoice,
    /// Weight of the cut loss (averaged over idle layers) [default: 20; 0 for PVT-v2, whose
    /// spatial-reduction attention has no CLS row and hence no cut loss: a non-zero weight
    /// on an idle PVT-v2 is an error, see docs/pvt-idle.md].
    #[arg(long, value_name = "W", value_parser = checks::non_negative_f32, allow_negative_numbers = true)]
    pub cut_weight: Option<f32>,
    /// Distillation weight w (KL gets w, the feature term 100 w); needs a teacher.
    #[arg(long, default_value_t = 0.0, value_parser = checks::non_negative_f32, allow_negative_numbers = true)]
    pub distill_weight: f32,
    /// Label smoothing of hard labels (0 to 1).
    #[arg(long, default_value_t = 0.1, value_parser = checks::probability, allow_negative_numbers = true)]
    pub smoothing: f32,
}

impl ObjectiveArgs {
    /// The objective for a student of `family`: the cut weight defaults to the release's 20,
    /// or to 0 where the family has no cut loss.
    pub fn objective(&self, family: &ZooConfig) -> idlevit_train::Objective {
        let default_cut = match family {
            ZooConfig::Pvt(_) => 0.0,
            _ => idlevit_train::Objective::default().cut_weight,
        };
        idlevit_train::Objective {
            form: match self.objective {
                ObjectiveChoice::Paper => idlevit_train::ObjectiveForm::Paper,
                ObjectiveChoice::Release => idlevit_train::ObjectiveForm::Release,
            },
            cut_loss: self.cut_loss.into(),
            cut_weight: self.cut_weight.unwrap_or(default_cut),
            distill_weight: self.distill_weight,
            smoothing: self.smoothing,
        }
    }
}

/// Regularisation of finetuning: DeiT's recipe by default (as the IdleViT release).
#[derive(Args)]
pub struct RegularisationArgs {
    /// Stochastic depth of the last block (linear from 0 at the first; below 1).
    #[arg(long, default_value_t = 0.1, value_parser = checks::probability, allow_negative_numbers = true)]
    pub drop_path: f32,
    /// Mixup alpha (0 disables mixup).
    #[arg(long, default_value_t = 0.8, value_parser = checks::non_negative_f32, allow_negative_numbers = true)]
    pub mixup: f32,
    /// CutMix alpha (0 disables CutMix).
    #[arg(long, default_value_t = 1.0, value_parser = checks::non_negative_f32, allow_negative_numbers = true)]
    pub cutmix: f32,
    /// Probability that a batch is mixed.
    #[arg(long, default_value_t = 1.0, value_parser = checks::probability, allow_negative_numbers = true)]
    pub mixup_prob: f32,
    /// Probability of CutMix rather than mixup when both are on.
    #[arg(long, default_value_t = 0.5, value_parser = checks::probability, allow_negative_numbers = true)]
    pub mixup_switch_prob: f32,
    /// Train on the evaluation transform instead of random resized crops and flips.
    #[arg(long)]
    pub no_augment: bool,
}

impl RegularisationArgs {
    /// The mixup and CutMix of each training batch.
    pub fn mixup(&self) -> idlevit_train::Mixup {
        idlevit_train::Mixup {
            mixup_alpha: self.mixup,
            cutmix_alpha: self.cutmix,
            prob: self.mixup_prob,
            switch_prob: self.mixup_switch_prob,
        }
    }
}

/// A built-in digits task, instead of an image folder (`--task`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TaskArg {
    /// One UCI digit per cluttered 64x64 canvas; the label is the digit.
    Digits,
    /// Two smaller digits in opposite halves of the canvas; the label is the larger of the two.
    LargerDigit,
}

impl From<TaskArg> for DigitsTask {
    fn from(task: TaskArg) -> Self {
        match task {
            TaskArg::Digits => DigitsTask::Digit,
            TaskArg::LargerDigit => DigitsTask::LargerDigit,
        }
    }
}
