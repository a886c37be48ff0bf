//! The finetuning objective (`docs/algorithm.md`, "The finetuning objective").

use idlevit_cutloss::{CutLoss, cut_loss};
use idlevit_nn::Backend;
use idlevit_nn::Fused;
use idlevit_tensor::Tensor;
use idlevit_zoo::{MaskedForward, TokenPolicy};

use crate::error::bail;
use crate::{Result, Trainable};

/// Which objective to train: the paper's, or the authors' released code's where it differs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ObjectiveForm {
    /// The paper's: every idle layer's cut loss, CLS features for distillation.
    #[default]
    Paper,
    /// The released code's: the cut loss of every other idle layer (the first, third, ...),
    /// still averaged over all of them; for LV-ViT, distillation of the final token map
    /// masked by the last idle layer and normalised over the token axis.
    Release,
}

impl std::str::FromStr for ObjectiveForm {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "paper" => Ok(Self::Paper),
            "release" => Ok(Self::Release),
            other => Err(format!(
                "unknown objective `{other}`; expected paper or release"
            )),
        }
    }
}

/// The weights of the objective's terms.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Objective {
    /// The paper's objective or the released code's.
    pub form: ObjectiveForm,
    /// Which cut-loss terms to use.
    pub cut_loss: CutLoss,
    /// Weight of the cut loss (averaged over idle layers); the release uses 20.
    pub cut_weight: f32,
    /// Distillation weight `w`: KL gets `w`, the feature term `100 w`; 0 disables the teacher.
    pub distill_weight: f32,
    /// Label smoothing of hard labels (0.1 in the release).
    pub smoothing: f32,
}

impl Default for Objective {
    fn default() -> Self {
        Self {
            form: ObjectiveForm::Paper,
            cut_loss: CutLoss::Both,
            cut_weight: 20.0,
            distill_weight: 5.0,
            smoothing: 0.1,
        }
    }
}

/// The frozen dense teacher's outputs for a batch.
#[derive(Clone, Debug)]
pub struct Teacher {
    /// Logits `(batch, classes)`.
    pub logits: Tensor,
    /// The features distillation compares, `(batch, dim)`: the final normalised CLS token
    /// (DeiT, LV-ViT) or the pooled last stage (PVT-v2).
    pub features: Tensor,
    /// The final normalised tokens `(batch, tokens, dim)`, which the release's objective
    /// distils for LV-ViT.
    pub tokens: Tensor,
}

impl Teacher {
    /// Runs the teacher (its own policy, dense by default; no tape) on `images`; it should
    /// be of the student's family, so that the features compare like with like.
    pub fn run<M: Trainable>(teacher: &M, images: &Tensor) -> Result<Self> {
        let out = teacher.forward_frozen(images)?;
        Ok(Self {
            logits: out.logits,
            features: out.features,
            tokens: out.tokens,
        })
    }
}

/// The objective's terms for one batch, each a rank-0 value.
#[derive(Clone, Debug)]
pub struct LossParts<V> {
    /// Cross entropy against the (smoothed or soft) targets, batch mean.
    pub ce: V,
    /// The cut loss summed over idle layers, before weighting.
    pub cut: V,
    /// Per idle layer `(block index, cut loss)`, every idle layer (also those the release's
    /// objective leaves out of `cut`, see [`Objective::counts_cut_layer`]).
    pub cut_layers: Vec<(usize, V)>,
    /// KL(teacher || student), batch mean; `None` without a teacher.
    pub kl: Option<V>,
    /// Feature distillation term; `None` without a teacher.
    pub feature: Option<V>,
    /// The weighted total the optimiser minimises.
    pub total: V,
}

/// Soft targets for hard `labels`: `(1 - smoothing)` on the label plus `smoothing / classes`
/// everywhere (timm's label-smoothing cross entropy in target form).
pub fn smoothed_targets(labels: &[usize], classes: usize, smoothing: f32) -> Result<Tensor> {
    check_smoothing(smoothing)?;
    if let Some(&bad) = labels.iter().find(|&&l| l >= classes) {
        bail!("label {bad} is out of range for {classes} classes");
    }
    let mut targets = vec![smoothing / classes as f32; labels.len() * classes];
    for (row, &label) in labels.iter().enumerate() {
        targets[row * classes + label] += 1.0 - smoothing;
    }
    Ok(Tensor::from_vec(vec![labels.len(), classes], targets)?)
}

/// Label smoothing moves a share of each label's probability to the other classes: only a
/// share in [0, 1] gives a probability distribution.
fn check_smoothing(smoothing: f32) -> Result<()> {
    if !(0.0..=1.0).contains(&smoothing) {
        bail!("label smoothing must be in [0, 1], found {smoothing}");
    }
    Ok(())
}

/// Checks soft targets `(batch, classes)`: finite, >= 0, each row summing to 1 (within
/// 1e-3, the rounding of targets written as f16), as a cross entropy needs.
pub fn check_targets(targets: &Tensor) -> Result<()> {
    let [_, classes] = targets.shape() else {
        bail!(
            "soft targets are (batch, classes), found shape {:?}",
            targets.shape()
        );
    };
    let values = targets.to_vec();
    for (row, probs) in values.chunks((*classes).max(1)).enumerate() {
        if let Some(bad) = probs.iter().find(|p| !(p.is_finite() && **p >= 0.0)) {
            bail!("soft targets must be finite and >= 0: row {row} holds {bad}");
        }
        let sum: f64 = probs.iter().map(|&p| f64::from(p)).sum();
        if (sum - 1.0).abs() > 1e-3 {
            bail!("each row of soft targets must sum to 1: row {row} sums to {sum:.6}");
        }
    }
    Ok(())
}

impl Objective {
    /// Checks that the objective's terms exist for `student`: a cut loss needs a CLS
    /// attention map in the idle layers, which PVT-v2 does not have (docs/pvt-idle.md), so
    /// an idle PVT-v2 trains with a cut weight of 0 (or no cut terms).
    pub fn check<M: Trainable>(&self, student: &M) -> Result<()> {
        self.validate()?;
        let cut_on = self.cut_weight != 0.0 && self.cut_loss != CutLoss::None;
        if cut_on && !student.has_cut_graph() && *student.policy() != TokenPolicy::Dense {
            bail!(
                "{} has no CLS attention map in its idle layers, hence no cut loss: expected \
                 a cut weight of 0 (or cut-loss terms `none`), found weight {}",
                student.family(),
                self.cut_weight,
            );
        }
        Ok(())
    }

    /// Whether the idle layer at `position` in the list of idle layers enters the cut sum:
    /// every layer for the paper's objective; for the release's, the first, third, fifth...
    /// (its loss deletes list entries while enumerating them, so it skips every second).
    pub fn counts_cut_layer(&self, position: usize) -> bool {
        match self.form {
            ObjectiveForm::Paper => true,
            ObjectiveForm::Release => position.is_multiple_of(2),
        }
    }

    /// Checks the weights and the smoothing alone: weights finite and >= 0, smoothing in
    /// [0, 1]. A NaN weight would make every loss NaN; a negative one would train the model
    /// away from its own objective.
    pub fn validate(&self) -> Result<()> {
        for (name, weight) in [
            ("cut weight", self.cut_weight),
            ("distillation weight", self.distill_weight),
        ] {
            if !(weight.is_finite() && weight >= 0.0) {
                bail!("the {name} must be a finite number >= 0, found {weight}");
            }
        }
        check_smoothing(self.smoothing)
    }

    /// The objective on `images` with soft `targets` `(batch, classes)`: the student runs its
    /// masked (training) form on `bk`; `teacher` holds the frozen teacher's outputs when
    /// distilling. Fails as [`check`](Self::check) does.
    pub fn compute<B: Fused, M: Trainable>(
        &self,
        bk: &B,
        student: &M,
        images: &Tensor,
        targets: &Tensor,
        teacher: Option<&Teacher>,
    ) -> Result<LossParts<B::Value>> {
        self.check(student)?;
        let out = student.forward_training(bk, &bk.constant(images.clone()))?;
        let batch = bk.shape(&out.logits)[0];
        if targets.shape() != bk.shape(&out.logits) {
            bail!(
                "targets {:?} do not match the logits {:?}",
                targets.shape(),
                bk.shape(&out.logits)
            );
        }
        let per_item = 1.0 / batch as f32;
        let log_probs = bk.log_softmax(&out.logits)?;
        let ce = bk.scale(
            &bk.sum_all(&bk.mul(&log_probs, &bk.constant(targets.clone()))?)?,
            -per_item,
        )?;

        let mut cut = bk.constant(Tensor::scalar(0.0));
        let mut cut_layers = Vec::new();
        for (position, (layer, masked)) in out.layers.iter().enumerate() {
            let value = cut_loss(bk, &masked.logits, &masked.token_mask, self.cut_loss)?;
            if self.counts_cut_layer(position) {
                cut = bk.add(&cut, &value)?;
            }
            cut_layers.push((*layer, value));
        }
        let mut total = ce.clone();
        if !cut_layers.is_empty() {
            total = bk.add(
                &total,
                &bk.scale(&cut, self.cut_weight / cut_layers.len() as f32)?,
            )?;
        }

        let (mut kl, mut feature) = (None, None);
        if let Some(teacher) = teacher.filter(|_| self.distill_weight != 0.0) {
            if teacher.logits.shape() != bk.shape(&out.logits)
                || teacher.features.shape() != bk.shape(&out.features)
            {
                bail!(
                    "the teacher's logits {:?} and features {:?} do not match the student's \
                     {:?} and {:?} (the teacher must be of the student's family and size)",
                    teacher.logits.shape(),
                    teacher.features.shape(),
                    bk.shape(&out.logits),
                    bk.shape(&out.features)
                );
            }
            // KL(p_t || p_s) = sum p_t (log p_t - log p_s), batch mean.
            let teacher_log = idlevit_nn::Eager.log_softmax(&teacher.logits)?;
            let teacher_probs = teacher_log.map(f32::exp);
            let entropy_part: f32 = teacher_probs
                .view()
                .iter()
                .zip(teacher_log.view().iter())
                .map(|(p, l)| p * l)
                .sum();
            let cross = bk.sum_all(&bk.mul(&log_probs, &bk.constant(teacher_probs))?)?;
            let kl_value = bk.scale(
                &bk.sub(&bk.constant(Tensor::scalar(entropy_part)), &cross)?,
                per_item,
            )?;
            let (student_features, teacher_features) =
                if self.form == ObjectiveForm::Release && student.distils_token_map() {
                    token_map_features(bk, &out, teacher)?
                } else {
                    (
                        bk.l2_normalize(&out.features, 1e-12)?,
                        bk.l2_normalize(&bk.constant(teacher.features.clone()), 1e-12)?,
                    )
                };
            let diff = bk.sub(&student_features, &teacher_features)?;
            let count = bk.shape(&diff).iter().product::<usize>().max(1);
            let feature_value = bk.scale(&bk.sum_all(&bk.square(&diff)?)?, 1.0 / count as f32)?;
            total = bk.add(&total, &bk.scale(&kl_value, self.distill_weight)?)?;
            total = bk.add(
                &total,
                &bk.scale(&feature_value, 100.0 * self.distill_weight)?,
            )?;
            kl = Some(kl_value);
            feature = Some(feature_value);
        }
        Ok(LossParts {
            ce,
            cut,
            cut_layers,
            kl,
            feature,
            total,
        })
    }
}

/// The release's LV-ViT features, student's and teacher's: the final token maps times the
/// last idle layer's token mask (every token without idle layers), each normalised over the
/// token axis per sample and channel (PyTorch's `F.normalize` default, dim 1), laid out as
/// `(batch, dim, tokens)`.
fn token_map_features<B: Fused>(
    bk: &B,
    out: &MaskedForward<B::Value>,
    teacher: &Teacher,
) -> Result<(B::Value, B::Value)> {
    let student = &out.tokens;
    if teacher.tokens.shape() != bk.shape(student) {
        bail!(
            "the release's objective distils the whole final token map, so student and teacher \
             must keep every token: found the student's {:?} and the teacher's {:?} (train the \
             student with idling, not pruning or EViT)",
            bk.shape(student),
            teacher.tokens.shape()
        );
    }
    let (student, teacher_tokens) = match out.layers.last() {
        Some((_, last)) => {
            let mask = bk.constant(last.token_mask.clone());
            let teacher_masked = idlevit_nn::Eager.mul(&teacher.tokens, &last.token_mask)?;
            (bk.mul(student, &mask)?, teacher_masked)
        }
        None => (student.clone(), teacher.tokens.clone()),
    };
    let by_token_axis = |x: &B::Value| -> Result<B::Value> {
        Ok(bk.l2_normalize(&bk.permute(x, &[0, 2, 1])?, 1e-12)?)
    };
    Ok((
        by_token_axis(&student)?,
        by_token_axis(&bk.constant(teacher_tokens))?,
    ))
}
