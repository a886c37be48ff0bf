//! Top-1 / top-5 accuracy of a model on an image folder, and the top classes of image files.

use std::path::PathBuf;

use idlevit_data::ImageSet;
use idlevit_data::preprocess::{EvalTransform, batch_values, load_image};
use idlevit_nn::{Backend, Eager};
use idlevit_tensor::Tensor;
use idlevit_zoo::ZooModel;
use indicatif::{ProgressBar, ProgressStyle};

use crate::Result;
use crate::distributed::{ProcessGroup, SingleProcess, shard};
use crate::error::bail;

/// Accuracy over a data set.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Accuracy {
    /// Images evaluated.
    pub images: usize,
    /// Fraction whose label is the top prediction.
    pub top1: f64,
    /// Fraction whose label is among the five top predictions.
    pub top5: f64,
    /// Images whose logits held NaN or infinity, each counted as a wrong answer.
    pub non_finite: usize,
}

impl Accuracy {
    /// A warning for the images whose logits were not finite, when there were any.
    pub fn warning(&self) -> Option<String> {
        (self.non_finite > 0).then(|| {
            format!(
                "warning: {} of {} images gave NaN or infinite logits; they count as wrong answers",
                self.non_finite, self.images
            )
        })
    }
}

/// Whether `label` ranks within the best `k` of `row` (ties counted against the label). A
/// row holding NaN or infinity ranks nothing: every comparison with NaN is false, which would
/// otherwise make a NaN label beat every class.
pub fn in_top(row: &[f32], label: usize, k: usize) -> bool {
    if !row.iter().all(|v| v.is_finite()) {
        return false;
    }
    let Some(&target) = row.get(label) else {
        return false;
    };
    let better = row
        .iter()
        .enumerate()
        .filter(|&(i, &v)| v > target || (v == target && i < label))
        .count();
    better < k
}

/// Refuses a data set with more classes than the model's `classes`.
pub(crate) fn check_classes(data: &dyn ImageSet, classes: usize) -> Result<()> {
    if data.classes().len() > classes {
        bail!(
            "the data set has {} classes but the model only {classes}",
            data.classes().len()
        );
    }
    Ok(())
}

/// A progress bar of `len` steps drawn with `template`, hidden unless `show`.
pub(crate) fn progress_bar(show: bool, len: usize, template: &str) -> ProgressBar {
    let bar = if show {
        ProgressBar::new(len as u64)
    } else {
        ProgressBar::hidden()
    };
    let style = ProgressStyle::with_template(template);
    bar.with_style(style.unwrap_or_else(|_| ProgressStyle::default_bar()))
}

/// Evaluates `model` (under its own policy) on every image of `data`, `batch` at a time.
pub fn evaluate(
    model: &ZooModel,
    data: &dyn ImageSet,
    batch: usize,
    progress: bool,
) -> Result<Accuracy> {
    evaluate_in_group(model, data, batch, progress, &SingleProcess)
}

/// [`evaluate`] as one rank of `group`: each rank evaluates its contiguous part of the data
/// set ([`shard`]) and the counts are summed, so every rank returns the accuracy over all of
/// it, exactly what one process computes.
pub fn evaluate_in_group(
    model: &ZooModel,
    data: &dyn ImageSet,
    batch: usize,
    progress: bool,
    group: &dyn ProcessGroup,
) -> Result<Accuracy> {
    let transform = EvalTransform::for_size(model.img_size());
    evaluate_in_group_with(model, data, batch, progress, group, &transform)
}

/// [`evaluate_in_group`] with images prepared by `transform` (a hub snapshot's own).
pub fn evaluate_in_group_with(
    model: &ZooModel,
    data: &dyn ImageSet,
    batch: usize,
    progress: bool,
    group: &dyn ProcessGroup,
    transform: &EvalTransform,
) -> Result<Accuracy> {
    if batch == 0 {
        bail!("the batch size must be at least 1");
    }
    if transform.crop as usize != model.img_size() {
        bail!(
            "the transform crops {} pixels but the model takes {}",
            transform.crop,
            model.img_size()
        );
    }
    let classes = model.num_classes();
    check_classes(data, classes)?;
    let indices: Vec<usize> = (0..data.len()).collect();
    let mine = shard(&indices, group.rank(), group.size());
    let bar = progress_bar(
        progress && group.is_leader(),
        mine.len(),
        "eval {bar:30} {pos}/{len} images  {per_sec}  ETA {eta}  {msg}",
    );
    let (mut top1, mut top5, mut non_finite) = (0usize, 0usize, 0usize);
    for chunk in mine.chunks(batch) {
        let (images, labels) = data.images(0, chunk, transform)?;
        let logits = model.forward(&Eager, &images)?.to_vec();
        for (row, &label) in logits.chunks(classes).zip(&labels) {
            top1 += usize::from(in_top(row, label, 1));
            top5 += usize::from(in_top(row, label, 5));
            non_finite += usize::from(!row.iter().all(|v| v.is_finite()));
        }
        bar.inc(chunk.len() as u64);
        bar.set_message(format!(
            "top-1 {:.2}%",
            100.0 * top1 as f64 / bar.position() as f64
        ));
    }
    bar.finish_and_clear();
    // Counts below 2^53 are exact in f64, so the sum is the same on every rank.
    let mut counts = [top1 as f64, top5 as f64, non_finite as f64];
    group.sum_f64(&mut counts)?;
    let n = data.len() as f64;
    Ok(Accuracy {
        images: data.len(),
        top1: counts[0] / n,
        top5: counts[1] / n,
        non_finite: counts[2] as usize,
    })
}

/// One image's top predictions.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    /// The image file.
    pub path: PathBuf,
    /// `(class index, probability)`, most probable first.
    pub top: Vec<(usize, f32)>,
}

/// What [`classify`] made of its image files: the predictions for those it could read, in
/// the order given, and why each of the others could not be read.
#[derive(Debug)]
pub struct Classified {
    /// One per readable image.
    pub predictions: Vec<Prediction>,
    /// Each image file that could not be read or decoded, with the reason.
    pub unreadable: Vec<(PathBuf, idlevit_data::DataError)>,
}

/// Classifies image files: preprocess, run the model, softmax, keep the `top` best classes.
/// `transform` prepares each image (a hub snapshot's own, or [`EvalTransform::for_size`]).
/// A file that cannot be read or decoded is set aside in [`Classified::unreadable`] and the
/// rest are classified (with none readable, the model does not run).
pub fn classify(
    model: &ZooModel,
    images: &[PathBuf],
    top: usize,
    transform: &EvalTransform,
) -> Result<Classified> {
    if images.is_empty() {
        bail!("no images given");
    }
    let side = model.img_size();
    if transform.crop as usize != side {
        bail!(
            "the transform crops {} pixels but the model takes {side}",
            transform.crop
        );
    }
    let mut batch = Vec::with_capacity(batch_values(images.len(), side)?);
    let mut readable = Vec::with_capacity(images.len());
    let mut unreadable = Vec::new();
    for path in images {
        match load_image(path, transform) {
            Ok(image) => {
                batch.extend(image.into_vec());
                readable.push(path);
            }
            Err(err) => unreadable.push((path.clone(), err)),
        }
    }
    if readable.is_empty() {
        return Ok(Classified {
            predictions: Vec::new(),
            unreadable,
        });
    }
    let batch = Tensor::from_vec(vec![readable.len(), 3, side, side], batch)?;
    let logits = model.forward(&Eager, &batch)?;
    let predictions = readable
        .into_iter()
        .zip(top_classes(&logits, top)?)
        .map(|(path, top)| Prediction {
            path: path.clone(),
            top,
        })
        .collect();
    Ok(Classified {
        predictions,
        unreadable,
    })
}

/// The `k` most probable classes of each row of `(batch, classes)` logits, as
/// `(class index, softmax probability)`, most probable first (ties: the lower index first).
pub fn top_classes(logits: &Tensor, k: usize) -> Result<Vec<Vec<(usize, f32)>>> {
    let &[_, classes] = logits.shape() else {
        bail!(
            "logits must be (batch, classes), found shape {:?}",
            logits.shape()
        );
    };
    let probs = Eager.softmax(logits)?;
    Ok(probs
        .to_vec()
        .chunks(classes.max(1))
        .map(|row| {
            let mut order: Vec<usize> = (0..row.len()).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            order.into_iter().take(k).map(|i| (i, row[i])).collect()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::{in_top, top_classes};
    use idlevit_tensor::Tensor;

    #[test]
    fn top_classes_are_the_most_probable_first() {
        let logits = Tensor::from_vec(vec![2, 3], vec![0.0, 2.0, 1.0, 5.0, 5.0, -1.0]).unwrap();
        let top = top_classes(&logits, 2).unwrap();
        assert_eq!(top[0].iter().map(|t| t.0).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(top[1].iter().map(|t| t.0).collect::<Vec<_>>(), [0, 1]);
        let e = std::f32::consts::E;
        let expected = e * e / (1.0 + e + e * e);
        assert!((top[0][0].1 - expected).abs() < 1e-6, "{top:?}");
        assert!(
            (top[1][0].1 - top[1][1].1).abs() < 1e-7,
            "ties are equally probable"
        );
        let flat = Tensor::from_vec(vec![3], vec![0.0; 3]).unwrap();
        assert!(
            top_classes(&flat, 1)
                .unwrap_err()
                .to_string()
                .contains("(batch, classes)")
        );
    }

    #[test]
    fn ranks_by_logit_with_ties_against_the_label() {
        let row = [0.1, 0.5, 0.5, -1.0];
        assert!(in_top(&row, 1, 1));
        assert!(!in_top(&row, 2, 1));
        assert!(in_top(&row, 2, 2));
        assert!(!in_top(&row, 3, 3));
        assert!(in_top(&row, 3, 4));
    }

    #[test]
    fn non_finite_logits_are_wrong_answers() {
        assert!(!in_top(&[f32::NAN; 4], 0, 1));
        assert!(!in_top(&[f32::NAN; 4], 3, 5));
        assert!(!in_top(&[0.0, f32::NAN, 1.0], 2, 1));
        assert!(!in_top(&[0.0, f32::INFINITY, 1.0], 1, 1));
        assert!(!in_top(&[2.0, f32::NEG_INFINITY], 0, 1));
        assert!(!in_top(&[1.0, 2.0], 2, 5), "a label past the row");
    }
}
