//! Hostile and mistaken input at the command line: nothing is lost, nothing non-finite is
//! written or scored as right, every argument's range is checked, and memory exhaustion is an
//! error (tests run the binary under an address-space limit, so an allocation abort fails
//! them).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use idlevit_checkpoint::Checkpoint;
use idlevit_tensor::Tensor;
use idlevit_zoo::{DeiT, DeiTConfig};

mod common;
use common::{CONFIG, failure, finetune_args, idlevit, s, setup, success};

/// Address space the binary gets in the memory tests: room for the program, its threads and
/// the small models here, far below what the refused requests would take.
const LIMIT_BYTES: u64 = 1 << 30;

/// Runs the binary under RLIMIT_AS (`ulimit -v`), so that exhausting memory aborts it.
fn idlevit_limited(args: &[&str]) -> Output {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(format!(
            "ulimit -v {}; exec \"$0\" \"$@\"",
            LIMIT_BYTES / 1024
        ))
        .arg(env!("CARGO_BIN_EXE_idlevit"))
        .args(args);
    command.output().expect("sh runs the binary")
}

/// Runs the binary with owned arguments.
fn run(args: &[String]) -> Output {
    idlevit(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// The standard error of a run that failed with an error message, not a signal or abort.
fn clean_failure(run: &Output) -> String {
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert_eq!(
        run.status.code(),
        Some(1),
        "expected an error exit, got {:?}: {stderr}",
        run.status
    );
    assert!(stderr.starts_with("error: "), "{stderr}");
    stderr
}

fn input_file(dir: &Path, batch: usize) -> PathBuf {
    let path = dir.join("input.safetensors");
    let mut ckpt = Checkpoint::default();
    let values = (0..batch * 3 * 16 * 16)
        .map(|i| (i % 13) as f32 / 13.0)
        .collect();
    ckpt.insert(
        "input",
        Tensor::from_vec(vec![batch, 3, 16, 16], values).unwrap(),
    );
    ckpt.save_safetensors(&path).unwrap();
    path
}

/// Weights of the tiny model whose every value is NaN.
fn nan_weights(dir: &Path) -> PathBuf {
    let model = DeiT::random(&DeiTConfig::from_json(CONFIG).unwrap(), 3).unwrap();
    let mut ckpt = Checkpoint::default();
    for (name, tensor) in model.to_checkpoint().unwrap().iter() {
        let nan = Tensor::from_vec(tensor.shape().to_vec(), vec![f32::NAN; tensor.numel()]);
        ckpt.insert(name, nan.unwrap());
    }
    let path = dir.join("nan.safetensors");
    ckpt.save_safetensors(&path).unwrap();
    path
}

fn non_finite_tensors(path: &Path) -> usize {
    Checkpoint::load_safetensors(path)
        .unwrap()
        .iter()
        .filter(|(_, t)| !t.to_vec().iter().all(|v| v.is_finite()))
        .count()
}

/// Case 1: a learning rate that makes the weights non-finite stops the run, the epoch before
/// it stays on disk as the checkpoint, `--weights-out` is not written, and NaN is refused as
/// an argument.
#[test]
fn non_finite_weights_are_never_written() {
    let (dir, config, weights) = setup("nan-lr");
    let out = dir.join("out");
    let weights_out = dir.join("final.safetensors");
    // One step per epoch; the warm-up epoch runs at the floor 0, the second at 1e39, which
    // overflows every updated f32 weight.
    let outcome = run(&finetune_args(
        &config,
        &weights,
        &dir.join("data"),
        &out,
        &[
            "--epochs",
            "3",
            "--batch",
            "12",
            "--warmup-epochs",
            "1",
            "--min-lr",
            "0",
            "--lr",
            "1e39",
            "--weights-out",
            s(&weights_out),
        ],
    ));
    let stderr = clean_failure(&outcome);
    assert!(stderr.contains("non-finite"), "{stderr}");
    // Case 10: the finished epoch was logged before the failure.
    let stdout = String::from_utf8_lossy(&outcome.stdout);
    assert!(stdout.contains("epoch 1 mean loss"), "{stdout}");
    let ckpt = out.join("checkpoint.safetensors");
    let saved = Checkpoint::load_safetensors(&ckpt).unwrap();
    assert_eq!(saved.get("train.epochs_done").unwrap().to_vec(), vec![1.0]);
    assert_eq!(non_finite_tensors(&ckpt), 0);
    assert!(!weights_out.exists());

    // Resuming the good checkpoint at a damaging rate leaves it as it was.
    let before = std::fs::read(&ckpt).unwrap();
    let resumed = run(&finetune_args(
        &config,
        &weights,
        &dir.join("data"),
        &out,
        &[
            "--epochs",
            "3",
            "--batch",
            "12",
            "--lr",
            "1e39",
            "--resume",
            s(&ckpt),
        ],
    ));
    clean_failure(&resumed);
    assert_eq!(std::fs::read(&ckpt).unwrap(), before);

    for bad in ["NaN", "inf", "-1"] {
        let run = idlevit(&[
            "finetune",
            "--config",
            s(&config),
            "--data",
            s(&dir),
            "--lr",
            bad,
        ]);
        let stderr = failure(&run);
        assert!(stderr.contains("--lr"), "{bad}: {stderr}");
    }
}

/// Case 2: a model whose logits are NaN scores 0%, with a warning that says how many.
#[test]
fn nan_logits_are_wrong_answers() {
    let (dir, config, _) = setup("nan-eval");
    let weights = nan_weights(&dir);
    let run = idlevit(&[
        "eval",
        "--config",
        s(&config),
        "--weights",
        s(&weights),
        "--data",
        s(&dir.join("data/val")),
    ]);
    let stdout = success(&run);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stdout.contains("top-1 0.00%  top-5 0.00%"), "{stdout}");
    assert!(stderr.contains("6 of 6 images gave NaN"), "{stderr}");

    let logits = dir.join("logits.safetensors");
    let run = idlevit(&[
        "logits",
        "--config",
        s(&config),
        "--weights",
        s(&weights),
        "--input",
        s(&input_file(&dir, 2)),
        "--output",
        s(&logits),
    ]);
    success(&run);
    assert!(String::from_utf8_lossy(&run.stderr).contains("2 of 2 images' logits"));
}

/// Case 3: an output that is an input, or another output, is refused and the files stay.
#[test]
fn outputs_never_replace_inputs() {
    let (dir, config, weights) = setup("alias");
    let input = input_file(&dir, 1);
    let input_bytes = std::fs::read(&input).unwrap();
    let weight_bytes = std::fs::read(&weights).unwrap();
    let link = dir.join("link.safetensors");
    std::os::unix::fs::symlink(&input, &link).unwrap();
    let fresh = dir.join("fresh.safetensors");
    let logits = |output: &Path, selected: Option<&Path>| {
        let mut args = vec![
            "logits",
            "--config",
            s(&config),
            "--weights",
            s(&weights),
            "--input",
            s(&input),
            "--output",
            s(output),
            "--mode",
            "idle",
        ];
        if let Some(selected) = selected {
            args.extend(["--selected-out", s(selected)]);
        }
        idlevit(&args)
    };
    for (output, selected, named) in [
        (&input, None, "--input"),
        (&link, None, "--input"),
        (&weights, None, "--weights"),
        (&config, None, "--config"),
        (&fresh, Some(fresh.as_path()), "--selected-out"),
    ] {
        let stderr = failure(&logits(output, selected));
        assert!(stderr.contains(named), "{named}: {stderr}");
        assert!(!fresh.exists());
    }
    assert_eq!(std::fs::read(&input).unwrap(), input_bytes);
    assert_eq!(std::fs::read(&weights).unwrap(), weight_bytes);

    let loss = idlevit(&[
        "loss",
        "--config",
        s(&config),
        "--weights",
        s(&weights),
        "--input",
        s(&input),
        "--labels",
        "1",
        "--grads-out",
        s(&input),
    ]);
    assert!(failure(&loss).contains("--grads-out"));
    assert_eq!(std::fs::read(&input).unwrap(), input_bytes);

    let out = dir.join("out");
    for target in [weights.clone(), out.join("checkpoint.safetensors")] {
        let outcome = run(&finetune_args(
            &config,
            &weights,
            &dir.join("data"),
            &out,
            &["--epochs", "1", "--weights-out", s(&target)],
        ));
        assert!(failure(&outcome).contains("--weights-out"));
    }
    assert_eq!(std::fs::read(&weights).unwrap(), weight_bytes);

    // Both outputs distinct: both written, both reported.
    let selected = dir.join("selected.safetensors");
    let stdout = success(&logits(&fresh, Some(&selected)));
    assert!(stdout.contains("wrote logits") && stdout.contains("selections"));
    assert!(Checkpoint::load_safetensors(&fresh).is_ok() && selected.exists());
}

/// Case 6: requests inside the config limits that would exhaust memory are refused with the
/// estimate, under an address-space limit where an attempt would abort.
#[test]
fn requests_beyond_memory_are_refused_before_allocating() {
    let dir = common::scratch("memory");
    let huge = dir.join("huge.json");
    std::fs::write(
        &huge,
        r#"{"img_size": 224, "patch_size": 16, "embed_dim": 4096, "depth": 19, "num_heads": 16,
            "mlp_ratio": 4.0, "num_classes": 1000, "qkv_bias": true}"#,
    )
    .unwrap();
    for args in [
        vec!["bench", "--config", s(&huge), "--batch", "1"],
        vec!["bench", "--model", "deit_tiny", "--batch", "14000"],
        vec!["flops", "--config", s(&huge)],
    ] {
        let run = idlevit_limited(&args);
        if args[0] == "flops" {
            // Counting costs allocates nothing: it still runs.
            success(&run);
            continue;
        }
        let stderr = clean_failure(&run);
        assert!(stderr.contains("GiB"), "{args:?}: {stderr}");
    }
    let stderr = clean_failure(&idlevit_limited(&[
        "digits",
        "--out",
        s(&dir.join("digits")),
        "--train-copies",
        "100000000",
    ]));
    assert!(stderr.contains("--train-copies"), "{stderr}");
    assert!(!dir.join("digits").exists());

    // An explicit budget is obeyed, and a small model fits in it.
    let stderr = clean_failure(&idlevit(&[
        "bench",
        "--model",
        "deit_tiny",
        "--batch",
        "1",
        "--max-memory",
        "1M",
    ]));
    assert!(stderr.contains("--max-memory"), "{stderr}");
    let config = dir.join("config.json");
    std::fs::write(&config, CONFIG).unwrap();
    success(&idlevit_limited(&[
        "bench",
        "--config",
        s(&config),
        "--batch",
        "2",
        "--runs",
        "1",
        "--warmup",
        "0",
    ]));
}

/// Case 7: files that never end or are not files are refused before reading.
#[test]
fn endless_and_special_files_are_refused_before_reading() {
    let dir = common::scratch("special");
    let (_model_dir, config, weights) = setup("special-model");
    for (args, named) in [
        (vec!["flops", "--config", "/dev/zero"], "/dev/zero"),
        (
            vec![
                "logits",
                "--config",
                s(&config),
                "--weights",
                "/dev/zero",
                "--input",
                "/dev/zero",
                "--output",
                s(&dir.join("o.safetensors")),
            ],
            "/dev/zero",
        ),
        (
            vec![
                "logits",
                "--config",
                s(&config),
                "--weights",
                s(&weights),
                "--input",
                s(&dir),
                "--output",
                s(&dir.join("o.safetensors")),
            ],
            s(&dir),
        ),
        (
            vec![
                "classify",
                "--labels",
                "/dev/zero",
                s(&dir.join("missing.png")),
            ],
            "/dev/zero",
        ),
    ] {
        let stderr = clean_failure(&idlevit_limited(&args));
        assert!(stderr.contains(named), "{args:?}: {stderr}");
    }
}

/// Case 8: a damaged resume checkpoint is refused, naming the field; validation classes keep
/// the training set's labels.
#[test]
fn damaged_resume_fields_are_refused() {
    let (dir, config, weights) = setup("resume-fields");
    let out = dir.join("out");
    let args = |extra: &[&str]| -> Vec<String> {
        finetune_args(&config, &weights, &dir.join("data"), &out, extra)
    };
    success(&run(&args(&["--epochs", "1", "--batch", "12"])));
    let good = Checkpoint::load_safetensors(out.join("checkpoint.safetensors")).unwrap();
    for (field, value, named) in [
        ("train.epochs_done", f32::NAN, "train.epochs_done"),
        ("train.epochs_done", -5.0, "train.epochs_done"),
        ("train.epochs_done", 1.5, "train.epochs_done"),
        ("adamw.step", f32::NAN, "adamw.step"),
        ("adamw.step", -3.0, "adamw.step"),
    ] {
        let mut damaged = good.clone();
        damaged.insert(field, Tensor::scalar(value));
        let path = dir.join("damaged.safetensors");
        damaged.save_safetensors(&path).unwrap();
        let stderr = clean_failure(&run(&args(&[
            "--epochs",
            "2",
            "--batch",
            "12",
            "--resume",
            s(&path),
        ])));
        assert!(stderr.contains(named), "{field}={value}: {stderr}");
        assert!(stderr.contains(s(&path)), "{field}={value}: {stderr}");
    }
}

/// Case 9: every numeric argument out of range is refused when parsed, naming it.
#[test]
fn out_of_range_arguments_are_refused() {
    let (dir, config, weights) = setup("ranges");
    let data = dir.join("data");
    let out = dir.join("out");
    for (flag, value) in [
        ("--smoothing", "NaN"),
        ("--smoothing", "2"),
        ("--smoothing", "-1"),
        ("--cut-weight", "NaN"),
        ("--cut-weight", "inf"),
        ("--cut-weight", "-1"),
        ("--distill-weight", "NaN"),
        ("--distill-weight", "inf"),
        ("--distill-weight", "-0.5"),
        ("--clip-grad", "NaN"),
        ("--clip-grad", "0"),
        ("--clip-grad", "-1"),
        ("--weight-decay", "NaN"),
        ("--mixup", "-1"),
        ("--mixup-prob", "1.5"),
        ("--keep-rate", "0"),
        ("--keep-rate", "NaN"),
        ("--batch", "0"),
        ("--epochs", "0"),
    ] {
        let outcome = run(&finetune_args(
            &config,
            &weights,
            &data,
            &out,
            &[flag, value],
        ));
        let stderr = failure(&outcome);
        assert!(stderr.contains(flag), "{flag} {value}: {stderr}");
        assert!(!out.exists(), "{flag} {value} created the output folder");
    }
    let outcome = run(&finetune_args(
        &config,
        &weights,
        &data,
        &out,
        &["--lr", "1e-5", "--min-lr", "1e-4"],
    ));
    assert!(failure(&outcome).contains("--min-lr"));

    let image = dir.join("data/val/class0/0.png");
    let stderr = failure(&idlevit(&["classify", "--top", "0", s(&image)]));
    assert!(stderr.contains("--top"), "{stderr}");
    let stderr = failure(&idlevit(&[
        "bench",
        "--model",
        "deit_tiny",
        "--threads",
        "0",
    ]));
    assert!(stderr.contains("--threads"), "{stderr}");

    let input = input_file(&dir, 2);
    for targets in [[1.2f32, -0.2, 0.0], [f32::NAN, 0.5, 0.5], [0.2, 0.2, 0.2]] {
        let path = dir.join("targets.safetensors");
        let mut ckpt = Checkpoint::default();
        let rows = [targets, [0.0, 1.0, 0.0]].concat();
        ckpt.insert("targets", Tensor::from_vec(vec![2, 3], rows).unwrap());
        ckpt.save_safetensors(&path).unwrap();
        let stderr = clean_failure(&idlevit(&[
            "loss",
            "--config",
            s(&config),
            "--weights",
            s(&weights),
            "--input",
            s(&input),
            "--targets",
            s(&path),
        ]));
        assert!(stderr.contains("targets"), "{targets:?}: {stderr}");
        assert!(stderr.contains("row 0"), "{targets:?}: {stderr}");
    }
}

/// Case 11: errors name the argument's role and the file once, in the user's words.
#[test]
fn errors_name_the_file_and_its_role_once() {
    let (dir, config, weights) = setup("messages");
    let no_input = dir.join("no_input.safetensors");
    let mut ckpt = Checkpoint::default();
    ckpt.insert("other", Tensor::scalar(1.0));
    ckpt.save_safetensors(&no_input).unwrap();
    let stderr = clean_failure(&idlevit(&[
        "logits",
        "--config",
        s(&config),
        "--weights",
        s(&weights),
        "--input",
        s(&no_input),
        "--output",
        s(&dir.join("o.safetensors")),
    ]));
    assert!(stderr.contains("input"), "{stderr}");
    assert!(!stderr.contains("cannot read weights"), "{stderr}");
    assert!(!stderr.contains("missing from the checkpoint"), "{stderr}");
    assert_eq!(stderr.matches(s(&no_input)).count(), 1, "{stderr}");

    let garbage = dir.join("garbage.safetensors");
    std::fs::write(&garbage, b"not weights at all").unwrap();
    let stderr = clean_failure(&idlevit(&[
        "loss",
        "--config",
        s(&config),
        "--weights",
        s(&weights),
        "--input",
        s(&input_file(&dir, 1)),
        "--labels",
        "1",
        "--teacher",
        s(&garbage),
        "--distill-weight",
        "1",
    ]));
    assert!(stderr.contains("teacher weights"), "{stderr}");
    assert_eq!(stderr.matches(s(&garbage)).count(), 1, "{stderr}");

    let missing = dir.join("missing.png");
    let stderr = clean_failure(&idlevit(&["classify", s(&missing)]));
    assert_eq!(stderr.matches(s(&missing)).count(), 1, "{stderr}");
    assert_eq!(stderr.matches("No such file").count(), 1, "{stderr}");

    let pth = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/pth/plain_state_dict.pth");
    let stderr = clean_failure(&run(&finetune_args(
        &config,
        &weights,
        &dir.join("data"),
        &dir.join("out"),
        &["--resume", s(&pth)],
    )));
    assert!(stderr.contains("PyTorch"), "{stderr}");
    assert_eq!(stderr.matches(s(&pth)).count(), 1, "{stderr}");

    let stderr = clean_failure(&idlevit(&[
        "eval",
        "--config",
        s(&config),
        "--weights",
        s(&weights),
        "--data",
        s(&dir.join("data")),
    ]));
    assert!(stderr.contains("train/ and val/"), "{stderr}");
}
