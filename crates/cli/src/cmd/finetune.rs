//! `idlevit finetune`: an idle model trained on an image folder, with a frozen dense teacher.

use std::path::PathBuf;

use anyhow::{Result, ensure};
use clap::Args;
use idlevit_data::digits::DigitsOptions;
use idlevit_data::files::{NamedPath, check_distinct, save_checkpoint};
use idlevit_data::{ImageFolder, ImageSet, task_split};
use idlevit_train::finetune::{FinetuneOptions, checkpoint_path, finetune_in_group};
use idlevit_train::models::load_zoo_model;
use idlevit_zoo::{MemoryUse, ZooModel};

use super::{Globals, check_model_memory, named, print_accuracy, training_policy};
use crate::args::{ModelArgs, ObjectiveArgs, RegularisationArgs, TaskArg};
use crate::checks;

/// The arguments of `finetune`.
#[derive(Args)]
pub struct Finetune {
    #[command(flatten)]
    model: ModelArgs,
    /// Starting weights of the student, or a timm hub snapshot directory (absent: seeded
    /// random weights from --init-seed, to train from scratch).
    #[arg(long, value_name = "W")]
    weights: Option<PathBuf>,
    /// Seed of the random starting weights when --weights is absent.
    #[arg(long, default_value_t = 0, conflicts_with = "weights")]
    init_seed: u64,
    /// Frozen dense teacher weights of the same family and size (default: the starting
    /// weights, if given).
    #[arg(long, value_name = "W")]
    teacher: Option<PathBuf>,
    /// The data set folder: DIR/train and DIR/val, or one folder of class folders.
    #[arg(long, value_name = "DIR", required_unless_present = "task")]
    data: Option<PathBuf>,
    /// Train on a built-in task instead of --data: new training canvases every epoch (seeded
    /// by --seed), validation on the task's fixed held-out canvases.
    #[arg(long, value_enum, conflicts_with = "data")]
    task: Option<TaskArg>,
    /// Training canvases per epoch with --task (default: one per training digit, 1348).
    #[arg(long, value_name = "N", requires = "task", value_parser = checks::at_least_one, allow_negative_numbers = true)]
    canvases_per_epoch: Option<usize>,
    /// Passes over the training set.
    #[arg(long, default_value_t = 30, value_parser = checks::at_least_one, allow_negative_numbers = true)]
    epochs: usize,
    /// Images per step.
    #[arg(long, default_value_t = 64, value_parser = checks::at_least_one, allow_negative_numbers = true)]
    batch: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-5, value_parser = checks::non_negative, allow_negative_numbers = true)]
    lr: f64,
    /// Learning-rate floor (at most --lr).
    #[arg(long, default_value_t = 1e-6, value_parser = checks::non_negative, allow_negative_numbers = true)]
    min_lr: f64,
    /// Epochs of linear warm-up.
    #[arg(long, default_value_t = 0)]
    warmup_epochs: usize,
    /// Decoupled weight decay on weight matrices.
    #[arg(long, default_value_t = 0.05, value_parser = checks::non_negative, allow_negative_numbers = true)]
    weight_decay: f64,
    /// Clip the global gradient norm (> 0).
    #[arg(long, value_name = "NORM", value_parser = checks::positive, allow_negative_numbers = true)]
    clip_grad: Option<f64>,
    #[command(flatten)]
    regularisation: RegularisationArgs,
    /// Base keep rate r of the family's idle schedule (as for `loss`); or
    /// idle_layers/keep_ratios in the config; with neither, the model trains dense.
    #[arg(long, value_name = "R")]
    keep_rate: Option<f64>,
    #[command(flatten)]
    objective: ObjectiveArgs,
    /// Seed of the shuffles.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where checkpoint.safetensors is written after every epoch.
    #[arg(long, value_name = "DIR", default_value = "finetune-out")]
    out: PathBuf,
    /// Resume from a checkpoint written by an earlier run.
    #[arg(long, value_name = "CKPT")]
    resume: Option<PathBuf>,
    /// Also write the final weights alone (no optimiser state) to this safetensors file.
    #[arg(long, value_name = "W")]
    weights_out: Option<PathBuf>,
}

/// Runs `finetune`.
pub fn run(args: Finetune, globals: &Globals) -> Result<()> {
    let (strict, group) = (globals.strict, globals.group);
    checks::learning_rates(args.lr, args.min_lr)?;
    let checkpoint = checkpoint_path(&args.out);
    let snapshots = super::snapshot_files(&[
        ("--weights", args.weights.as_deref()),
        ("--teacher", args.teacher.as_deref()),
    ]);
    let mut inputs = args.model.config_input();
    inputs.extend(
        snapshots
            .iter()
            .map(|(flag, path)| NamedPath::new(flag, path)),
    );
    inputs.extend(named("--weights", &args.weights));
    inputs.extend(named("--teacher", &args.teacher));
    // The checkpoint may be the one resumed from: it is read whole before the first epoch
    // replaces it, atomically. Any other input it replaced would be lost.
    let mut outputs = vec![NamedPath::new("--out", &checkpoint)];
    outputs.extend(named("--weights-out", &args.weights_out));
    check_distinct(&inputs, &outputs)?;
    let resumed: Vec<NamedPath> = named("--resume", &args.resume).into_iter().collect();
    check_distinct(&resumed, &outputs[1..])?;
    let resolved = super::resolve_model(&args.model, args.weights.as_deref())?;
    let default_transform =
        idlevit_data::preprocess::EvalTransform::for_size(resolved.config.img_size());
    ensure!(
        (resolved.transform.mean, resolved.transform.std)
            == (default_transform.mean, default_transform.std),
        "{} is normalised with mean {:?} and std {:?}; finetuning feeds images normalised \
         with the ImageNet mean and std, so it would train on inputs the model was not made for",
        resolved.name,
        resolved.transform.mean,
        resolved.transform.std
    );
    let config = resolved.config;
    let weights = resolved.weights;
    let teacher_path = match args.teacher.as_deref() {
        Some(t) => Some(super::weights_file(t, &config, "--teacher")?),
        None => weights.clone(),
    };
    let token_policy = training_policy(&config, args.keep_rate)?;
    let objective = args.objective.objective(&config);
    objective.validate()?;
    ensure!(
        teacher_path.is_some() || objective.distill_weight == 0.0,
        "--distill-weight needs a teacher: give --teacher or --weights"
    );
    let training = MemoryUse::Training {
        teacher: teacher_path.is_some(),
    };
    check_model_memory(&config, args.batch, training, globals.max_memory)?;
    let mut student = match &weights {
        Some(w) => load_zoo_model(&config, Some(w), "weights", strict)?,
        None => ZooModel::random(&config, args.init_seed)?,
    }
    .with_policy(token_policy)?;
    objective.check(&student)?;
    let teacher = match teacher_path {
        Some(t) => Some(load_zoo_model(
            &config,
            Some(&t),
            "teacher weights",
            strict,
        )?),
        None => None,
    };
    let (train, val): (Box<dyn ImageSet>, Option<Box<dyn ImageSet>>) = match (&args.data, args.task)
    {
        (_, Some(task)) => {
            let split = task_split(
                task.into(),
                &DigitsOptions::default(),
                args.canvases_per_epoch,
            )?;
            (
                Box::new(split.train.with_draw_seed(args.seed)),
                Some(Box::new(split.val)),
            )
        }
        (Some(data), None) => {
            let (train_dir, val_dir) = if data.join("train").is_dir() {
                let val = data.join("val");
                (data.join("train"), val.is_dir().then_some(val))
            } else {
                (data.clone(), None)
            };
            let train = ImageFolder::open(&train_dir)?;
            let val = val_dir
                .as_deref()
                .map(|dir| ImageFolder::open_with_classes(dir, train.classes()))
                .transpose()?;
            (
                Box::new(train),
                val.map(|v| Box::new(v) as Box<dyn ImageSet>),
            )
        }
        (None, None) => anyhow::bail!("give --data DIR or --task"),
    };
    let options = FinetuneOptions {
        epochs: args.epochs,
        batch: args.batch,
        lr: args.lr,
        min_lr: args.min_lr,
        warmup_epochs: args.warmup_epochs,
        weight_decay: args.weight_decay,
        clip_grad: args.clip_grad,
        drop_path: args.regularisation.drop_path,
        mixup: args.regularisation.mixup(),
        augment: !args.regularisation.no_augment,
        objective,
        batch_norm: args.objective.batchnorm.into(),
        seed: args.seed,
        out_dir: args.out.clone(),
        resume: args.resume.clone(),
        progress: group.is_leader(),
    };
    let report = finetune_in_group(
        &mut student,
        teacher.as_ref(),
        train.as_ref(),
        val.as_deref(),
        &options,
        group,
    )?;
    if !group.is_leader() {
        return Ok(());
    }
    if group.size() > 1 {
        let global_batch = args.batch * group.size();
        println!("{} ranks, global batch {global_batch}", group.size());
    }
    println!("checkpoint: {}", checkpoint.display());
    if let Some(path) = args.weights_out {
        save_checkpoint(&student.to_checkpoint()?, &path, "the final weights")?;
        println!("weights: {}", path.display());
    }
    if let Some(acc) = report.validation {
        print_accuracy("validation ", &acc);
    }
    Ok(())
}
