//! The finetuning loop: masked-form student, frozen dense teacher, AdamW with a cosine
//! schedule, a checkpoint per epoch (written atomically), resume, final validation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use idlevit_checkpoint::Checkpoint;
use idlevit_data::DataError;
use idlevit_data::ImageSet;
use idlevit_data::augment::TrainTransform;
use idlevit_data::folder::shuffled;
use idlevit_data::preprocess::EvalTransform;
use idlevit_nn::BatchNormMode;
use idlevit_tensor::Tensor;
use idlevit_zoo::{ZooConfig, ZooModel};

use crate::distributed::{ProcessGroup, SingleProcess, average_gradients, shard};
use crate::error::{Context, bail};
use crate::evaluate::{Accuracy, check_classes, evaluate_in_group, progress_bar};
use crate::pipeline::{BATCHES_AHEAD, BatchRecipe, prefetched};
use crate::{
    AdamW, CosineSchedule, Mixup, Objective, Result, StepSettings, TrainError, Trainable,
    apply_gradients, step_gradients,
};

/// How to finetune.
#[derive(Clone, Debug)]
pub struct FinetuneOptions {
    /// Passes over the training set.
    pub epochs: usize,
    /// Images per step.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Learning-rate floor of the cosine.
    pub min_lr: f64,
    /// Epochs of linear warm-up.
    pub warmup_epochs: usize,
    /// Decoupled weight decay (matrices only).
    pub weight_decay: f64,
    /// Clip the global gradient norm to this value.
    pub clip_grad: Option<f64>,
    /// Stochastic depth of the last block (linear from 0 at the first); the release uses 0.1.
    pub drop_path: f32,
    /// Mixup / CutMix of each training batch (DeiT's recipe by default).
    pub mixup: Mixup,
    /// Train on random resized crops and flips; `false` uses the evaluation transform.
    pub augment: bool,
    /// The loss terms and their weights.
    pub objective: Objective,
    /// Batch norms (LV-ViT's stem) normalise with running statistics (`Frozen`, the default)
    /// or, as the release trains, with each batch's in student and teacher alike, the
    /// student's running statistics following at PyTorch's momentum 0.1 (`Train`);
    /// validation always uses the running statistics.
    pub batch_norm: BatchNormMode,
    /// Seed of the per-epoch shuffles.
    pub seed: u64,
    /// Where checkpoints go (`checkpoint.safetensors`, replaced atomically each epoch).
    pub out_dir: PathBuf,
    /// Resume from this checkpoint (weights, optimiser state, epoch).
    pub resume: Option<PathBuf>,
    /// Show a progress bar, and print each epoch's mean loss as the epoch ends.
    pub progress: bool,
}

/// What a finetuning run did.
#[derive(Clone, Debug)]
pub struct FinetuneReport {
    /// The epoch the run started at (non-zero after a resume).
    pub first_epoch: usize,
    /// Mean training loss of each epoch run.
    pub epoch_losses: Vec<f32>,
    /// Share of each epoch's wall time (0..1) the training thread spent waiting for its
    /// prepared batches (this rank's, in a group).
    pub epoch_data_wait: Vec<f64>,
    /// Accuracy on the validation set after the last epoch.
    pub validation: Option<Accuracy>,
}

/// PyTorch's default batch-norm momentum, which the release keeps.
const BATCH_NORM_MOMENTUM: f32 = 0.1;

/// Puts the student's batch norms in `mode` and, in train mode, returns a teacher that
/// normalises with batch statistics too (the release never switches its teacher to eval
/// mode); fails when train mode is asked of a model without batch norms.
fn prepare_batch_norm(
    student: &mut ZooModel,
    teacher: Option<&ZooModel>,
    mode: BatchNormMode,
) -> Result<Option<ZooModel>> {
    if mode == BatchNormMode::Frozen {
        student.set_batch_norm(mode);
        return Ok(None);
    }
    if !student.has_batch_norm() {
        bail!(
            "batch-norm train mode needs batch norm layers, and {} has none (LV-ViT's stem has)",
            student.family()
        );
    }
    student.set_batch_norm(mode);
    Ok(teacher.map(|t| {
        let mut t = t.clone();
        t.set_batch_norm(mode);
        t
    }))
}

/// The checkpoint file inside `out_dir`.
pub fn checkpoint_path(out_dir: &Path) -> PathBuf {
    out_dir.join("checkpoint.safetensors")
}

impl FinetuneOptions {
    /// Checks every setting's range before anything runs: a NaN learning rate would turn the
    /// weights into NaN at the first step.
    pub fn validate(&self) -> Result<()> {
        if self.batch == 0 || self.epochs == 0 {
            bail!("the batch size and the number of epochs must be at least 1");
        }
        for (name, value) in [
            ("learning rate", self.lr),
            ("learning-rate floor", self.min_lr),
            ("weight decay", self.weight_decay),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                bail!("the {name} must be a finite number >= 0, found {value}");
            }
        }
        if self.min_lr > self.lr {
            bail!(
                "the learning-rate floor {} is above the peak learning rate {}",
                self.min_lr,
                self.lr
            );
        }
        if let Some(norm) = self.clip_grad
            && !(norm.is_finite() && norm > 0.0)
        {
            bail!("the gradient-norm bound must be a finite number > 0, found {norm}");
        }
        if !(0.0..1.0).contains(&self.drop_path) {
            bail!(
                "the drop-path rate must be in [0, 1), found {}",
                self.drop_path
            );
        }
        self.mixup.validate()?;
        self.objective.validate()?;
        Ok(())
    }
}

/// Writes the weights, the optimiser state and the epoch count to `path`, atomically and only
/// when every value is finite, so the file there is always the last good checkpoint.
fn save(student: &ZooModel, optimizer: &AdamW, epoch: usize, path: &Path) -> Result<()> {
    let mut ckpt = student.to_checkpoint()?;
    for (name, tensor) in optimizer.state_tensors()? {
        ckpt.insert(name, tensor);
    }
    ckpt.insert("train.epochs_done", Tensor::scalar(epoch as f32));
    Ok(idlevit_data::files::save_checkpoint(
        &ckpt,
        path,
        "the checkpoint",
    )?)
}

/// The seed of one training step's random choices (augmentation, mixup, drop path): a
/// SplitMix64 finaliser of the run's seed and the step, so steps draw unrelated streams.
fn step_seed(seed: u64, step: usize) -> u64 {
    let state = seed.wrapping_add((step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    idlevit_data::digits::SplitMix(state).next_u64()
}

/// A zero gradient for every parameter: the part of a rank that has no samples in a step.
fn zero_gradients(model: &ZooModel) -> BTreeMap<String, Tensor> {
    let mut grads = BTreeMap::new();
    model.visit_params(&mut |p| {
        grads.insert(p.name().to_string(), crate::step::zeros_like(p));
    });
    grads
}

/// Restores weights, optimiser state and the epoch count from a finetuning checkpoint; every
/// error names the file.
fn resume(student: &mut ZooModel, optimizer: &mut AdamW, path: &Path) -> Result<usize> {
    let context = || format!("cannot resume from {}", path.display());
    let bytes = idlevit_data::weights::read_file(path, "checkpoint").context(context)?;
    if bytes.starts_with(b"PK") {
        bail!(
            "cannot resume from {}: it is a PyTorch (.pth) file, and a run resumes from the \
             checkpoint.safetensors an earlier finetuning run wrote (start from .pth weights \
             as the student's starting weights instead)",
            path.display()
        );
    }
    let mut ckpt = Checkpoint::from_safetensors_bytes(&bytes).context(context)?;
    let epochs_done = ckpt.remove("train.epochs_done").ok_or_else(|| {
        TrainError::Invalid(format!(
            "{} is not a finetuning checkpoint (no train.epochs_done)",
            path.display()
        ))
    })?;
    let epochs_done = crate::whole_count(&epochs_done).ok_or_else(|| {
        TrainError::Invalid(format!(
            "{} is damaged: its epoch count (train.epochs_done) must be one whole number >= 0, \
             found {}",
            path.display(),
            crate::describe_values(&epochs_done)
        ))
    })?;
    optimizer.load_state_tensors(&mut ckpt).context(context)?;
    let bad = idlevit_data::files::non_finite_tensors(&ckpt);
    if let Some(first) = bad.first() {
        bail!(
            "{} is damaged: {} of its weights hold NaN or infinity (first: {})",
            path.display(),
            bad.len(),
            idlevit_checkpoint::clip(first)
        );
    }
    let policy = student.policy().clone();
    *student = ZooModel::load(&student.config(), ckpt)
        .context(|| format!("{} does not fit the model", path.display()))?
        .with_policy(policy)?;
    Ok(epochs_done as usize)
}

/// Checks that a teacher can distil into the student: the same family, classes, image size
/// and feature width (the width is what the feature term compares).
fn check_teacher(student: &ZooConfig, teacher: &ZooConfig) -> Result<()> {
    let describe = |config: &ZooConfig| {
        format!(
            "{} with {} classes, {} px, width {}",
            config.family(),
            config.num_classes(),
            config.img_size(),
            config.feature_dim()
        )
    };
    if describe(student) != describe(teacher) {
        bail!(
            "teacher and student do not match: expected a teacher like the student ({}), found {}",
            describe(student),
            describe(teacher)
        );
    }
    Ok(())
}

/// Finetunes `student` on `train` (optionally distilling from `teacher`), validating on
/// `val` at the end. A non-finite loss stops the run with an error; the last checkpoint
/// written stays the last good one. The process's allocator keeps freed memory from then on
/// ([`idlevit_kernels::keep_freed_memory`]), which saves each step's page faults.
pub fn finetune(
    student: &mut ZooModel,
    teacher: Option<&ZooModel>,
    train: &dyn ImageSet,
    val: Option<&dyn ImageSet>,
    options: &FinetuneOptions,
) -> Result<FinetuneReport> {
    finetune_in_group(student, teacher, train, val, options, &SingleProcess)
}

/// [`finetune`] as one rank of `group`: every step's global batch of
/// `options.batch * group.size()` images is split across the ranks ([`shard`]), each rank
/// computes the gradients of its part, and the ranks average them (weighted by their share)
/// before each takes the same optimiser step, so that all hold the same weights. Only the
/// leader (rank 0) shows progress and writes checkpoints; validation is sharded too.
pub fn finetune_in_group(
    student: &mut ZooModel,
    teacher: Option<&ZooModel>,
    train: &dyn ImageSet,
    val: Option<&dyn ImageSet>,
    options: &FinetuneOptions,
    group: &dyn ProcessGroup,
) -> Result<FinetuneReport> {
    options.validate()?;
    // Every step frees and allocates the same large buffers: keeping them in the allocator
    // saves the page faults of taking them back from the kernel each step.
    idlevit_kernels::keep_freed_memory();
    let classes = student.num_classes();
    check_classes(train, classes)?;
    if let Some(teacher) = teacher {
        check_teacher(&student.config(), &teacher.config())?;
    }
    options.objective.check(student)?;
    std::fs::create_dir_all(&options.out_dir)
        .map_err(|e| DataError::Io("cannot create", options.out_dir.clone(), e))?;
    let mut optimizer = AdamW::new(options.weight_decay);
    let first_epoch = match &options.resume {
        Some(path) => resume(student, &mut optimizer, path)?,
        None => 0,
    };
    if first_epoch > options.epochs {
        bail!(
            "the checkpoint has {first_epoch} epochs done, more than the {} asked for",
            options.epochs
        );
    }
    // Drop path acts only on the seeded training tape, so the model keeps it after training.
    *student = student.clone().with_drop_path(options.drop_path)?;
    let train_mode_teacher = prepare_batch_norm(student, teacher, options.batch_norm)?;
    let teacher = train_mode_teacher.as_ref().or(teacher);
    let global_batch = options.batch * group.size();
    let steps_per_epoch = train.len().div_ceil(global_batch);
    let schedule = CosineSchedule {
        base_lr: options.lr,
        min_lr: options.min_lr,
        warmup_lr: options.min_lr.min(options.lr),
        warmup_steps: options.warmup_epochs * steps_per_epoch,
        total_steps: options.epochs * steps_per_epoch,
    };
    let recipe = BatchRecipe {
        data: train,
        classes,
        smoothing: options.objective.smoothing,
        augment: options
            .augment
            .then(|| TrainTransform::for_size(student.img_size())),
        eval: EvalTransform::for_size(student.img_size()),
        mixup: options.mixup,
    };
    let path = checkpoint_path(&options.out_dir);
    let (mut epoch_losses, mut epoch_data_wait) = (Vec::new(), Vec::new());
    let (rank, ranks) = (group.rank(), group.size());
    let rank_stream = (rank as u64) << 32;
    for epoch in first_epoch..options.epochs {
        let bar = progress_bar(
            options.progress && group.is_leader(),
            train.len(),
            "epoch {prefix} {bar:25} {pos}/{len}  {msg}  ETA {eta}",
        );
        bar.set_prefix(format!("{}/{}", epoch + 1, options.epochs));
        let order = shuffled(train.len(), options.seed.wrapping_add(epoch as u64));
        let chunks: Vec<&[usize]> = order.chunks(global_batch).collect();
        let first_step = epoch * steps_per_epoch;
        let (mut loss_sum, started) = (0.0f64, Instant::now());
        // This rank's part of each step, prepared ahead; `None` where the rank has no samples.
        let prepare = |step_in_epoch: usize| {
            let seed = step_seed(options.seed, first_step + step_in_epoch);
            let mine = shard(chunks[step_in_epoch], rank, ranks);
            (!mine.is_empty())
                .then(|| recipe.prepare(epoch, mine, seed, seed ^ 1 ^ rank_stream))
                .transpose()
        };
        let train_step = |step_in_epoch: usize, batch: Option<(Tensor, Tensor)>| {
            let chunk = chunks[step_in_epoch];
            let step = first_step + step_in_epoch;
            let lr = schedule.lr(step);
            let mine = shard(chunk, rank, ranks);
            let (local_loss, mut grads) = match batch {
                None => (0.0, zero_gradients(student)),
                Some((images, targets)) => step_gradients(
                    student,
                    teacher,
                    &options.objective,
                    &images,
                    &targets,
                    Some(step_seed(options.seed, step) ^ 2 ^ rank_stream),
                )?,
            };
            // The batch-mean loss over all ranks; a non-finite loss anywhere makes the sum
            // non-finite, so every rank stops at the same step.
            let mut loss_total = [f64::from(local_loss) * mine.len() as f64];
            group.sum_f64(&mut loss_total)?;
            let loss = (loss_total[0] / chunk.len() as f64) as f32;
            if !loss.is_finite() {
                return Err(TrainError::NonFinite(loss));
            }
            average_gradients(group, &mut grads, mine.len(), chunk.len())?;
            let settings = StepSettings {
                lr,
                clip_grad: options.clip_grad,
                seed: None,
            };
            apply_gradients(student, &mut optimizer, grads, &settings)?;
            student.update_batch_norm(BATCH_NORM_MOMENTUM)?;
            loss_sum += f64::from(loss);
            bar.inc(chunk.len() as u64);
            let rate = bar.position() as f64 / started.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!("loss {loss:.4}  lr {lr:.2e}  {rate:.1} img/s"));
            Ok(())
        };
        let waited = prefetched(chunks.len(), BATCHES_AHEAD, prepare, train_step)?;
        let wall = started.elapsed().as_secs_f64();
        let data_wait = waited.as_secs_f64() / wall.max(1e-9);
        bar.finish_and_clear();
        let mean_loss = (loss_sum / steps_per_epoch as f64) as f32;
        epoch_losses.push(mean_loss);
        epoch_data_wait.push(data_wait);
        if group.is_leader() {
            save(student, &optimizer, epoch + 1, &path)?;
            if options.progress {
                // Printed as each epoch ends, so a run killed later still leaves its log.
                println!(
                    "epoch {} mean loss {mean_loss:.4}  data wait {:.1}%  {wall:.1} s",
                    epoch + 1,
                    100.0 * data_wait
                );
            }
        }
    }
    student.set_batch_norm(BatchNormMode::Frozen);
    let validation = val
        .map(|v| evaluate_in_group(student, v, options.batch, options.progress, group))
        .transpose()?;
    Ok(FinetuneReport {
        first_epoch,
        epoch_losses,
        epoch_data_wait,
        validation,
    })
}
