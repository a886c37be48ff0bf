//! Accuracy on the two digits tasks: from each task's embedded dense model, finetune IdleViT
//! (with and without the cut loss), EViT and top-k pruning with distillation from the dense
//! model, at each keep rate and seed, on training canvases drawn fresh every epoch; top-1 of
//! each on the task's fixed validation canvases, and images/s of each model form.
//!
//! The finetunes are independent, so they run side by side, one per thread, each on its
//! own one-thread pool: small models use one core better than two, and a single-threaded
//! finetune gives the same result whatever else runs.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, mpsc};
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use idlevit_data::digits::{Canvas, DigitsOptions};
use idlevit_data::{DigitsTask, ImageSet, TaskCanvases, task_split};
use idlevit_train::bench::bench;
use idlevit_train::evaluate::evaluate;
use idlevit_train::finetune::{FinetuneOptions, finetune};
use idlevit_train::{Mixup, Objective};
use idlevit_zoo::{DeiT, PolicyKind, ZooModel};

use super::speed::deit_policy;
use super::stats::mean_std;

/// How the accuracy experiment runs.
#[derive(Clone, Debug)]
pub struct AccuracyOptions {
    /// The tasks, each with its own embedded dense model.
    pub tasks: Vec<DigitsTask>,
    /// Base keep rates.
    pub rates: Vec<f64>,
    /// Seeds: each sets a finetune's canvases and their order, the same for every method.
    pub seeds: Vec<u64>,
    /// Finetuning epochs.
    pub epochs: usize,
    /// Training canvases per epoch, drawn afresh each epoch.
    pub canvases_per_epoch: usize,
    /// Validate on the first this many validation canvases of each task (`None`: all).
    pub val_limit: Option<usize>,
    /// Images per step.
    pub batch: usize,
    /// Peak learning rate (cosine to 1e-6).
    pub lr: f64,
    /// Distillation weight w (KL w, features 100 w).
    pub distill_weight: f32,
    /// Weight of the cut loss (both terms) for IdleViT + cut loss.
    pub cut_weight: f32,
    /// Timed passes per model form for the throughput axis.
    pub speed_runs: usize,
}

/// A finetuning method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// IdleViT with the token cut loss (both terms).
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

/// One method at one rate on one task: before finetuning, and per seed after.
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

/// What the experiment measured on one task.
pub struct TaskRun {
    /// Which task.
    pub task: DigitsTask,
    /// The dense model's top-1 on the validation canvases.
    pub dense_top1: f64,
    /// Per method and rate.
    pub results: Vec<MethodResult>,
    /// Validation canvases.
    pub val_images: usize,
    /// The validation canvases (for the token pictures).
    pub val: Vec<Canvas>,
    /// The finetuned first-seed IdleViT models `(method, rate, model)`, for the token
    /// analysis.
    pub idle_models: Vec<(Method, f64, DeiT)>,
}

impl TaskRun {
    /// The result of `method` at `rate`.
    pub fn find(&self, method: Method, rate: f64) -> Option<&MethodResult> {
        self.results
            .iter()
            .find(|r| r.method == method && r.rate == rate)
    }
}

/// What the experiment measured.
pub struct AccuracyRun {
    /// Per task, in the options' order.
    pub tasks: Vec<TaskRun>,
    /// Dense images/s (batch 64).
    pub dense_images_per_second: f64,
    /// Dense GMACs.
    pub dense_gmacs: f64,
    /// Training canvases per epoch.
    pub train_images: usize,
}

/// One unit of work: a policy's top-1 before finetuning, or one finetune.
#[derive(Clone, Copy, Debug)]
enum Job {
    OffTheShelf {
        task: usize,
        kind: PolicyKind,
        rate: f64,
    },
    Finetune {
        task: usize,
        method: Method,
        rate: f64,
        seed: u64,
    },
}

/// What a job gives back.
enum Outcome {
    Top1(f64),
    Finetuned(f64, Box<DeiT>),
}

/// A task's data and models, shared by its jobs.
struct TaskSetup {
    task: DigitsTask,
    train: TaskCanvases,
    val: TaskCanvases,
    dense: DeiT,
}

/// Runs `run` on every job, `workers` at a time, each worker on its own one-thread rayon
/// pool; results come back in job order. Progress lines reach `log` as jobs finish. The
/// first error stops the workers from taking new jobs and is returned.
fn run_jobs<J: Sync, R: Send>(
    jobs: &[J],
    workers: usize,
    run: &(dyn Fn(&J) -> Result<(R, String)> + Sync),
    log: &mut dyn FnMut(String),
) -> Result<Vec<R>> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..jobs.len()).map(|_| None).collect());
    let first_error: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let (sender, receiver) = mpsc::channel::<String>();
    std::thread::scope(|scope| {
        for _ in 0..workers.max(1) {
            let sender = sender.clone();
            let (next, failed, results, first_error) = (&next, &failed, &results, &first_error);
            scope.spawn(move || {
                let fail = |e: anyhow::Error| {
                    failed.store(true, Ordering::SeqCst);
                    if let Ok(mut slot) = first_error.lock() {
                        slot.get_or_insert(e);
                    }
                };
                let pool = match rayon::ThreadPoolBuilder::new().num_threads(1).build() {
                    Ok(pool) => pool,
                    Err(e) => return fail(anyhow!("cannot start a worker pool: {e}")),
                };
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= jobs.len() || failed.load(Ordering::SeqCst) {
                        break;
                    }
                    match pool.install(|| run(&jobs[i])) {
                        Ok((result, line)) => {
                            if let Ok(mut slots) = results.lock() {
                                slots[i] = Some(result);
                            }
                            let _ = sender.send(line);
                        }
                        Err(e) => return fail(e),
                    }
                }
            });
        }
        drop(sender);
        for line in receiver {
            log(line);
        }
    });
    if let Some(e) = first_error
        .into_inner()
        .map_err(|_| anyhow!("a worker panicked"))?
    {
        return Err(e);
    }
    results
        .into_inner()
        .map_err(|_| anyhow!("a worker panicked"))?
        .into_iter()
        .map(|r| r.ok_or_else(|| anyhow!("a job did not finish")))
        .collect()
}

/// The objective of `method`: the paper's, with the cut loss only for IdleViT + cut loss.
fn objective(method: Method, options: &AccuracyOptions) -> Objective {
    let cut = method == Method::IdleCut;
    Objective {
        form: idlevit_train::ObjectiveForm::Paper,
        cut_loss: if cut {
            idlevit_cutloss::CutLoss::Both
        } else {
            idlevit_cutloss::CutLoss::None
        },
        cut_weight: if cut { options.cut_weight } else { 0.0 },
        distill_weight: options.distill_weight,
        smoothing: 0.1,
    }
}

/// One finetune: `method` at `rate` from the task's dense model, which is also the teacher.
fn finetune_one(
    setup: &TaskSetup,
    method: Method,
    rate: f64,
    seed: u64,
    options: &AccuracyOptions,
    dir: &Path,
) -> Result<(f64, DeiT)> {
    let policy = deit_policy(method.kind(), rate)?;
    let mut student = ZooModel::DeiT(Box::new(setup.dense.clone().with_policy(policy)?));
    let teacher = ZooModel::DeiT(Box::new(setup.dense.clone()));
    let run_dir = dir.join("runs").join(format!(
        "{}-{:?}-r{rate}-seed{seed}",
        setup.task.name(),
        method
    ));
    let ft = FinetuneOptions {
        epochs: options.epochs,
        batch: options.batch,
        lr: options.lr,
        min_lr: 1e-6,
        warmup_epochs: 0,
        weight_decay: 0.05,
        clip_grad: Some(5.0),
        // A short finetune from a converged model, on fresh canvases every epoch: the
        // comparison is of the selection methods, so no other regularisation is added.
        drop_path: 0.0,
        mixup: Mixup::off(),
        augment: false,
        batch_norm: idlevit_nn::BatchNormMode::Frozen,
        objective: objective(method, options),
        seed,
        out_dir: run_dir.clone(),
        resume: None,
        progress: false,
    };
    let train = setup.train.clone().with_draw_seed(seed);
    let report = finetune(&mut student, Some(&teacher), &train, Some(&setup.val), &ft)
        .with_context(|| {
            format!(
                "finetuning {} at r={rate}, seed {seed}, on {}",
                method.name(),
                setup.task.name()
            )
        })?;
    // The model stays in memory; its checkpoint (with optimiser state) is not needed.
    let _ = std::fs::remove_dir_all(&run_dir);
    let ZooModel::DeiT(student) = student else {
        anyhow::bail!("finetuning changed the model's family");
    };
    let top1 = report
        .validation
        .map(|a| a.top1)
        .ok_or_else(|| anyhow!("the finetune of {} gave no validation", method.name()))?;
    Ok((top1, *student))
}

/// Runs the experiment: each task's dense model (from `dense_model`) is the starting point
/// and teacher of its finetunes; each run checkpoints under `dir/runs`, removed once
/// finished. `log` receives progress lines.
pub fn run_accuracy(
    dense_model: &dyn Fn(DigitsTask) -> Result<DeiT>,
    options: &AccuracyOptions,
    dir: &Path,
    log: &mut dyn FnMut(String),
) -> Result<AccuracyRun> {
    anyhow::ensure!(
        !options.tasks.is_empty() && !options.rates.is_empty() && !options.seeds.is_empty(),
        "the accuracy experiment needs at least one task, rate and seed"
    );
    let mut setups = Vec::new();
    for &task in &options.tasks {
        let split = task_split(
            task,
            &DigitsOptions::default(),
            Some(options.canvases_per_epoch),
        )?;
        let val = match options.val_limit {
            Some(n) => split.val.first(n),
            None => split.val,
        };
        setups.push(TaskSetup {
            task,
            train: split.train,
            val,
            dense: dense_model(task)?,
        });
    }
    let reference = &setups[0].dense;

    // Throughput of each inference form, interleaved in one run (one architecture serves
    // every task).
    let mut forms = vec![reference.clone()];
    for &rate in &options.rates {
        for kind in [PolicyKind::Idle, PolicyKind::Evit, PolicyKind::Prune] {
            forms.push(reference.clone().with_policy(deit_policy(kind, rate)?)?);
        }
    }
    let side = reference.config().img_size;
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
    let kind_index = |kind: PolicyKind| match kind {
        PolicyKind::Idle => 0,
        PolicyKind::Evit => 1,
        PolicyKind::Prune => 2,
    };

    let mut dense_top1 = Vec::new();
    for setup in &setups {
        let teacher = ZooModel::DeiT(Box::new(setup.dense.clone()));
        let top1 = evaluate(&teacher, &setup.val, 64, false)?.top1;
        log(format!(
            "{}: dense top-1 {:.2}% on {} validation canvases",
            setup.task.name(),
            100.0 * top1,
            setup.val.len()
        ));
        dense_top1.push(top1);
    }

    let mut jobs = Vec::new();
    for task in 0..setups.len() {
        for &rate in &options.rates {
            for kind in [PolicyKind::Idle, PolicyKind::Evit, PolicyKind::Prune] {
                jobs.push(Job::OffTheShelf { task, kind, rate });
            }
            for method in Method::ALL {
                for &seed in &options.seeds {
                    jobs.push(Job::Finetune {
                        task,
                        method,
                        rate,
                        seed,
                    });
                }
            }
        }
    }
    let workers = rayon::current_num_threads();
    log(format!(
        "accuracy: {} finetunes and {} evaluations, {workers} at a time ...",
        jobs.iter()
            .filter(|j| matches!(j, Job::Finetune { .. }))
            .count(),
        jobs.iter()
            .filter(|j| matches!(j, Job::OffTheShelf { .. }))
            .count(),
    ));
    let setups_ref = &setups;
    let run = move |job: &Job| -> Result<(Outcome, String)> {
        let started = Instant::now();
        match *job {
            Job::OffTheShelf { task, kind, rate } => {
                let setup = &setups_ref[task];
                let model = setup.dense.clone().with_policy(deit_policy(kind, rate)?)?;
                let model = ZooModel::DeiT(Box::new(model));
                let top1 = evaluate(&model, &setup.val, 64, false)?.top1;
                Ok((Outcome::Top1(top1), String::new()))
            }
            Job::Finetune {
                task,
                method,
                rate,
                seed,
            } => {
                let setup = &setups_ref[task];
                let (top1, model) = finetune_one(setup, method, rate, seed, options, dir)?;
                let line = format!(
                    "{} {} r={rate} seed {seed}: top-1 {:.2}%, {:.0} s",
                    setup.task.name(),
                    method.name(),
                    100.0 * top1,
                    started.elapsed().as_secs_f64()
                );
                Ok((Outcome::Finetuned(top1, Box::new(model)), line))
            }
        }
    };
    let mut quiet_log = |line: String| {
        if !line.is_empty() {
            log(line);
        }
    };
    let outcomes = run_jobs(&jobs, workers, &run, &mut quiet_log)?;

    let mut tasks: Vec<TaskRun> = setups
        .iter()
        .zip(&dense_top1)
        .map(|(setup, &top1)| {
            Ok(TaskRun {
                task: setup.task,
                dense_top1: top1,
                results: Vec::new(),
                val_images: setup.val.len(),
                val: setup.val.canvases(0)?,
                idle_models: Vec::new(),
            })
        })
        .collect::<Result<_>>()?;
    // Each (task, rate)'s evaluations before finetuning come before its finetunes in job
    // order, so every finetune below finds its method's figure here.
    let mut before = std::collections::HashMap::new();
    for (job, outcome) in jobs.iter().zip(outcomes) {
        match (*job, outcome) {
            (Job::OffTheShelf { task, kind, rate }, Outcome::Top1(top1)) => {
                before.insert((task, kind_index(kind), rate.to_bits()), top1);
            }
            (
                Job::Finetune {
                    task,
                    method,
                    rate,
                    seed,
                },
                Outcome::Finetuned(top1, model),
            ) => {
                let run = &mut tasks[task];
                if seed == options.seeds[0] && method.kind() == PolicyKind::Idle {
                    run.idle_models.push((method, rate, *model));
                }
                match run
                    .results
                    .iter_mut()
                    .find(|r| r.method == method && r.rate == rate)
                {
                    Some(result) => result.finetuned.push((seed, top1)),
                    None => {
                        let ri = options.rates.iter().position(|&r| r == rate).unwrap_or(0);
                        let key = (task, kind_index(method.kind()), rate.to_bits());
                        run.results.push(MethodResult {
                            method,
                            rate,
                            off_the_shelf: before.get(&key).copied().unwrap_or(f64::NAN),
                            finetuned: vec![(seed, top1)],
                            gmacs: super::cost::gmacs(
                                reference.config(),
                                method.kind(),
                                Some(rate),
                            )?,
                            images_per_second: timing
                                .images_per_second(1 + 3 * ri + kind_index(method.kind())),
                        });
                    }
                }
            }
            _ => anyhow::bail!("a job gave the wrong kind of result"),
        }
    }
    Ok(AccuracyRun {
        tasks,
        dense_images_per_second: timing.images_per_second(0),
        dense_gmacs: super::cost::gmacs(reference.config(), PolicyKind::Idle, None)?,
        train_images: options.canvases_per_epoch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_run_on_every_worker_and_come_back_in_order() {
        let jobs: Vec<usize> = (0..20).collect();
        let mut lines = Vec::new();
        let run = |&j: &usize| -> Result<(usize, String)> {
            // Each job sees a one-thread pool of its own.
            Ok((
                j * j + 100 * rayon::current_num_threads(),
                format!("job {j}"),
            ))
        };
        let results = run_jobs(&jobs, 3, &run, &mut |l| lines.push(l)).unwrap();
        assert_eq!(results, (0..20).map(|j| j * j + 100).collect::<Vec<_>>());
        lines.sort();
        assert_eq!(lines.len(), 20);
    }

    #[test]
    fn the_first_error_stops_the_jobs_and_is_returned() {
        let jobs: Vec<usize> = (0..50).collect();
        let started = AtomicUsize::new(0);
        let run = |&j: &usize| -> Result<((), String)> {
            started.fetch_add(1, Ordering::SeqCst);
            anyhow::ensure!(j != 3, "job 3 failed");
            // The other jobs take long enough that the failure is seen before they all ran.
            std::thread::sleep(std::time::Duration::from_millis(2));
            Ok(((), String::new()))
        };
        let err = run_jobs(&jobs, 2, &run, &mut |_| {}).unwrap_err();
        assert_eq!(err.to_string(), "job 3 failed");
        assert!(started.load(Ordering::SeqCst) < 50);
    }
}
