//! `idlevit finetune` / `eval` on a generated image folder, and their bad-input errors.

use std::path::Path;

use idlevit_checkpoint::Checkpoint;

mod common;
use common::{CONFIG, finetune_args, idlevit, s, setup};
use idlevit_zoo::{DeiT, DeiTConfig};

#[test]
fn finetune_checkpoints_resumes_and_validates_then_eval_reads_it() {
    let (dir, config, weights) = setup("run");
    let out = dir.join("out");
    let data = dir.join("data");
    let common = [
        "--config",
        s(&config),
        "--weights",
        s(&weights),
        "--data",
        s(&data),
        "--batch",
        "4",
        "--lr",
        "1e-3",
        "--min-lr",
        "1e-4",
        "--distill-weight",
        "1",
        "--out",
        s(&out),
    ];
    let run = idlevit(&[&["finetune", "--epochs", "1"][..], &common].concat());
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        stdout.contains("epoch 1 mean loss") && stdout.contains("validation top-1"),
        "{stdout}"
    );
    // Each epoch's line also says how much of its wall time went to waiting for data.
    let epoch_line = stdout.lines().find(|l| l.starts_with("epoch 1 ")).unwrap();
    let wait = epoch_line
        .split("data wait ")
        .nth(1)
        .and_then(|rest| rest.split('%').next())
        .and_then(|share| share.parse::<f64>().ok());
    assert!(
        wait.is_some_and(|w| (0.0..=100.0).contains(&w)),
        "{epoch_line}"
    );
    let ckpt = out.join("checkpoint.safetensors");
    let saved = Checkpoint::load_safetensors(&ckpt).unwrap();
    assert_eq!(saved.get("train.epochs_done").unwrap().to_vec(), vec![1.0]);

    let resumed = idlevit(
        &[
            &["finetune", "--epochs", "2", "--resume", s(&ckpt)][..],
            &common,
        ]
        .concat(),
    );
    let stdout = String::from_utf8_lossy(&resumed.stdout);
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert!(
        stdout.contains("epoch 2 mean loss") && !stdout.contains("epoch 1 mean"),
        "{stdout}"
    );

    // The finetuned weights (optimiser state stripped) evaluate dense and idle.
    let mut weights_only = Checkpoint::load_safetensors(&ckpt).unwrap();
    let names: Vec<String> = weights_only
        .iter()
        .map(|(n, _)| n.to_string())
        .filter(|n| n.starts_with("adamw.") || n.starts_with("train."))
        .collect();
    names.iter().for_each(|n| drop(weights_only.remove(n)));
    let finetuned = dir.join("finetuned.safetensors");
    weights_only.save_safetensors(&finetuned).unwrap();
    for mode in ["dense", "idle"] {
        let eval = idlevit(&[
            "eval",
            "--config",
            s(&config),
            "--weights",
            s(&finetuned),
            "--data",
            s(&dir.join("data/val")),
            "--mode",
            mode,
        ]);
        let stdout = String::from_utf8_lossy(&eval.stdout);
        assert!(
            eval.status.success() && stdout.contains("top-1") && stdout.contains("(6 images)"),
            "{mode}: {stdout} {}",
            String::from_utf8_lossy(&eval.stderr)
        );
    }
}

#[test]
fn bad_data_and_configs_are_refused() {
    let (dir, config, weights) = setup("bad");
    let fails = |args: &[&str], needle: &str| {
        let run = idlevit(args);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(
            !run.status.success() && stderr.contains(needle) && !stderr.contains("panicked"),
            "{args:?}: {stderr}"
        );
    };
    let base = |data: &Path| -> Vec<String> {
        [
            "finetune",
            "--config",
            s(&config),
            "--weights",
            s(&weights),
            "--data",
            s(data),
            "--epochs",
            "1",
            "--batch",
            "4",
            "--out",
            s(&dir.join("o")),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect()
    };
    fn as_str(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    fails(
        &as_str(&base(&dir.join("missing"))),
        "cannot read data directory",
    );
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    fails(&as_str(&base(&dir.join("empty"))), "no class sub-folders");
    std::fs::create_dir_all(dir.join("hollow/cats")).unwrap();
    std::fs::write(dir.join("hollow/cats/readme.txt"), "no images here").unwrap();
    fails(&as_str(&base(&dir.join("hollow"))), "holds no images");
    // A teacher of another width.
    let other =
        DeiTConfig::from_json(&CONFIG.replace("\"embed_dim\": 16", "\"embed_dim\": 8")).unwrap();
    let teacher = dir.join("teacher.safetensors");
    DeiT::random(&other, 1)
        .unwrap()
        .to_checkpoint()
        .unwrap()
        .save_safetensors(&teacher)
        .unwrap();
    let mut args = base(&dir.join("data"));
    args.extend(["--teacher".to_string(), s(&teacher).to_string()]);
    fails(&as_str(&args), "expected [16");
}

#[test]
fn a_non_finite_loss_stops_and_keeps_the_last_good_checkpoint() {
    let (dir, config, weights) = setup("nan");
    let out = dir.join("out");
    let common = |w: &Path| -> Vec<String> {
        [
            "finetune",
            "--config",
            s(&config),
            "--weights",
            s(w),
            "--data",
            s(&dir.join("data")),
            "--batch",
            "4",
            "--out",
            s(&out),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect()
    };
    let mut first = common(&weights);
    first.extend(["--epochs".into(), "1".into()]);
    assert!(
        idlevit(&first.iter().map(String::as_str).collect::<Vec<_>>())
            .status
            .success()
    );
    let good = std::fs::read(out.join("checkpoint.safetensors")).unwrap();

    let mut poisoned = Checkpoint::load_safetensors(&weights).unwrap();
    let head = poisoned.get("head.bias").unwrap().map(|_| f32::NAN);
    poisoned.insert("head.bias", head);
    let bad_weights = dir.join("poisoned.safetensors");
    poisoned.save_safetensors(&bad_weights).unwrap();
    let mut second = common(&bad_weights);
    second.extend([
        "--epochs".into(),
        "2".into(),
        "--teacher".into(),
        s(&weights).into(),
    ]);
    let run = idlevit(&second.iter().map(String::as_str).collect::<Vec<_>>());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        !run.status.success() && stderr.contains("not finite"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(out.join("checkpoint.safetensors")).unwrap(),
        good,
        "the good checkpoint was replaced"
    );
}

/// The full regularisation recipe (augmentation, mixup/CutMix, drop path) is seeded: the same
/// seed gives the same weights, and switching the recipe off changes them. Out-of-range
/// settings are refused before training.
#[test]
fn the_training_recipe_is_seeded_and_checked() {
    let (dir, config, weights) = setup("recipe");
    let data = dir.join("data");
    let train = |out: &str, extra: &[&str]| {
        let out = dir.join(out);
        let mut args = vec![
            "--batch", "4", "--epochs", "1", "--lr", "1e-3", "--seed", "7",
        ];
        args.extend_from_slice(extra);
        let args = finetune_args(&config, &weights, &data, &out, &args);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = idlevit(&args);
        (run, out.join("checkpoint.safetensors"))
    };
    let tensors = |path: &Path| {
        let ckpt = Checkpoint::load_safetensors(path).unwrap();
        ckpt.iter()
            .map(|(name, t)| (name.to_string(), t.to_vec()))
            .collect::<Vec<_>>()
    };
    let (first, first_ckpt) = train("a", &[]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let (second, second_ckpt) = train("b", &[]);
    assert!(second.status.success());
    assert_eq!(tensors(&first_ckpt), tensors(&second_ckpt));
    let plain = [
        "--no-augment",
        "--mixup",
        "0",
        "--cutmix",
        "0",
        "--drop-path",
        "0",
    ];
    let (third, plain_ckpt) = train("c", &plain);
    assert!(third.status.success());
    assert_ne!(tensors(&first_ckpt), tensors(&plain_ckpt));
    for bad in [
        ["--mixup-prob", "1.5"],
        ["--drop-path", "1"],
        ["--mixup", "-1"],
    ] {
        let (run, _) = train("bad", &bad);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(
            !run.status.success() && stderr.starts_with("error: "),
            "{bad:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
