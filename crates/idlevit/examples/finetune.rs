//! Finetune a small idle DeiT on the digits task (handwritten digits on cluttered canvases,
//! generated from data embedded in the library), then classify with it:
//!
//! ```sh
//! cargo run --release -p idlevit --example finetune
//! ```

use idlevit::data::digits::{DigitsOptions, embedded_split};
use idlevit::train::{
    AdamW, CosineSchedule, Objective, StepSettings, smoothed_targets, train_step,
};
use idlevit::zoo::{DeiTConfig, ZooModel};
use idlevit::{EvalTransform, ImageInput, Model, PolicyKind, Schedule, Tensor, TokenPolicy};

fn main() -> Result<(), idlevit::Error> {
    let (losses, accuracy) = finetune_digits(10)?;
    println!(
        "loss {:.3} -> {:.3}; validation top-1 {:.1}%",
        losses[0],
        losses[losses.len() - 1],
        100.0 * accuracy
    );
    Ok(())
}

/// Trains for `epochs` on 32x32 canvases; returns every step's loss and the validation top-1.
pub fn finetune_digits(epochs: usize) -> Result<(Vec<f32>, f64), idlevit::Error> {
    let options = DigitsOptions {
        side: 32,
        digit_size: (20, 28),
        train_copies: 1,
        ..DigitsOptions::default()
    };
    let split = embedded_split(&options)?;
    let config = DeiTConfig {
        img_size: 32,
        patch_size: 8,
        embed_dim: 48,
        depth: 4,
        num_heads: 3,
        mlp_ratio: 2.0,
        num_classes: 10,
        qkv_bias: true,
        idle_layers: None,
        keep_ratios: None,
    };
    // Layers 2 and 3 compute only the 8 of 16 image tokens the class token attends to most.
    let idle = TokenPolicy::select(PolicyKind::Idle, Schedule::new(vec![2, 3], vec![0.5, 0.5])?);
    let mut model = ZooModel::random(&config.into(), 0)?.with_policy(idle)?;

    let transform = EvalTransform::for_size(32);
    let objective = Objective {
        cut_weight: 1.0,
        distill_weight: 0.0,
        ..Objective::default()
    };
    let mut optimizer = AdamW::new(0.05);
    let batch = 64;
    let steps = epochs * split.train.len() / batch;
    let schedule = CosineSchedule {
        base_lr: 2e-3,
        min_lr: 1e-4,
        warmup_lr: 1e-4,
        warmup_steps: 5,
        total_steps: steps,
    };
    let mut losses = Vec::with_capacity(steps);
    for (step, canvases) in split
        .train
        .chunks_exact(batch)
        .cycle()
        .take(steps)
        .enumerate()
    {
        let mut pixels = Vec::new();
        for canvas in canvases {
            pixels.extend(canvas.image.to_tensor(&transform)?.into_vec());
        }
        let images = Tensor::from_vec(vec![batch, 3, 32, 32], pixels)?;
        let labels: Vec<usize> = canvases.iter().map(|c| c.label).collect();
        let targets = smoothed_targets(&labels, 10, objective.smoothing)?;
        let settings = StepSettings {
            lr: schedule.lr(step),
            clip_grad: Some(1.0),
            seed: None,
        };
        losses.push(train_step(
            &mut model,
            None,
            &mut optimizer,
            &objective,
            &images,
            &targets,
            &settings,
        )?);
    }

    // The trained model behind the front door: preprocessing, softmax and top-k in one call.
    let model = Model::from(model).with_transform(transform)?;
    let images: Vec<_> = split.val.iter().map(|c| &c.image).collect();
    let top = model.classify_batch(&images, 1)?;
    let correct = top
        .iter()
        .zip(&split.val)
        .filter(|(top, c)| top[0].index == c.label)
        .count();
    Ok((losses, correct as f64 / split.val.len() as f64))
}
