//! How much memory a run of a model needs, estimated from its config before anything is
//! allocated, and how much the machine has available.
//!
//! A config inside the documented limits can still describe a run larger than the machine (a
//! 4096-wide, 19-block DeiT holds 15 GB of weights; DeiT-Tiny at batch 14 000 holds 40 GB of
//! activations). Without an estimate such a run aborts on allocation; with one, the caller can
//! refuse it with a message first. The estimate follows what the crates actually keep
//! resident: f32 weights, the packed copy inference makes of every weight matrix, the
//! residual stream and the largest intermediates of one layer (the fused attention and MLP
//! kernels keep their scratch per thread, so no attention map of the whole batch exists in
//! inference), and in training every value the tape saves for the backward pass, gradients,
//! AdamW's two moments and a teacher. It aims to be within a factor of two of the measured
//! peak, erring high.

use std::io::Read;

mod profile;

use crate::ZooConfig;

/// What a run keeps in memory besides the model's weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryUse {
    /// Inference in f32: the weights, a packed f32 copy of every weight matrix and one
    /// forward pass's activations.
    Inference,
    /// Inference with the linear layers in bf16 (`--bf16`): the f32 weights, a packed
    /// bf16 copy of every weight matrix (half the size) and one forward pass's activations.
    InferenceBf16,
    /// One training step of the masked form: weights, gradients, AdamW's two moments, every
    /// activation the tape saves for the backward pass, and, when `teacher`, a frozen teacher
    /// of the same shape with its packed copies.
    Training {
        /// Whether a teacher model is loaded beside the student.
        teacher: bool,
    },
}

/// A run's memory estimate in bytes, part by part.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// The model's f32 weights: 4 bytes per parameter.
    pub weights: u64,
    /// The packed copies inference makes of the weight matrices (f32 or bf16).
    pub packed: u64,
    /// Training state: gradients and AdamW's two moments, 12 bytes per parameter.
    pub optimizer: u64,
    /// A teacher's weights and packed copies.
    pub teacher: u64,
    /// The input images, activations and the kernels' per-thread buffers at the peak.
    pub activations: u64,
}

impl MemoryEstimate {
    /// The sum of the parts, or `None` when it overflows `u64`.
    pub fn total(&self) -> Option<u64> {
        sum(&[
            self.weights,
            self.packed,
            self.optimizer,
            self.teacher,
            self.activations,
        ])
    }
}

/// Most bytes [`available_memory`] reads of `/proc/meminfo` (a few KiB on Linux).
const MEMINFO_READ_LIMIT: u64 = 64 * 1024;

/// Bytes of memory available to new allocations without swapping (Linux `MemAvailable` in
/// `/proc/meminfo`), or `None` where that cannot be read.
pub fn available_memory() -> Option<u64> {
    let mut text = String::new();
    std::fs::File::open("/proc/meminfo")
        .ok()?
        .take(MEMINFO_READ_LIMIT)
        .read_to_string(&mut text)
        .ok()?;
    parse_mem_available(&text)
}

/// The `MemAvailable:` line of a `/proc/meminfo` text, in bytes.
fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?;
    let mut words = line.split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}

/// Bytes per f32 value.
const F32_BYTES: u64 = 4;

impl ZooConfig {
    /// Estimated peak bytes of a run of this model on `batch` images; `None` when the count
    /// overflows `u64` (a run that large cannot fit anywhere). See [`Self::memory_breakdown`].
    pub fn memory_estimate(&self, batch: usize, use_: MemoryUse) -> Option<u64> {
        self.memory_breakdown(batch, use_)?.total()
    }

    /// The parts of [`memory_estimate`](Self::memory_estimate), with rayon's default pool
    /// (one worker per available CPU) holding the per-thread buffers.
    pub fn memory_breakdown(&self, batch: usize, use_: MemoryUse) -> Option<MemoryEstimate> {
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        self.memory_breakdown_with_threads(batch, use_, threads)
    }

    /// [`memory_breakdown`](Self::memory_breakdown) for a pool of `threads` workers.
    pub fn memory_breakdown_with_threads(
        &self,
        batch: usize,
        use_: MemoryUse,
        threads: usize,
    ) -> Option<MemoryEstimate> {
        let p = profile::of(self)?;
        let (batch, threads) = (batch as u64, threads.max(1) as u64);
        let weights = p.parameters.checked_mul(F32_BYTES)?;
        let packed_f32 = p.packed.checked_mul(F32_BYTES)?;
        // Images run in parallel up to one per thread; every thread keeps its own buffers.
        let scratch = sum(&[
            batch.min(threads).checked_mul(p.image_scratch)?,
            threads.checked_mul(p.thread_scratch)?,
        ])?;
        let inputs = batch.checked_mul(p.image)?;
        let infer = sum(&[inputs, batch.checked_mul(p.infer)?, scratch])?;
        let estimate = match use_ {
            MemoryUse::Inference | MemoryUse::InferenceBf16 => MemoryEstimate {
                weights,
                // bf16 copies are half the size.
                packed: packed_f32 / if use_ == MemoryUse::Inference { 1 } else { 2 },
                activations: infer.checked_mul(F32_BYTES)?,
                ..MemoryEstimate::default()
            },
            MemoryUse::Training { teacher } => {
                // The teacher runs first, as inference; the tape's saved values, the
                // backward pass's gradients of activations and the kernels' scratch come
                // after, so the peak is the larger of the two passes.
                let backward = batch.checked_mul(sum(&[p.saved, p.saved_block])?)?;
                let train = sum(&[inputs, backward, scratch])?;
                MemoryEstimate {
                    weights,
                    packed: 0,
                    optimizer: weights.checked_mul(3)?,
                    teacher: if teacher {
                        sum(&[weights, packed_f32])?
                    } else {
                        0
                    },
                    activations: train.max(infer).checked_mul(F32_BYTES)?,
                }
            }
        };
        Some(estimate)
    }
}

/// `xs` summed, `None` on overflow.
pub(super) fn sum(xs: &[u64]) -> Option<u64> {
    xs.iter().try_fold(0u64, |acc, &x| acc.checked_add(x))
}

/// `xs` multiplied, `None` on overflow.
pub(super) fn prod(xs: &[u64]) -> Option<u64> {
    xs.iter().try_fold(1u64, |acc, &x| acc.checked_mul(x))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ZooModel;

    /// The estimate for a pool of `threads` workers.
    fn estimate_with(
        config: &ZooConfig,
        batch: usize,
        use_: MemoryUse,
        threads: usize,
    ) -> Option<u64> {
        config
            .memory_breakdown_with_threads(batch, use_, threads)?
            .total()
    }

    /// Parameters of a built model, counted by visiting them.
    fn built_parameters(config: &ZooConfig) -> u64 {
        let model = ZooModel::random(config, 3).unwrap();
        let mut count = 0;
        model.visit_params(&mut |p| count += p.value().numel() as u64);
        count
    }

    fn small_configs() -> [ZooConfig; 3] {
        [
            ZooConfig::from_json(
                r#"{"img_size": 32, "patch_size": 8, "embed_dim": 24, "depth": 2,
                "num_heads": 3, "mlp_ratio": 2.0, "num_classes": 7, "qkv_bias": true}"#,
            )
            .unwrap(),
            ZooConfig::from_json(
                r#"{"family": "lvvit", "img_size": 32, "patch_size": 8, "stem_channels": 4,
                "embed_dim": 24, "depth": 2, "num_heads": 3, "mlp_ratio": 3.0,
                "num_classes": 7, "skip_lam": 2.0}"#,
            )
            .unwrap(),
            ZooConfig::from_json(
                r#"{"family": "pvt_v2", "img_size": 48, "embed_dims": [8, 16],
                "depths": [1, 2], "num_heads": [1, 2], "sr_ratios": [4, 1],
                "mlp_ratios": [4.0, 2.0], "num_classes": 5}"#,
            )
            .unwrap(),
        ]
    }

    #[test]
    fn weights_are_four_bytes_per_built_parameter() {
        for config in small_configs() {
            let params = built_parameters(&config);
            assert_eq!(
                config.parameter_count(),
                Some(params as usize),
                "{config:?}"
            );
            for use_ in [
                MemoryUse::Inference,
                MemoryUse::InferenceBf16,
                MemoryUse::Training { teacher: true },
            ] {
                let e = config.memory_breakdown_with_threads(2, use_, 4).unwrap();
                assert_eq!(e.weights, 4 * params, "{config:?}");
                assert!(e.activations > 0);
                assert_eq!(e.total(), estimate_with(&config, 2, use_, 4));
            }
        }
    }

    #[test]
    fn the_parts_follow_the_use() {
        let deit = ZooConfig::named("deit_small").unwrap();
        let at = |use_| deit.memory_breakdown_with_threads(8, use_, 4).unwrap();
        let (f32, bf16) = (at(MemoryUse::Inference), at(MemoryUse::InferenceBf16));
        // A packed copy pads only the head's 1000 rows to 1024.
        assert!(
            f32.packed >= f32.weights * 95 / 100 && f32.packed <= f32.weights,
            "{f32:?}"
        );
        assert_eq!(bf16.packed, f32.packed / 2);
        assert_eq!((f32.optimizer, f32.teacher), (0, 0));
        let alone = at(MemoryUse::Training { teacher: false });
        let taught = at(MemoryUse::Training { teacher: true });
        assert_eq!(alone.optimizer, 3 * alone.weights);
        assert_eq!(alone.teacher, 0);
        assert_eq!(taught.teacher, taught.weights + f32.packed);
        assert!(
            alone.activations > 10 * f32.activations,
            "{alone:?} vs {f32:?}"
        );
    }

    #[test]
    fn estimates_grow_with_the_batch() {
        for config in small_configs()
            .into_iter()
            .chain(["deit_base", "lvvit_m", "pvt_v2_b2"].map(|n| ZooConfig::named(n).unwrap()))
        {
            for use_ in [MemoryUse::Inference, MemoryUse::Training { teacher: false }] {
                let sizes: Vec<u64> = [1, 2, 7, 64, 1000]
                    .iter()
                    .map(|&b| {
                        config
                            .memory_breakdown_with_threads(b, use_, 8)
                            .unwrap()
                            .total()
                            .unwrap()
                    })
                    .collect();
                assert!(
                    sizes.windows(2).all(|w| w[0] < w[1]),
                    "{config:?} {use_:?}: {sizes:?}"
                );
            }
        }
    }

    /// Brackets worked out by hand from the shapes (see the module's notes), around what the
    /// published sizes measure.
    #[test]
    fn published_sizes_fall_in_hand_computed_brackets() {
        const GB: u64 = 1_000_000_000;
        let estimate = |name: &str, batch, use_| {
            estimate_with(&ZooConfig::named(name).unwrap(), batch, use_, 16).unwrap()
        };
        // DeiT-S training at batch 64: 22 M parameters (0.35 GB with gradients and moments,
        // 0.18 GB more for a teacher) and about 1.9 M saved values per image per block,
        // 12 blocks: 5.8 GB. It must fit a 24 GB machine.
        let small = estimate("deit_small", 64, MemoryUse::Training { teacher: true });
        assert!((5 * GB..12 * GB).contains(&small), "{small}");
        // DeiT-B inference at batch 32: 86 M parameters twice (weights and packed copies),
        // 0.7 GB, and a few MB of activations per image.
        let base = estimate("deit_base", 32, MemoryUse::Inference);
        assert!((GB / 2..2 * GB).contains(&base), "{base}");
        // DeiT-Tiny at batch 14 000: per image 150 k input values, as many in the patches'
        // copy and 3 x 38 k of tokens while embedding, 1.7 MB: 23 GB (1.4 GB measured at
        // batch 1000).
        let tiny = estimate("deit_tiny", 14_000, MemoryUse::Inference);
        assert!((18 * GB..30 * GB).contains(&tiny), "{tiny}");
    }

    #[test]
    fn the_probe_config_needs_more_than_its_weights() {
        // 3.8 G parameters: 15 GB of weights and as much again packed.
        let config = ZooConfig::from_json(
            r#"{"img_size": 224, "patch_size": 16, "embed_dim": 4096, "depth": 19,
            "num_heads": 16, "mlp_ratio": 4.0, "num_classes": 1000, "qkv_bias": true}"#,
        )
        .unwrap();
        let bytes = config.memory_estimate(1, MemoryUse::Inference).unwrap();
        assert!(bytes > 30_000_000_000, "{bytes}");
    }

    #[test]
    fn overflow_is_none() {
        let tiny = ZooConfig::named("deit_tiny").unwrap();
        assert_eq!(tiny.memory_estimate(usize::MAX, MemoryUse::Inference), None);
        assert_eq!(
            tiny.memory_estimate(usize::MAX / 4, MemoryUse::Training { teacher: true }),
            None
        );
    }

    #[test]
    fn meminfo_is_parsed() {
        let text = "MemTotal:       32768 kB\nMemFree:  100 kB\nMemAvailable:   2048 kB\n";
        assert_eq!(parse_mem_available(text), Some(2048 * 1024));
        assert_eq!(parse_mem_available("MemTotal: 1 kB\n"), None);
        assert_eq!(parse_mem_available("MemAvailable: lots kB\n"), None);
        assert_eq!(parse_mem_available("MemAvailable: 1 MB\n"), None);
        assert_eq!(
            parse_mem_available("MemAvailable: 99999999999999999999 kB\n"),
            None
        );
        if cfg!(target_os = "linux") {
            assert!(available_memory().is_some_and(|b| b > 0));
        }
    }
}
