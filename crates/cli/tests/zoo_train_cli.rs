//! `classify`, `loss` and `finetune` on tiny LV-ViT and PVT-v2 models given by `--config`
//! files: what they print is what the library computes, a finetuned checkpoint loads back
//! with `logits`, and the combinations that cannot work are refused with a clear error.

use std::path::{Path, PathBuf};

use idlevit_checkpoint::Checkpoint;
use idlevit_nn::Eager;
use idlevit_tensor::Tensor;
use idlevit_train::{Objective, Teacher, smoothed_targets};
use idlevit_zoo::{ZooConfig, ZooModel};

mod common;
use common::{LVVIT, PVT, failure, idlevit, printed, s, scratch, success, write_folder};

/// A family's files in `dir`: its config, a random student and a random teacher.
struct Family {
    name: &'static str,
    config: PathBuf,
    student: ZooModel,
    weights: PathBuf,
    teacher: ZooModel,
    teacher_weights: PathBuf,
}

fn family(dir: &Path, name: &'static str, text: &str) -> Family {
    let config = dir.join(format!("{name}.json"));
    std::fs::write(&config, text).unwrap();
    let zoo = ZooConfig::from_json(text).unwrap();
    let save = |seed: u64, file: &str| {
        let model = ZooModel::random(&zoo, seed).unwrap();
        let path = dir.join(format!("{name}-{file}.safetensors"));
        model
            .to_checkpoint()
            .unwrap()
            .save_safetensors(&path)
            .unwrap();
        (model, path)
    };
    let (student, weights) = save(7, "student");
    let (teacher, teacher_weights) = save(8, "teacher");
    Family {
        name,
        config,
        student,
        weights,
        teacher,
        teacher_weights,
    }
}

fn families(dir: &Path) -> [Family; 2] {
    [family(dir, "lvvit", LVVIT), family(dir, "pvt", PVT)]
}

/// Two deterministic images in [-1, 1) as tensor `input` of a safetensors file.
fn write_input(dir: &Path, family: &Family) -> (PathBuf, Tensor) {
    let side = family.student.img_size();
    let values = (0..2 * 3 * side * side).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0);
    let images = Tensor::from_vec(vec![2, 3, side, side], values.collect()).unwrap();
    let mut input = Checkpoint::default();
    input.insert("input", images.clone());
    let path = dir.join(format!("{}-input.safetensors", family.name));
    input.save_safetensors(&path).unwrap();
    (path, images)
}

#[test]
fn classify_prints_the_library_predictions_for_every_family() {
    let dir = scratch("zoo-classify");
    write_folder(&dir.join("images"), 1);
    let image = dir.join("images/class1/0.png");
    for family in families(&dir) {
        let transform =
            idlevit_data::preprocess::EvalTransform::for_size(family.student.img_size());
        let expected = idlevit_train::evaluate::classify(
            &family.student,
            std::slice::from_ref(&image),
            2,
            &transform,
        )
        .unwrap();
        let classify = |extra: &[&str]| {
            let model = ["classify", "--config", s(&family.config)];
            let rest = ["--weights", s(&family.weights), s(&image)];
            idlevit(&[&model[..], extra, &rest].concat())
        };
        let stdout = success(&classify(&["--top", "2"]));
        for (class, prob) in &expected.predictions[0].top {
            let line = format!("  {class:>5}  {prob:.4}");
            assert!(
                stdout.contains(&line),
                "{}: {line} in {stdout}",
                family.name
            );
        }
        // bf16 (or f32 where it cannot win on this CPU) ranks the same classes.
        let stdout = success(&classify(&["--bf16", "--top", "2"]));
        for (class, _) in &expected.predictions[0].top {
            let line = format!("  {class:>5}  ");
            assert!(
                stdout.contains(&line),
                "{}: {line} in {stdout}",
                family.name
            );
        }
    }
}

/// `loss` of `family`'s student on `input` with labels 0 and 2, idle at r = 0.7.
fn loss_args<'a>(family: &'a Family, input: &'a Path) -> Vec<&'a str> {
    let files = [&family.config, &family.weights, input].map(s);
    vec![
        "loss",
        "--config",
        files[0],
        "--weights",
        files[1],
        "--input",
        files[2],
        "--labels",
        "0,2",
        "--keep-rate",
        "0.7",
    ]
}

#[test]
fn loss_prints_the_objective_and_writes_every_gradient() {
    let dir = scratch("zoo-loss");
    for family in families(&dir) {
        let (input, images) = write_input(&dir, &family);
        let grads = dir.join(format!("{}-grads.safetensors", family.name));
        let base = loss_args(&family, &input);
        let distill = [
            "--teacher",
            s(&family.teacher_weights),
            "--distill-weight",
            "2",
        ];
        let args = [&base[..], &distill, &["--grads-out", s(&grads)]].concat();
        let stdout = success(&idlevit(&args));

        // The library's objective, with the cut weight each family defaults to.
        let zoo = ZooConfig::from_json(&std::fs::read_to_string(&family.config).unwrap()).unwrap();
        let policy =
            idlevit_cli::policy::compared_policy(&zoo, idlevit_zoo::PolicyKind::Idle, Some(0.7))
                .unwrap();
        let student = family.student.clone().with_policy(policy).unwrap();
        let objective = Objective {
            cut_weight: if family.name == "pvt" { 0.0 } else { 20.0 },
            distill_weight: 2.0,
            ..Objective::default()
        };
        let teacher = Teacher::run(&family.teacher, &images).unwrap();
        let targets = smoothed_targets(&[0, 2], 3, 0.1).unwrap();
        let parts = objective
            .compute(&Eager, &student, &images, &targets, Some(&teacher))
            .unwrap();
        for (name, value) in [
            ("ce", &parts.ce),
            ("cut", &parts.cut),
            ("total", &parts.total),
        ] {
            let expected = value.to_vec()[0];
            let shown = printed(&stdout, name);
            assert!(
                (shown - expected).abs() <= 1e-5 * expected.abs().max(1.0),
                "{} {name}: printed {shown}, library {expected}",
                family.name
            );
        }
        assert_eq!(printed(&stdout, "cut") > 0.0, family.name == "lvvit");
        let written = Checkpoint::load_safetensors(&grads).unwrap();
        let mut names = 0;
        family.student.visit_params(&mut |p| {
            names += 1;
            assert!(
                written.get(p.name()).is_some(),
                "no gradient of {}",
                p.name()
            );
        });
        assert_eq!(written.len(), names);
    }
    // PVT-v2 has no cut loss: asking for one on an idle PVT is an error, dense it is moot.
    let pvt = family(&dir, "pvt", PVT);
    let (input, _) = write_input(&dir, &pvt);
    let args = [&loss_args(&pvt, &input)[..], &["--cut-weight", "20"]].concat();
    let err = failure(&idlevit(&args));
    assert!(
        err.contains("PVT-v2 has no CLS attention map")
            && err.contains("expected a cut weight of 0"),
        "{err}"
    );
    success(&idlevit(&[&args[..], &["--cut-loss", "none"]].concat()));
}

#[test]
fn finetune_trains_resumes_and_its_weights_load_with_logits() {
    let dir = scratch("zoo-finetune");
    let data = dir.join("data");
    write_folder(&data.join("train"), 2);
    for family in families(&dir) {
        let out = dir.join(format!("{}-out", family.name));
        let final_weights = dir.join(format!("{}-final.safetensors", family.name));
        let common = [
            "--config",
            s(&family.config),
            "--weights",
            s(&family.weights),
            "--teacher",
            s(&family.teacher_weights),
            "--data",
            s(&data),
            "--batch",
            "6",
            "--lr",
            "1e-3",
            "--keep-rate",
            "0.7",
            "--distill-weight",
            "1",
            "--out",
            s(&out),
            "--weights-out",
            s(&final_weights),
        ];
        let stdout = success(&idlevit(
            &[&["finetune", "--epochs", "1"][..], &common].concat(),
        ));
        assert!(stdout.contains("epoch 1 mean loss"), "{stdout}");
        let ckpt = out.join("checkpoint.safetensors");
        let resumed = success(&idlevit(
            &[
                &["finetune", "--epochs", "2", "--resume", s(&ckpt)][..],
                &common,
            ]
            .concat(),
        ));
        assert!(
            resumed.contains("epoch 2 mean loss") && !resumed.contains("epoch 1 mean"),
            "{resumed}"
        );

        // The weights moved, and `logits` runs them as the library does.
        let zoo = family.student.config();
        let trained =
            ZooModel::load(&zoo, Checkpoint::load_safetensors(&final_weights).unwrap()).unwrap();
        let mut moved = 0;
        let before = family.student.to_checkpoint().unwrap();
        trained.visit_params(&mut |p| {
            moved += usize::from(before.get(p.name()).unwrap().to_vec() != p.value().to_vec());
        });
        assert!(moved > 0, "{}: finetuning changed no weight", family.name);
        let (input, images) = write_input(&dir, &family);
        let output = dir.join(format!("{}-logits.safetensors", family.name));
        success(&idlevit(&[
            "logits",
            "--config",
            s(&family.config),
            "--weights",
            s(&final_weights),
            "--input",
            s(&input),
            "--output",
            s(&output),
        ]));
        let written = Checkpoint::load_safetensors(&output).unwrap();
        assert_eq!(
            written.get("logits").unwrap().to_vec(),
            trained.forward(&Eager, &images).unwrap().to_vec(),
            "{}",
            family.name
        );
    }
}

#[test]
fn finetune_refuses_what_cannot_train() {
    let dir = scratch("zoo-finetune-errors");
    let data = dir.join("data");
    write_folder(&data, 1);
    let [lvvit, pvt] = families(&dir);
    let out = dir.join("out");
    let run = |family: &Family, teacher: &Path, extra: &[&str]| {
        let args = [
            "finetune",
            "--config",
            s(&family.config),
            "--weights",
            s(&family.weights),
            "--teacher",
            s(teacher),
            "--data",
            s(&data),
            "--epochs",
            "1",
            "--out",
            s(&out),
        ];
        failure(&idlevit(&[&args[..], extra].concat()))
    };
    let err = run(
        &pvt,
        &pvt.teacher_weights,
        &["--keep-rate", "0.7", "--cut-weight", "5"],
    );
    assert!(err.contains("PVT-v2 has no CLS attention map"), "{err}");
    // A teacher of another family does not fit the student's config.
    let err = run(&lvvit, &pvt.teacher_weights, &[]);
    assert!(err.contains("do not fit the model"), "{err}");
    // LV-ViT's idle schedules are the release's, for its depths.
    let shallow = dir.join("shallow.json");
    std::fs::write(&shallow, LVVIT.replace("\"depth\": 16", "\"depth\": 3")).unwrap();
    let err = failure(&idlevit(&[
        "finetune",
        "--config",
        s(&shallow),
        "--data",
        s(&data),
        "--keep-rate",
        "0.7",
        "--out",
        s(&out),
    ]));
    assert!(err.contains("depth 16 (S) and 20 (M), not 3"), "{err}");
}

/// `--batchnorm train` moves LV-ViT's running statistics and saves them in the checkpoint;
/// the default (`frozen`) leaves them as loaded. The release objective trains alike.
#[test]
fn finetune_with_batch_statistics_moves_the_running_statistics() {
    let dir = scratch("zoo-finetune-batchnorm");
    let data = dir.join("data");
    write_folder(&data.join("train"), 2);
    let family = family(&dir, "lvvit", LVVIT);
    let before = family.student.to_checkpoint().unwrap();
    for (mode, moves) in [("frozen", false), ("train", true)] {
        let out = dir.join(format!("out-{mode}"));
        let weights_out = dir.join(format!("final-{mode}.safetensors"));
        success(&idlevit(&[
            "finetune",
            "--config",
            s(&family.config),
            "--weights",
            s(&family.weights),
            "--teacher",
            s(&family.teacher_weights),
            "--data",
            s(&data),
            "--epochs",
            "1",
            "--batch",
            "3",
            "--keep-rate",
            "0.7",
            "--distill-weight",
            "1",
            "--objective",
            "release",
            "--batchnorm",
            mode,
            "--out",
            s(&out),
            "--weights-out",
            s(&weights_out),
        ]));
        for file in [out.join("checkpoint.safetensors"), weights_out] {
            let saved = Checkpoint::load_safetensors(&file).unwrap();
            for stat in ["running_mean", "running_var"] {
                let name = format!("patch_embed.bn2.{stat}");
                let moved =
                    saved.get(&name).unwrap().to_vec() != before.get(&name).unwrap().to_vec();
                assert_eq!(moved, moves, "{mode}: {name} in {}", file.display());
            }
        }
    }
}
