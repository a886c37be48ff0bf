//! Throughput of models: median images/s over interleaved timed runs, the resident memory
//! around them, and bf16 against f32.

use std::time::Instant;

use idlevit_data::preprocess::batch_values;
use idlevit_nn::{Eager, Precision};
use idlevit_tensor::Tensor;
use idlevit_zoo::{TokenPolicy, ZooModel};

use crate::Result;
use crate::error::bail;

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
    Some((status_field("VmRSS:")?, status_field("VmHWM:")?))
}

/// A `kB` field of `/proc/self/status` (e.g. `VmRSS:`), in bytes; `None` where the file
/// does not exist or does not say.
pub fn status_field(name: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(name))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

impl BenchReport {
    /// Median images per second of model `index`.
    pub fn images_per_second(&self, index: usize) -> f64 {
        self.batch as f64 / median(&self.seconds[index])
    }
}

/// The fixed `batch x 3 x side x side` images every benchmark runs on: a spread of values in
/// [-1, 1), the range of normalised pixels.
fn bench_images(batch: usize, side: usize) -> Result<Tensor> {
    let n = batch_values(batch, side)?;
    Ok(Tensor::from_vec(
        vec![batch, 3, side, side],
        (0..n)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
            .collect(),
    )?)
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
        bail!("the batch size and the number of runs must be at least 1");
    }
    if models.is_empty() {
        bail!("nothing to benchmark");
    }
    let images = bench_images(batch, side)?;
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

/// The median images/s of each model [`bench_precision`] times, and how far the bf16 logits
/// lie from the f32 ones on the benchmark's images.
#[derive(Clone, Debug, PartialEq)]
pub struct PrecisionBench {
    /// (label, f32 images/s, bf16 images/s): dense first, then the policy if one is given.
    pub rows: Vec<(String, f64, f64)>,
    /// The bf16 model's logits against the f32 model's, per row.
    pub agreement: Vec<LogitAgreement>,
}

impl PrecisionBench {
    /// The policy's speed-up over dense in f32 and in bf16, when a policy was timed.
    pub fn speedups(&self) -> Option<(f64, f64)> {
        match self.rows.as_slice() {
            [(_, f32_dense, bf16_dense), (_, f32_policy, bf16_policy)] => {
                Some((f32_policy / f32_dense, bf16_policy / bf16_dense))
            }
            _ => None,
        }
    }
}

/// How closely one model's logits follow another's on the same images.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LogitAgreement {
    /// Images compared.
    pub images: usize,
    /// Images whose top-1 class is the same in both.
    pub top1_same: usize,
    /// The largest absolute difference of a logit.
    pub max_abs_diff: f32,
    /// The largest absolute logit of the reference, to read the difference against.
    pub max_abs_reference: f32,
}

impl LogitAgreement {
    /// Compares `logits` with `reference`, both `images x classes` row-major.
    pub fn of(reference: &[f32], logits: &[f32], classes: usize) -> Result<Self> {
        if classes == 0
            || reference.len() != logits.len()
            || !reference.len().is_multiple_of(classes)
        {
            bail!(
                "logits of {} and {} values do not form the same rows of {classes} classes",
                reference.len(),
                logits.len()
            );
        }
        let top1 = |row: &[f32]| {
            row.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i)
        };
        let top1_same = reference
            .chunks_exact(classes)
            .zip(logits.chunks_exact(classes))
            .filter(|(r, l)| top1(r) == top1(l))
            .count();
        // A NaN anywhere must show, so it wins over every number.
        let max_abs = |values: &mut dyn Iterator<Item = f32>| {
            values.fold(0.0f32, |m, v| {
                if m.is_nan() || v.is_nan() {
                    f32::NAN
                } else {
                    m.max(v)
                }
            })
        };
        Ok(Self {
            images: reference.len() / classes,
            top1_same,
            max_abs_diff: max_abs(&mut reference.iter().zip(logits).map(|(r, l)| (r - l).abs())),
            max_abs_reference: max_abs(&mut reference.iter().map(|r| r.abs())),
        })
    }
}

/// Times the f32 and bf16 forms of `dense` (and of `dense` under `policy`, unless it is
/// dense), interleaved run by run as [`bench()`] does, then compares each bf16 form's logits
/// with its f32 form's on the same images.
pub fn bench_precision(
    dense: &ZooModel,
    policy: &TokenPolicy,
    label: &str,
    batch: usize,
    warmup: usize,
    runs: usize,
) -> Result<PrecisionBench> {
    let mut models = vec![
        dense.clone(),
        dense.clone().with_precision(Precision::Bf16)?,
    ];
    let mut labels = vec!["dense".to_string()];
    if *policy != TokenPolicy::Dense {
        for m in [models[0].clone(), models[1].clone()] {
            models.push(m.with_policy(policy.clone())?);
        }
        labels.push(label.to_string());
    }
    let refs: Vec<&ZooModel> = models.iter().collect();
    let report = bench(&refs, dense.img_size(), batch, warmup, runs)?;
    let images = bench_images(batch, dense.img_size())?;
    let logits =
        |model: &ZooModel| -> Result<Vec<f32>> { Ok(model.forward(&Eager, &images)?.to_vec()) };
    let agreement = models
        .chunks_exact(2)
        .map(|pair| {
            let classes = dense.num_classes();
            LogitAgreement::of(&logits(&pair[0])?, &logits(&pair[1])?, classes)
        })
        .collect::<Result<_>>()?;
    let ips = |i| report.images_per_second(i);
    let rows = labels.into_iter().enumerate();
    let rows = rows
        .map(|(i, label)| (label, ips(2 * i), ips(2 * i + 1)))
        .collect();
    Ok(PrecisionBench { rows, agreement })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logit_agreement_counts_top1_and_the_largest_difference() {
        let reference = [1.0, 3.0, -2.0, 0.5, -4.0, 0.0, 0.0, 0.1, 0.2];
        let logits = [1.5, 2.9, -2.0, 0.4, -4.0, 0.6, 0.0, 0.1, 0.25];
        let agreement = LogitAgreement::of(&reference, &logits, 3).expect("same shapes");
        assert_eq!(agreement.images, 3);
        // Rows 0 and 2 keep classes 1 and 2; row 1 moves from class 0 to class 2.
        assert_eq!(agreement.top1_same, 2);
        assert_eq!(agreement.max_abs_diff, 0.6);
        assert_eq!(agreement.max_abs_reference, 4.0);
    }

    #[test]
    fn speedups_need_a_policy_row() {
        let mut bench = PrecisionBench {
            rows: vec![("dense".into(), 10.0, 16.0)],
            agreement: vec![],
        };
        assert_eq!(bench.speedups(), None);
        bench.rows.push(("idle".into(), 14.0, 20.0));
        assert_eq!(bench.speedups(), Some((1.4, 1.25)));
    }

    #[test]
    fn logit_agreement_shows_a_nan_and_refuses_mismatched_rows() {
        let agreement = LogitAgreement::of(&[1.0, 2.0], &[f32::NAN, 2.0], 2).expect("shapes");
        assert!(agreement.max_abs_diff.is_nan());
        let agreement = LogitAgreement::of(&[1.0, 2.0], &[1.0, f32::NAN], 2).expect("shapes");
        assert!(agreement.max_abs_diff.is_nan());
        assert!(LogitAgreement::of(&[1.0, 2.0], &[1.0], 2).is_err());
        assert!(LogitAgreement::of(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0], 2).is_err());
        assert!(LogitAgreement::of(&[], &[], 0).is_err());
    }
}
