//! The `--bf16` switch: models with bf16 linear layers, and the bf16-against-f32 benchmark.

use anyhow::Result;
use idlevit_nn::Precision;
use idlevit_zoo::{DeiT, TokenPolicy, ZooModel};

use crate::commands;

/// The precision a model runs in when `--bf16` is `bf16`: bf16 only where its kernel should
/// beat f32 on this CPU (AMX; AVX-512 BF16 on AMD), since `--bf16` asks for speed and must
/// never be slower. Elsewhere it says so on stderr and runs f32, the fastest correct path.
pub fn from_flag(bf16: bool) -> Precision {
    let kernel = idlevit_kernels::bf16_kernel_name();
    match choose(bf16, idlevit_kernels::bf16_expected_faster_than_f32()) {
        Some(precision) => precision,
        None => {
            eprintln!(
                "note: --bf16 is not faster than f32 on this CPU (its bf16 kernel, {kernel}, does \
                 no more multiply-adds per cycle than f32); running f32"
            );
            Precision::F32
        }
    }
}

/// [`from_flag`]'s decision: the precision, or `None` when bf16 was asked for where it cannot
/// win.
fn choose(bf16: bool, bf16_wins: bool) -> Option<Precision> {
    match (bf16, bf16_wins) {
        (false, _) => Some(Precision::F32),
        (true, true) => Some(Precision::Bf16),
        (true, false) => None,
    }
}

/// The median images/s of each model `bench --bf16` times.
#[derive(Clone, Debug, PartialEq)]
pub struct PrecisionBench {
    /// (label, f32 images/s, bf16 images/s): dense first, then the policy if one is given.
    pub rows: Vec<(String, f64, f64)>,
}

/// Times the f32 and bf16 forms of `dense` (and of `dense` under `policy`, unless it is
/// dense), interleaved run by run as [`commands::bench`] does.
pub fn bench(
    dense: &DeiT,
    policy: &TokenPolicy,
    label: &str,
    batch: usize,
    warmup: usize,
    runs: usize,
) -> Result<PrecisionBench> {
    let dense_bf16 = dense.clone().with_precision(Precision::Bf16)?;
    let mut models = vec![dense.clone(), dense_bf16];
    let mut labels = vec!["dense".to_string()];
    if *policy != TokenPolicy::Dense {
        for m in [models[0].clone(), models[1].clone()] {
            models.push(m.with_policy(policy.clone())?);
        }
        labels.push(label.to_string());
    }
    let side = dense.config().img_size;
    let models: Vec<ZooModel> = models
        .into_iter()
        .map(|m| ZooModel::DeiT(Box::new(m)))
        .collect();
    let refs: Vec<&ZooModel> = models.iter().collect();
    let report = commands::bench(&refs, side, batch, warmup, runs)?;
    let rows = labels
        .into_iter()
        .enumerate()
        .map(|(i, label)| {
            let f32_ips = report.images_per_second(2 * i);
            (label, f32_ips, report.images_per_second(2 * i + 1))
        })
        .collect();
    Ok(PrecisionBench { rows })
}

impl PrecisionBench {
    /// The table `bench --bf16` prints: one line per model with both speeds and their ratio.
    pub fn lines(&self) -> Vec<String> {
        self.rows
            .iter()
            .map(|(label, f32_ips, bf16_ips)| {
                format!(
                    "  {label:<10} f32 {f32_ips:8.2} images/s   bf16 {bf16_ips:8.2} images/s   \
                     bf16/f32 speed ratio {:.3}x",
                    bf16_ips / f32_ips
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_runs_only_where_it_wins() {
        assert_eq!(choose(false, true), Some(Precision::F32));
        assert_eq!(choose(false, false), Some(Precision::F32));
        assert_eq!(choose(true, true), Some(Precision::Bf16));
        assert_eq!(choose(true, false), None);
    }
}
