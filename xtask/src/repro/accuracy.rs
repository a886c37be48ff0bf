//! Accuracy on the digits task: from the embedded dense model, finetune IdleViT (with and
//! without the cut loss), EViT and top-k pruning with distillation from the dense model, at
//! each keep rate and seed; top-1 of each, and images/s of each model form.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use idlevit_data::ImageFolder;
use idlevit_data::digits::{
    Canvas, DigitsOptions, DigitsSplit, embedded_split, write_image_folder,
};
use idlevit_train::bench::bench;
use idlevit_train::evaluate::evaluate;
use idlevit_train::finetune::{FinetuneOptions, finetune};
use idlevit_train::{Mixup, Objective};
use idlevit_zoo::{DeiT, PolicyKind, ZooModel};

use super::speed::deit_policy;

/// How the accuracy experiment runs.
#[derive(Clone, Debug)]
pub struct AccuracyOptions {
    /// Base keep rates.
    pub rates: Vec<f64>,
    /// Seeds (each finetune's shuffle order).
    pub seeds: Vec<u64>,
    /// Canvases per training digit.
    pub train_copies: usize,
    /// Keep at most this many canvases per class (training, validation); `None`: all.
    pub per_class_limit: (Option<usize>, Option<usize>),
    /// Finetuning epochs.
    pub epochs: usize,
    /// Images per step.
    pub batch: usize,
    /// Peak learning rate (cosine to 1e-6).
    pub lr: f64,
    /// Distillation weight w (KL w, features 100 w).
    pub distill_weight: f32,
    /// Timed passes per model form for the throughput axis.
    pub speed_runs: usize,
}

/// A finetuning method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// IdleViT with the token cut loss (both terms, weight 20).
    IdleCut,
    /// IdleViT without the cut loss.
    IdleNoCut,
    /// EViT: fuse the inattentive tokens at layers 3, 6, 9.
    Evit,
    /// Top-k pruning on IdleViT's scores and schedule.
    Prune,
}

impl Method {
    /// Every method, in table order.
    pub const ALL: [Method; 4] = [
        Method::IdleCut,
        Method::IdleNoCut,
        Method::Evit,
        Method::Prune,
    ];

    /// Name in tables and plots.
    pub fn name(self) -> &'static str {
        match self {
            Method::IdleCut => "IdleViT + cut loss",
            Method::IdleNoCut => "IdleViT, no cut loss",
            Method::Evit => "EViT",
            Method::Prune => "top-k pruning",
        }
    }

    /// The policy the method runs.
    pub fn kind(self) -> PolicyKind {
        match self {
            Method::IdleCut | Method::IdleNoCut => PolicyKind::Idle,
            Method::Evit => PolicyKind::Evit,
            Method::Prune => PolicyKind::Prune,
        }
    }
}

/// One method at one rate: before finetuning, and per seed after.
#[derive(Clone, Debug)]
pub struct MethodResult {
    /// Which method.
    pub method: Method,
    /// Base keep rate.
    pub rate: f64,
    /// Top-1 of the dense weights under the policy, before finetuning.
    pub off_the_shelf: f64,
    /// `(seed, top-1)` after finetuning.
    pub finetuned: Vec<(u64, f64)>,
    /// GMACs per image on the digits model.
    pub gmacs: f64,
    /// Images/s of the policy's inference form, batch 64.
    pub images_per_second: f64,
}

impl MethodResult {
    /// Mean and sample standard deviation of the finetuned top-1.
    pub fn mean_std(&self) -> (f64, f64) {
        mean_std(&self.finetuned.iter().map(|f| f.1).collect::<Vec<_>>())
    }
}

/// Mean and sample standard deviation (0 for one value).
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len().max(1) as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = if values.len() > 1 {
        values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// What the experiment measured.
pub struct AccuracyRun {
    /// The dense model's top-1 on the validation canvases.
    pub dense_top1: f64,
    /// Dense images/s (batch 64).
    pub dense_images_per_second: f64,
    /// Dense GMACs.
    pub dense_gmacs: f64,
    /// Per method and rate.
    pub results: Vec<MethodResult>,
    /// Training and validation images used.
    pub images: (usize, usize),
    /// The validation canvases (for the token pictures).
    pub val: Vec<Canvas>,
    /// The finetuned seed-0 IdleViT models `(method, rate, model)`, for the token analysis.
    pub idle_models: Vec<(Method, f64, DeiT)>,
}

/// Keeps at most `limit` canvases of each class, in order.
fn per_class(canvases: Vec<Canvas>, limit: Option<usize>) -> Vec<Canvas> {
    let Some(limit) = limit else {
        return canvases;
    };
    let mut counts = [0usize; idlevit_data::digits::CLASSES];
    canvases
        .into_iter()
        .filter(|c| {
            counts[c.label] += 1;
            counts[c.label] <= limit
        })
        .collect()
}

/// Runs the experiment with `dense` as the starting point and teacher; writes the task to
/// `dir/data`; each run checkpoints under `dir/runs`, removed once finished. `log` receives
/// progress lines.
pub fn run_accuracy(
    dense: &DeiT,
    options: &AccuracyOptions,
    dir: &Path,
    log: &mut dyn FnMut(String),
) -> Result<AccuracyRun> {
    let split = embedded_split(&DigitsOptions {
        train_copies: options.train_copies,
        ..Default::default()
    })?;
    let split = DigitsSplit {
        train: per_class(split.train, options.per_class_limit.0),
        val: per_class(split.val, options.per_class_limit.1),
    };
    let data = dir.join("data");
    let _ = std::fs::remove_dir_all(&data);
    write_image_folder(&split, &data)?;
    let train = ImageFolder::open(&data.join("train"))?;
    let val = ImageFolder::open(&data.join("val"))?;
    let batch = options.batch;
    let teacher = ZooModel::DeiT(Box::new(dense.clone()));
    let dense_top1 = evaluate(&teacher, &val, 64, false)?.top1;
    log(format!(
        "dense: top-1 {:.2}% on {} validation canvases",
        100.0 * dense_top1,
        val.len()
    ));

    // Throughput of each inference form, interleaved in one run.
    let mut forms = vec![dense.clone()];
    for &rate in &options.rates {
        for kind in [PolicyKind::Idle, PolicyKind::Evit, PolicyKind::Prune] {
            forms.push(dense.clone().with_policy(deit_policy(kind, rate)?)?);
        }
    }
    let side = dense.config().img_size;
    let forms: Vec<ZooModel> = forms
        .into_iter()
        .map(|m| ZooModel::DeiT(Box::new(m)))
        .collect();
    let timing = bench(
        &forms.iter().collect::<Vec<_>>(),
        side,
        64,
        1,
        options.speed_runs,
    )?;
    let form_ips = |rate_index: usize, kind: PolicyKind| {
        let k = match kind {
            PolicyKind::Idle => 0,
            PolicyKind::Evit => 1,
            PolicyKind::Prune => 2,
        };
        timing.images_per_second(1 + 3 * rate_index + k)
    };

    let mut results = Vec::new();
    let mut idle_models = Vec::new();
    for (ri, &rate) in options.rates.iter().enumerate() {
        for method in Method::ALL {
            let policy = deit_policy(method.kind(), rate)?;
            let student = ZooModel::DeiT(Box::new(dense.clone().with_policy(policy.clone())?));
            let off_the_shelf = evaluate(&student, &val, 64, false)?.top1;
            let mut finetuned = Vec::new();
            for &seed in &options.seeds {
                let started = Instant::now();
                let mut trained = student.clone();
                let objective = Objective {
                    form: idlevit_train::ObjectiveForm::Paper,
                    cut_loss: if method == Method::IdleCut {
                        idlevit_cutloss::CutLoss::Both
                    } else {
                        idlevit_cutloss::CutLoss::None
                    },
                    cut_weight: if method == Method::IdleCut { 20.0 } else { 0.0 },
                    distill_weight: options.distill_weight,
                    smoothing: 0.1,
                };
                let run_dir = dir
                    .join("runs")
                    .join(format!("{:?}-r{rate}-seed{seed}", method).to_lowercase());
                let ft = FinetuneOptions {
                    epochs: options.epochs,
                    batch,
                    lr: options.lr,
                    min_lr: 1e-6,
                    warmup_epochs: 0,
                    weight_decay: 0.05,
                    clip_grad: Some(5.0),
                    // One epoch from a converged model on a small task: the comparison is
                    // of the selection methods, so no stochastic regularisation is added.
                    drop_path: 0.0,
                    mixup: Mixup::off(),
                    augment: false,
                    batch_norm: idlevit_nn::BatchNormMode::Frozen,
                    objective,
                    seed,
                    out_dir: run_dir.clone(),
                    resume: None,
                    progress: false,
                };
                let report = finetune(&mut trained, Some(&teacher), &train, Some(&val), &ft)
                    .with_context(|| format!("finetuning {} at r={rate}", method.name()))?;
                let ZooModel::DeiT(student) = trained else {
                    anyhow::bail!("finetuning changed the model's family");
                };
                // The model stays in memory; its checkpoint (with optimiser state) is not needed.
                let _ = std::fs::remove_dir_all(&run_dir);
                let top1 = report.validation.map_or(f64::NAN, |a| a.top1);
                log(format!(
                    "{} r={rate} seed {seed}: top-1 {:.2}% (before finetuning {:.2}%), {:.0} s",
                    method.name(),
                    100.0 * top1,
                    100.0 * off_the_shelf,
                    started.elapsed().as_secs_f64()
                ));
                finetuned.push((seed, top1));
                if seed == options.seeds[0] && method.kind() == PolicyKind::Idle {
                    idle_models.push((method, rate, *student));
                }
            }
            results.push(MethodResult {
                method,
                rate,
                off_the_shelf,
                finetuned,
                gmacs: super::cost::gmacs(dense.config(), method.kind(), Some(rate))?,
                images_per_second: form_ips(ri, method.kind()),
            });
        }
    }
    Ok(AccuracyRun {
        dense_top1,
        dense_images_per_second: timing.images_per_second(0),
        dense_gmacs: super::cost::gmacs(dense.config(), PolicyKind::Idle, None)?,
        results,
        images: (train.len(), val.len()),
        val: split.val,
        idle_models,
    })
}
