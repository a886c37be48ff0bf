//! Top-1 / top-5 accuracy of a model on an image folder.

use anyhow::{Result, bail};
use idlevit_nn::Eager;
use idlevit_zoo::DeiT;
use indicatif::{ProgressBar, ProgressStyle};

use crate::data::ImageFolder;
use crate::preprocess::EvalTransform;

/// Accuracy over a data set.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Accuracy {
    /// Images evaluated.
    pub images: usize,
    /// Fraction whose label is the top prediction.
    pub top1: f64,
    /// Fraction whose label is among the five top predictions.
    pub top5: f64,
}

/// Whether `label` ranks within the best `k` of `row` (ties counted against the label).
fn in_top(row: &[f32], label: usize, k: usize) -> bool {
    let target = row[label];
    let better = row
        .iter()
        .enumerate()
        .filter(|&(i, &v)| v > target || (v == target && i < label))
        .count();
    better < k
}

/// Evaluates `model` (under its own policy) on every image of `data`, `batch` at a time.
pub fn evaluate(
    model: &DeiT,
    data: &ImageFolder,
    batch: usize,
    progress: bool,
) -> Result<Accuracy> {
    if batch == 0 {
        bail!("--batch must be at least 1");
    }
    let classes = model.config().num_classes;
    if data.classes().len() > classes {
        bail!(
            "the data set has {} classes but the model only {classes}",
            data.classes().len()
        );
    }
    let transform = EvalTransform::for_size(model.config().img_size);
    let bar = if progress {
        ProgressBar::new(data.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "eval {bar:30} {pos}/{len} images  {per_sec}  ETA {eta}  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let (mut top1, mut top5) = (0usize, 0usize);
    let indices: Vec<usize> = (0..data.len()).collect();
    for chunk in indices.chunks(batch) {
        let (images, labels) = data.batch(chunk, &transform)?;
        let logits = model.forward(&Eager, &images)?.to_vec();
        for (row, &label) in logits.chunks(classes).zip(&labels) {
            top1 += usize::from(in_top(row, label, 1));
            top5 += usize::from(in_top(row, label, 5));
        }
        bar.inc(chunk.len() as u64);
        bar.set_message(format!(
            "top-1 {:.2}%",
            100.0 * top1 as f64 / bar.position() as f64
        ));
    }
    bar.finish_and_clear();
    let n = data.len() as f64;
    Ok(Accuracy {
        images: data.len(),
        top1: top1 as f64 / n,
        top5: top5 as f64 / n,
    })
}
