//! The `idlevit` subcommands, as functions the binary and the tests call.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use idlevit_checkpoint::Checkpoint;
use idlevit_nn::{Backend, Eager};
use idlevit_tensor::Tensor;
use idlevit_zoo::ZooModel;

use crate::output::write_atomically;
use crate::preprocess::{EvalTransform, batch_values, load_image};
use crate::weights::{read_checkpoint, read_file, require_tensor};

/// What `logits` computed: the logits and, per selecting layer, the selected tokens.
#[derive(Clone, Debug)]
pub struct LogitsRun {
    /// `(batch, classes)`.
    pub logits: Tensor,
    /// `(layer, tokens per batch item)`, original token indices, CLS first.
    pub selections: Vec<(usize, Vec<Vec<usize>>)>,
}

/// Reads tensor `input` `(batch, 3, H, W)` of the `--input` file at `path` (safetensors, or
/// a `.pth`; `strict` as for [`read_checkpoint`]).
pub fn read_input(path: &Path, strict: bool) -> Result<Tensor> {
    let inputs = read_checkpoint(path, "input", strict)?;
    Ok(require_tensor(&inputs, "input", "input", path)?.clone())
}

/// Runs `model` on `input` (masked form when `masked`).
pub fn logits(model: &ZooModel, masked: bool, input: &Tensor) -> Result<LogitsRun> {
    Ok(if masked {
        let out = model.forward_masked(&Eager, input)?;
        let selections = out
            .layers
            .iter()
            .map(|(l, m)| (*l, m.selection.indices().to_vec()))
            .collect();
        LogitsRun {
            logits: out.logits,
            selections,
        }
    } else {
        let out = model.forward_traced(&Eager, input)?;
        let selections = out
            .selections
            .into_iter()
            .map(|s| (s.layer, s.tokens))
            .collect();
        LogitsRun {
            logits: out.logits,
            selections,
        }
    })
}

/// Writes tensor `logits` to `path` (atomically).
pub fn write_logits(logits: &Tensor, path: &Path) -> Result<()> {
    let mut out = Checkpoint::default();
    out.insert("logits", logits.clone());
    write_atomically(path, &out.to_safetensors_bytes()?)
}

/// How many rows of `(rows, columns)` values hold NaN or infinity.
pub fn non_finite_rows(values: &Tensor) -> usize {
    let columns = values.shape().last().copied().unwrap_or(1).max(1);
    values
        .to_vec()
        .chunks(columns)
        .filter(|row| !row.iter().all(|v| v.is_finite()))
        .count()
}

/// Writes each selecting layer's tokens as I64 tensor `selected.layer{i}` `(batch, K + 1)`.
pub fn write_selections(selections: &[(usize, Vec<Vec<usize>>)], path: &Path) -> Result<()> {
    let encoded: Vec<(String, Vec<usize>, Vec<u8>)> = selections
        .iter()
        .map(|(layer, tokens)| {
            let width = tokens.first().map_or(0, Vec::len);
            let bytes = tokens
                .iter()
                .flatten()
                .flat_map(|&t| (t as i64).to_le_bytes())
                .collect();
            (
                format!("selected.layer{layer}"),
                vec![tokens.len(), width],
                bytes,
            )
        })
        .collect();
    let views = encoded
        .iter()
        .map(|(name, shape, bytes)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::I64, shape.clone(), bytes)
                .map(|v| (name.as_str(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let bytes = safetensors::serialize(views, None)?;
    write_atomically(path, &bytes)
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
pub fn classify(model: &ZooModel, images: &[PathBuf], top: usize) -> Result<Vec<Prediction>> {
    if images.is_empty() {
        bail!("no images given");
    }
    let side = model.img_size();
    let transform = EvalTransform::for_size(side);
    let mut batch = Vec::with_capacity(batch_values(images.len(), side)?);
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
    let bytes = read_file(path, "labels")?;
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("labels file {} is not UTF-8 text", path.display()))?;
    Ok(text.lines().map(|l| l.trim().to_string()).collect())
}

/// Median seconds of `seconds`.
fn median(seconds: &[f64]) -> f64 {
    let mut s = seconds.to_vec();
    s.sort_by(f64::total_cmp);
    let mid = s.len() / 2;
    if s.len() % 2 == 1 {
        s[mid]
    } else {
        0.5 * (s[mid - 1] + s[mid])
    }
}

/// Timing of a throughput run: each model's seconds per forward pass, in run order.
#[derive(Clone, Debug)]
pub struct BenchReport {
    /// Images per forward pass.
    pub batch: usize,
    /// Seconds per timed pass of each model benchmarked, in the order given.
    pub seconds: Vec<Vec<f64>>,
    /// Memory of the process, where the platform reports it (Linux).
    pub memory: Option<MemoryReport>,
}

/// Resident memory around the timed runs, in bytes: the peak shows what a batch costs, and
/// the two samples show whether repeated runs grow the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryReport {
    /// Resident set after the warm-up passes.
    pub after_warmup: u64,
    /// Resident set after all timed passes.
    pub after_runs: u64,
    /// Peak resident set of the process so far.
    pub peak: u64,
}

/// The `VmRSS` and `VmHWM` (peak) lines of `/proc/self/status`, in bytes; `None` where the
/// file does not exist or does not say.
pub fn resident_memory() -> Option<(u64, u64)> {
    use crate::memory::status_field;
    Some((status_field("VmRSS:")?, status_field("VmHWM:")?))
}

impl BenchReport {
    /// Median images per second of model `index`.
    pub fn images_per_second(&self, index: usize) -> f64 {
        self.batch as f64 / median(&self.seconds[index])
    }
}

/// Times forward passes of each of `models` on the same `side x side` images, interleaved run by
/// run so that every model sees the same machine conditions, after `warmup` untimed passes
/// of each.
pub fn bench(
    models: &[&ZooModel],
    side: usize,
    batch: usize,
    warmup: usize,
    runs: usize,
) -> Result<BenchReport> {
    if batch == 0 || runs == 0 {
        bail!("--batch and --runs must be at least 1");
    }
    if models.is_empty() {
        bail!("nothing to benchmark");
    }
    let n = batch_values(batch, side)?;
    let images = Tensor::from_vec(
        vec![batch, 3, side, side],
        (0..n)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
            .collect(),
    )?;
    for model in models {
        for _ in 0..warmup {
            model.forward(&Eager, &images)?;
        }
    }
    let after_warmup = resident_memory();
    let mut seconds = vec![Vec::with_capacity(runs); models.len()];
    for _ in 0..runs {
        for (model, times) in models.iter().zip(&mut seconds) {
            let start = Instant::now();
            model.forward(&Eager, &images)?;
            times.push(start.elapsed().as_secs_f64());
        }
    }
    let memory =
        after_warmup
            .zip(resident_memory())
            .map(|((after_warmup, _), (after_runs, peak))| MemoryReport {
                after_warmup,
                after_runs,
                peak,
            });
    Ok(BenchReport {
        batch,
        seconds,
        memory,
    })
}

/// Throughput measured on a 2-core CPU with PyTorch eager, fp32, 2 threads (spec section 9):
/// `(engine and model, batch-1 images/s, batch-32 images/s)`. Measured elsewhere; printed
/// beside our own figures for orientation, never used as the basis of a ratio.
pub const REFERENCE_THROUGHPUT: &[(&str, f64, f64)] = &[
    ("timm DeiT-T", 34.6, 49.3),
    ("timm DeiT-S", 12.9, 17.4),
    ("timm DeiT-B", 4.2, 4.8),
    ("ONNX Runtime DeiT-S", 14.5, 16.0),
    ("authors' IdleViT DeiT-S r=0.7", 13.1, 19.8),
    ("authors' IdleViT DeiT-S r=0.5", 17.5, 21.2),
];

/// The objective's terms for one batch, and optionally every parameter's gradient.
#[derive(Clone, Debug)]
pub struct LossReport {
    /// Cross entropy.
    pub ce: f32,
    /// Cut loss summed over idle layers, before weighting.
    pub cut: f32,
    /// KL to the teacher, when distilling.
    pub kl: Option<f32>,
    /// Feature distillation term, when distilling.
    pub feature: Option<f32>,
    /// The weighted total.
    pub total: f32,
    /// Gradient of `total` per parameter under its timm name and checkpoint shape.
    pub grads: Option<Checkpoint>,
}

fn scalar(t: &Tensor) -> f32 {
    t.to_vec().first().copied().unwrap_or(f32::NAN)
}

/// Evaluates the finetuning objective of `student` (masked form) on `images` and soft
/// `targets`, with gradients when `with_grads`.
pub fn loss(
    student: &ZooModel,
    teacher: Option<&ZooModel>,
    images: &Tensor,
    targets: &Tensor,
    objective: &idlevit_train::Objective,
    with_grads: bool,
) -> Result<LossReport> {
    let teacher_out = teacher
        .map(|t| -> Result<_> { Ok(idlevit_train::Teacher::run(t, images)?) })
        .transpose()?;
    let tape = idlevit_autodiff::Tape::new();
    let parts = objective.compute(&tape, student, images, targets, teacher_out.as_ref())?;
    let value = |v: &<idlevit_autodiff::Tape as Backend>::Value| scalar(&tape.to_tensor(v));
    let mut report = LossReport {
        ce: value(&parts.ce),
        cut: value(&parts.cut),
        kl: parts.kl.as_ref().map(value),
        feature: parts.feature.as_ref().map(value),
        total: value(&parts.total),
        grads: None,
    };
    if with_grads {
        let grads = idlevit_train::parameter_gradients(&tape, &parts.total, student)?;
        let mut ckpt = Checkpoint::default();
        let mut failure = None;
        student.visit_params(&mut |p| {
            if let Some(g) = grads.get(p.name()) {
                match p.to_stored_shape(g) {
                    Ok(g) => ckpt.insert(p.name(), g),
                    Err(e) => failure = Some(e),
                }
            }
        });
        if let Some(e) = failure {
            return Err(e.into());
        }
        report.grads = Some(ckpt);
    }
    Ok(report)
}

/// Parses `--labels 1,2,3`.
pub fn parse_labels(text: &str) -> Result<Vec<usize>> {
    text.split(',')
        .map(|l| {
            l.trim()
                .parse::<usize>()
                .with_context(|| format!("label `{l}` is not a class index"))
        })
        .collect()
}
