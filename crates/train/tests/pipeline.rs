//! The training data pipeline: batches repeat exactly whatever the thread count, a corrupt
//! image stops finetuning with an error naming it, and each epoch reports its data wait.

use std::path::{Path, PathBuf};

use idlevit_cutloss::CutLoss;
use idlevit_data::ImageFolder;
use idlevit_data::augment::TrainTransform;
use idlevit_data::digits::{DigitsOptions, embedded_split};
use idlevit_data::preprocess::EvalTransform;
use idlevit_train::finetune::{FinetuneOptions, finetune};
use idlevit_train::pipeline::BatchRecipe;
use idlevit_train::{Mixup, Objective};
use idlevit_zoo::{DeiTConfig, ZooConfig, ZooModel};

const SIDE: u32 = 16;

/// A fresh folder of `count` digit canvases, `root/<digit>/<i>.png`, removed on drop.
struct Canvases(PathBuf);

impl Canvases {
    fn new(name: &str, count: usize) -> Self {
        let root =
            std::env::temp_dir().join(format!("idlevit-pipeline-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let options = DigitsOptions {
            side: SIDE,
            train_copies: 1,
            digit_size: (8, 12),
            clutter: (1, 2),
            ..DigitsOptions::default()
        };
        let split = embedded_split(&options).unwrap();
        for (i, canvas) in split.train.iter().take(count).enumerate() {
            let dir = root.join(canvas.label.to_string());
            std::fs::create_dir_all(&dir).unwrap();
            canvas.image.save(dir.join(format!("{i:03}.png"))).unwrap();
        }
        Self(root)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Canvases {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
}

#[test]
fn batches_are_the_same_on_any_number_of_threads() {
    let canvases = Canvases::new("threads", 40);
    let data = ImageFolder::open(canvases.path()).unwrap();
    let recipe = BatchRecipe {
        data: &data,
        classes: 10,
        smoothing: 0.1,
        augment: Some(TrainTransform::for_size(SIDE as usize)),
        eval: EvalTransform::for_size(SIDE as usize),
        mixup: Mixup::default(),
    };
    let indices = [3, 17, 0, 25, 9, 38, 12];
    let prepare = |threads: usize, seed: u64| {
        let (images, targets) =
            pool(threads).install(|| recipe.prepare(0, &indices, seed, seed ^ 1).unwrap());
        (images.to_vec(), targets.to_vec())
    };
    let one = prepare(1, 7);
    assert_eq!(one.0.len(), indices.len() * 3 * (SIDE * SIDE) as usize);
    assert_eq!(one, prepare(3, 7), "1 thread against 3");
    assert_eq!(one, prepare(2, 7), "1 thread against 2");
    assert_ne!(one.0, prepare(2, 8).0, "another seed draws other crops");
}

fn tiny_student() -> ZooModel {
    let config = ZooConfig::from(DeiTConfig {
        img_size: SIDE as usize,
        patch_size: 8,
        embed_dim: 16,
        depth: 2,
        num_heads: 2,
        mlp_ratio: 2.0,
        num_classes: 10,
        qkv_bias: true,
        idle_layers: None,
        keep_ratios: None,
    });
    ZooModel::random(&config, 3).unwrap()
}

fn options(out_dir: PathBuf, epochs: usize) -> FinetuneOptions {
    FinetuneOptions {
        epochs,
        batch: 6,
        lr: 1e-3,
        min_lr: 1e-5,
        warmup_epochs: 0,
        weight_decay: 0.05,
        clip_grad: None,
        drop_path: 0.1,
        mixup: Mixup::default(),
        augment: true,
        objective: Objective {
            cut_loss: CutLoss::Both,
            cut_weight: 0.0,
            distill_weight: 0.0,
            smoothing: 0.1,
            ..Objective::default()
        },
        batch_norm: idlevit_nn::BatchNormMode::Frozen,
        seed: 5,
        out_dir,
        resume: None,
        progress: false,
    }
}

#[test]
fn finetuning_repeats_exactly_and_reports_each_epochs_data_wait() {
    let canvases = Canvases::new("repeat", 30);
    let data = ImageFolder::open(canvases.path()).unwrap();
    let run = |threads: usize| {
        let mut student = tiny_student();
        let out = canvases.path().with_extension(format!("out{threads}"));
        let report = pool(threads).install(|| {
            finetune(&mut student, None, &data, None, &options(out.clone(), 2)).unwrap()
        });
        let _ = std::fs::remove_dir_all(&out);
        report
    };
    let one = run(1);
    assert_eq!(one.epoch_losses.len(), 2);
    assert!(one.epoch_losses.iter().all(|l| l.is_finite()));
    assert_eq!(one.epoch_data_wait.len(), 2);
    assert!(
        one.epoch_data_wait.iter().all(|w| (0.0..=1.0).contains(w)),
        "{:?}",
        one.epoch_data_wait
    );
    assert_eq!(one.epoch_losses, run(1).epoch_losses, "the same run again");
    assert_eq!(one.epoch_losses, run(3).epoch_losses, "1 thread against 3");
}

#[test]
fn a_corrupt_image_stops_finetuning_with_an_error_naming_it() {
    let canvases = Canvases::new("corrupt", 30);
    let bad = canvases.path().join("4").join("zz-broken.png");
    std::fs::create_dir_all(bad.parent().unwrap()).unwrap();
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\n this is not the rest of a PNG").unwrap();
    let data = ImageFolder::open(canvases.path()).unwrap();
    let out = canvases.path().with_extension("out");
    let mut student = tiny_student();
    // Several epochs: the error must end the run in the first, not hang or go on.
    let err = finetune(&mut student, None, &data, None, &options(out.clone(), 5)).unwrap_err();
    let _ = std::fs::remove_dir_all(&out);
    let message = err.to_string();
    assert!(message.contains("zz-broken.png"), "{message}");
}
