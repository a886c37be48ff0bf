//! Where a layer's weights come from: a checkpoint, or a seeded initialiser. A layer asks
//! for each tensor once, by checkpoint name and shape, and neither knows nor cares which
//! source answers, so one tree of names serves loading and random initialisation alike.

use idlevit_checkpoint::{Checkpoint, WeightReader};
use idlevit_tensor::Tensor;

use crate::{Param, Result};

/// How a seeded initialiser draws a tensor that a checkpoint would supply.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// A layer's weight, its first axis the output: normal with std `fan_in^-1/2` (the
    /// product of the other axes), so activations keep unit scale.
    FanIn,
    /// A layer's bias: normal with std 0.02.
    Bias,
    /// Normal with this mean and standard deviation.
    Normal {
        /// The mean.
        mean: f32,
        /// The standard deviation.
        std: f32,
    },
    /// A batch norm's running variance: `1 + |N(0, 0.1)|`, positive and near 1.
    Variance,
}

impl Init {
    /// A norm's scale, near 1.
    pub const NORM_SCALE: Self = Self::Normal {
        mean: 1.0,
        std: 0.05,
    };
    /// A norm's shift (or a batch norm's running mean), near 0.
    pub const NORM_SHIFT: Self = Self::Normal {
        mean: 0.0,
        std: 0.05,
    };
    /// A learned token or position embedding.
    pub const EMBEDDING: Self = Self::Normal {
        mean: 0.0,
        std: 0.5,
    };
}

/// Supplies a model's tensors by checkpoint name: [`WeightReader`] from a checkpoint,
/// [`SeededInit`] by drawing them.
pub trait WeightSource {
    /// The tensor `name` of exactly `shape`; `init` says how to draw it where nothing is
    /// stored.
    fn take(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Tensor>;

    /// Ends loading; an error names the stored tensors no layer asked for.
    fn finish(&mut self) -> Result<()>;

    /// [`take`](Self::take) as a parameter carrying its name.
    fn param(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Param> {
        Ok(Param::new(name, self.take(name, shape, init)?))
    }
}

impl WeightSource for WeightReader {
    fn take(&mut self, name: &str, shape: &[usize], _init: Init) -> Result<Tensor> {
        Ok(WeightReader::take(self, name, shape)?)
    }

    fn finish(&mut self) -> Result<()> {
        let reader = std::mem::replace(self, WeightReader::new(Checkpoint::default()));
        Ok(reader.finish()?)
    }
}

/// Seeded random weights, drawn tensor by tensor in the order the layers ask for them.
#[derive(Clone, Debug)]
pub struct SeededInit {
    layers: SplitMix,
    rest: Option<SplitMix>,
}

impl SeededInit {
    /// Every tensor drawn in turn from one stream seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            layers: SplitMix(seed),
            rest: None,
        }
    }

    /// Layer weights and biases ([`Init::FanIn`], [`Init::Bias`]) drawn from a stream seeded
    /// with `seed`, everything else from one seeded with `rest_seed`: a model's layers then
    /// keep their values whatever norms and embeddings it adds.
    pub fn split(seed: u64, rest_seed: u64) -> Self {
        Self {
            layers: SplitMix(seed),
            rest: Some(SplitMix(rest_seed)),
        }
    }
}

impl WeightSource for SeededInit {
    fn take(&mut self, _name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        let rng = match (&mut self.rest, init) {
            (Some(rest), Init::Normal { .. } | Init::Variance) => rest,
            _ => &mut self.layers,
        };
        let (mean, std) = match init {
            Init::FanIn => {
                let fan_in: usize = shape.iter().skip(1).product();
                (0.0, (fan_in.max(1) as f32).powf(-0.5))
            }
            Init::Bias => (0.0, 0.02),
            Init::Normal { mean, std } => (mean, std),
            Init::Variance => (0.0, 0.1),
        };
        let values = (0..shape.iter().product())
            .map(|_| mean + std * rng.normal())
            .map(|v| match init {
                Init::Variance => 1.0 + v.abs(),
                _ => v,
            })
            .collect();
        Ok(Tensor::from_vec(shape.to_vec(), values)?)
    }

    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

/// A small, fast, seedable generator (SplitMix64); statistical quality is ample for weights.
#[derive(Clone, Debug)]
struct SplitMix(u64);

impl SplitMix {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A standard normal sample (Box–Muller).
    fn normal(&mut self) -> f32 {
        let u1 = ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let u2 = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seeded draws keep the scales layers rely on: unit-scale activations through a
    /// weight, small biases, positive variances.
    #[test]
    fn seeded_draws_keep_their_scales() {
        let mut init = SeededInit::new(7);
        let w = init
            .take("w", &[64, 16, 2, 2], Init::FanIn)
            .unwrap()
            .to_vec();
        let var = w.iter().map(|v| v * v).sum::<f32>() / w.len() as f32;
        assert!((var * 64.0 - 1.0).abs() < 0.2, "fan-in 64, variance {var}");
        let v = init.take("v", &[256], Init::Variance).unwrap().to_vec();
        assert!(v.iter().all(|&v| (1.0..1.6).contains(&v)), "{v:?}");
        let mut again = SeededInit::new(7);
        let w2 = again.take("w", &[64, 16, 2, 2], Init::FanIn).unwrap();
        assert_eq!(w2.to_vec(), w, "a seed draws the same weights");
    }

    /// A split initialiser draws layers from their own stream: adding a norm between two
    /// layers leaves the second layer's weights as they were.
    #[test]
    fn split_streams_keep_layers_apart() {
        let draw = |with_norm: bool| {
            let mut init = SeededInit::split(3, 4);
            init.take("a", &[4, 4], Init::FanIn).unwrap();
            if with_norm {
                init.take("n", &[4], Init::NORM_SCALE).unwrap();
            }
            init.take("b", &[4, 4], Init::FanIn).unwrap().to_vec()
        };
        assert_eq!(draw(false), draw(true));
    }

    #[test]
    fn the_reader_checks_shapes_and_leftovers() {
        let mut ckpt = Checkpoint::default();
        ckpt.insert("a", Tensor::zeros(&[2]).unwrap());
        ckpt.insert("b", Tensor::zeros(&[3]).unwrap());
        let mut reader = WeightReader::new(ckpt);
        let source: &mut dyn WeightSource = &mut reader;
        let err = source.take("a", &[3], Init::Bias).unwrap_err().to_string();
        assert!(err.contains("a") && err.contains("[3]"), "{err}");
        assert_eq!(source.param("a", &[2], Init::Bias).unwrap().name(), "a");
        let err = source.finish().unwrap_err().to_string();
        assert!(err.contains('b'), "{err}");
    }
}
