//! The `idlevit` subcommands, as functions the binary and the tests call.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use idlevit_checkpoint::Checkpoint;
use idlevit_nn::{Backend, Eager};
use idlevit_tensor::Tensor;
use idlevit_zoo::{DeiT, DeiTConfig};

use crate::preprocess::{EvalTransform, load_image};
use crate::weights::{load_model, read_checkpoint};

/// Runs the dense model on tensor `input` of `input_path` and writes tensor `logits` to
/// `output_path`.
pub fn logits(
    config: &DeiTConfig,
    weights: &Path,
    input_path: &Path,
    output_path: &Path,
) -> Result<Tensor> {
    let model = load_model(config, Some(weights))?;
    let inputs = read_checkpoint(input_path, false)?;
    let input = inputs
        .require("input")
        .with_context(|| format!("{} has no tensor `input`", input_path.display()))?;
    let logits = model.forward(&Eager, &Eager.constant(input.clone()))?;
    let mut out = Checkpoint::default();
    out.insert("logits", logits.clone());
    out.save_safetensors(output_path)?;
    Ok(logits)
}

/// One image's top predictions.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    /// The image file.
    pub path: PathBuf,
    /// `(class index, probability)`, most probable first.
    pub top: Vec<(usize, f32)>,
}

/// Classifies image files: preprocess, run the model, softmax, keep the `top` best classes.
pub fn classify(model: &DeiT, images: &[PathBuf], top: usize) -> Result<Vec<Prediction>> {
    if images.is_empty() {
        bail!("no images given");
    }
    let transform = EvalTransform::for_size(model.config().img_size);
    let side = model.config().img_size;
    let mut batch = Vec::with_capacity(images.len() * 3 * side * side);
    for path in images {
        batch.extend(load_image(path, &transform)?.into_vec());
    }
    let batch = Tensor::from_vec(vec![images.len(), 3, side, side], batch)?;
    let logits = model.forward(&Eager, &batch)?;
    let probs = Eager.softmax(&logits)?;
    let classes = probs.shape()[1];
    Ok(images
        .iter()
        .zip(probs.to_vec().chunks(classes.max(1)))
        .map(|(path, row)| {
            let mut order: Vec<usize> = (0..row.len()).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            let top = order.into_iter().take(top).map(|i| (i, row[i])).collect();
            Prediction {
                path: path.clone(),
                top,
            }
        })
        .collect())
}

/// Reads class names, one per line.
pub fn read_labels(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read labels {}", path.display()))?;
    Ok(text.lines().map(|l| l.trim().to_string()).collect())
}

/// Timing of a throughput run.
#[derive(Clone, Debug)]
pub struct BenchReport {
    /// Images per forward pass.
    pub batch: usize,
    /// Seconds per timed forward pass, in run order.
    pub seconds: Vec<f64>,
}

impl BenchReport {
    /// Median images per second over the timed runs.
    pub fn median_images_per_second(&self) -> f64 {
        let mut s = self.seconds.clone();
        s.sort_by(f64::total_cmp);
        let mid = s.len() / 2;
        let median = if s.len() % 2 == 1 {
            s[mid]
        } else {
            0.5 * (s[mid - 1] + s[mid])
        };
        self.batch as f64 / median
    }
}

/// Times dense forward passes of `model` on random images after `warmup` untimed passes.
pub fn bench(model: &DeiT, batch: usize, warmup: usize, runs: usize) -> Result<BenchReport> {
    if batch == 0 || runs == 0 {
        bail!("--batch and --runs must be at least 1");
    }
    let side = model.config().img_size;
    let n = batch * 3 * side * side;
    let images = Tensor::from_vec(
        vec![batch, 3, side, side],
        (0..n)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
            .collect(),
    )?;
    for _ in 0..warmup {
        model.forward(&Eager, &images)?;
    }
    let seconds = (0..runs)
        .map(|_| {
            let start = Instant::now();
            model.forward(&Eager, &images)?;
            Ok(start.elapsed().as_secs_f64())
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(BenchReport { batch, seconds })
}
