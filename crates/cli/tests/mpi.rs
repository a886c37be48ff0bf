//! Data-parallel finetuning and sharded evaluation over MPI (`--features mpi`; needs
//! `mpirun`, e.g. Debian's Open MPI): one step on two ranks equals one process at twice the
//! batch, sharded evaluation equals single-process evaluation exactly, and a rank that dies
//! ends the job with a non-zero exit while the last checkpoint stays valid.

#![cfg(feature = "mpi")]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use idlevit_checkpoint::Checkpoint;
use idlevit_zoo::{DeiT, DeiTConfig, ZooConfig, ZooModel};

mod common;
use common::{CONFIG, PVT, finetune_args, s, setup};

/// `mpirun -np ranks idlevit --threads 1 ARGS`, allowed to run as root and to put two ranks
/// on a machine with fewer cores.
fn mpirun(ranks: usize, args: &[&str]) -> Command {
    let mut command = Command::new("mpirun");
    command
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .args(["--oversubscribe", "--bind-to", "none", "-np"])
        .arg(ranks.to_string())
        .arg(env!("CARGO_BIN_EXE_idlevit"))
        .args(["--threads", "1"])
        .args(args);
    command
}

fn single(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_idlevit"))
        .args(["--threads", "1"])
        .args(args)
        .output()
        .expect("the idlevit binary runs")
}

fn succeeded(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn tensors(path: &Path) -> BTreeMap<String, Vec<f32>> {
    Checkpoint::load_safetensors(path)
        .unwrap()
        .iter()
        .map(|(name, t)| (name.to_string(), t.to_vec()))
        .collect()
}

/// `||a - b|| / ||b||` (0 when both are zero).
fn relative(a: &[f32], b: &[f32]) -> f64 {
    let diff: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
    let norm: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    if norm == 0.0 {
        diff.sqrt()
    } else {
        (diff / norm).sqrt()
    }
}

#[test]
fn one_step_on_two_ranks_equals_one_process_at_twice_the_batch() {
    let (dir, config, weights) = setup("mpi-step");
    two_ranks_take_the_step_of_one_process(&dir, &config, &weights, &[]);
    // PVT-v2 (idle stages 2-4, its conv stem and depthwise convolutions) likewise.
    let pvt_config = dir.join("pvt.json");
    std::fs::write(&pvt_config, PVT).unwrap();
    let pvt = ZooModel::random(&ZooConfig::from_json(PVT).unwrap(), 5).unwrap();
    let pvt_weights = dir.join("pvt.safetensors");
    pvt.to_checkpoint()
        .unwrap()
        .save_safetensors(&pvt_weights)
        .unwrap();
    two_ranks_take_the_step_of_one_process(
        &dir,
        &pvt_config,
        &pvt_weights,
        &["--keep-rate", "0.7"],
    );
}

/// Finetunes `weights` for one step over the 12 training images of `dir/data`: one step of
/// 12 in one process, or 6 per rank on two; both take the same update.
fn two_ranks_take_the_step_of_one_process(
    dir: &Path,
    config: &Path,
    weights: &Path,
    family_args: &[&str],
) {
    let data = dir.join("data");
    let run = |out: &str, batch: &str| {
        let extra = [
            "--epochs",
            "1",
            "--batch",
            batch,
            "--lr",
            "1e-3",
            "--warmup-epochs",
            "0",
            "--distill-weight",
            "1",
            "--no-augment",
            "--mixup",
            "0",
            "--cutmix",
            "0",
            "--drop-path",
            "0",
        ];
        let extra = [&extra[..], family_args].concat();
        finetune_args(config, weights, &data, &dir.join(out), &extra)
    };
    let one = run("one", "12");
    succeeded(&single(&one.iter().map(String::as_str).collect::<Vec<_>>()));
    let two = run("two", "6");
    let stdout = succeeded(
        &mpirun(2, &two.iter().map(String::as_str).collect::<Vec<_>>())
            .output()
            .unwrap(),
    );
    assert!(stdout.contains("2 ranks, global batch 12"), "{stdout}");
    assert_eq!(
        stdout.matches("epoch 1 mean loss").count(),
        1,
        "rank 0 alone prints"
    );

    let before = tensors(weights);
    let one = tensors(&dir.join("one/checkpoint.safetensors"));
    let two = tensors(&dir.join("two/checkpoint.safetensors"));
    assert_eq!(
        one.keys().collect::<Vec<_>>(),
        two.keys().collect::<Vec<_>>()
    );
    let mut parameters = 0;
    for (name, expected) in &one {
        // The optimiser's moments hold the averaged gradient (m = 0.1 g, v = 0.001 g^2):
        // the allreduce is checked on them directly.
        let Some(start) = before.get(name) else {
            let rel = relative(&two[name], expected);
            assert!(rel <= 1e-5, "{name}: relative difference {rel}");
            continue;
        };
        // The update each process took, over the elements whose gradient is not zero in
        // theory. Adam's first step is about lr * g / |g|, which turns rounding noise in a
        // gradient that is exactly zero in theory (the key bias's: softmax ignores it) into
        // a step of its own; those elements are left out.
        let moment = &one[&format!("adamw.m.{name}")];
        let largest = moment.iter().fold(0.0f32, |m, g| m.max(g.abs()));
        let (mut ours, mut reference) = (Vec::new(), Vec::new());
        for i in 0..start.len() {
            if moment[i].abs() > 1e-6 * largest {
                ours.push(two[name][i] - start[i]);
                reference.push(expected[i] - start[i]);
            }
        }
        let rel = relative(&ours, &reference);
        assert!(rel <= 1e-5, "{name}: update differs by {rel}");
        parameters += 1;
    }
    assert_eq!(parameters, before.len(), "every parameter is compared");
}

#[test]
fn sharded_evaluation_equals_one_process() {
    let (dir, config, weights) = setup("mpi-eval");
    let val = dir.join("data/val");
    for mode in ["dense", "idle"] {
        let args = [
            "eval",
            "--config",
            s(&config),
            "--weights",
            s(&weights),
            "--data",
            s(&val),
            "--mode",
            mode,
            "--batch",
            "2",
        ];
        let alone = succeeded(&single(&args));
        for ranks in [2, 3] {
            let sharded = succeeded(&mpirun(ranks, &args).output().unwrap());
            assert_eq!(sharded, alone, "{mode} on {ranks} ranks");
        }
    }
}

#[test]
fn a_dead_rank_fails_the_job_and_the_last_checkpoint_stays_valid() {
    let (dir, config, weights) = setup("mpi-death");
    let out = dir.join("out");
    let args = finetune_args(
        &config,
        &weights,
        &dir.join("data"),
        &out,
        &["--epochs", "100000", "--batch", "2"],
    );
    let mut job = mpirun(2, &args.iter().map(String::as_str).collect::<Vec<_>>())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let checkpoint = out.join("checkpoint.safetensors");
    let started = Instant::now();
    while !checkpoint.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The ranks are mpirun's children; kill one of them outright.
    let children = Command::new("pgrep")
        .args(["-P", &job.id().to_string()])
        .output()
        .unwrap();
    let victim = String::from_utf8_lossy(&children.stdout)
        .lines()
        .last()
        .expect("mpirun has rank processes")
        .trim()
        .to_string();
    assert!(
        Command::new("kill")
            .args(["-9", &victim])
            .status()
            .unwrap()
            .success()
    );
    let started = Instant::now();
    let status = loop {
        if let Some(status) = job.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the job did not end"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success(), "a job with a dead rank must fail");
    let model = DeiT::load(&DeiTConfig::from_json(CONFIG).unwrap(), {
        let mut ckpt = Checkpoint::load_safetensors(&checkpoint).unwrap();
        let extra: Vec<String> = ckpt
            .iter()
            .map(|(n, _)| n.to_string())
            .filter(|n| n.starts_with("adamw.") || n.starts_with("train."))
            .collect();
        extra.iter().for_each(|n| drop(ckpt.remove(n)));
        ckpt
    });
    assert!(model.is_ok(), "the last checkpoint is still a whole model");
}
