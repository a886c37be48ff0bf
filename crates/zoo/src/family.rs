//! What a model family is: one tree of weight names, written once in [`Family::build`], that
//! loads a checkpoint, draws a seeded random model, and (through [`Params`]) is visited for
//! training and saved.

use idlevit_checkpoint::{Checkpoint, WeightReader};
use idlevit_nn::{Params, SeededInit, WeightSource};

use crate::Result;

/// A model family. Implementing it takes the family's layers (their parameters listed once
/// with [`idlevit_nn::params!`]) and [`build`](Self::build); loading and random weights
/// follow. [`ZooModel`](crate::ZooModel) and [`ZooConfig`](crate::ZooConfig) hold a family
/// registered by its line of `families!` (`model.rs`).
pub trait Family: Params + Sized {
    /// The family's configuration.
    type Config;

    /// Builds the model from `src`, asking for every tensor by its checkpoint name.
    fn build(src: &mut dyn WeightSource, config: &Self::Config) -> Result<Self>;

    /// The source of the random weights of `seed`.
    fn seeded(seed: u64) -> SeededInit {
        SeededInit::new(seed)
    }

    /// Builds the model from named weights; every tensor must be present with its exact
    /// shape, and a tensor the model does not use is an error too.
    fn load(config: &Self::Config, checkpoint: Checkpoint) -> Result<Self> {
        let mut reader = WeightReader::new(checkpoint);
        let model = Self::build(&mut reader, config)?;
        reader.finish()?;
        Ok(model)
    }

    /// A model with seeded random weights (for benchmarks and tests).
    fn random(config: &Self::Config, seed: u64) -> Result<Self> {
        Self::build(&mut Self::seeded(seed), config)
    }
}

/// Gives a built-in family inherent `load`, `random` and `to_checkpoint` (so that callers
/// need not import [`Family`] and [`Params`]), and its `config` and `policy`.
macro_rules! family_methods {
    ($model:ty, $config:ty) => {
        impl $model {
            /// Builds the model from named weights; every tensor must be present with its
            /// exact shape, and a tensor the model does not use is an error too.
            pub fn load(
                config: &$config,
                checkpoint: idlevit_checkpoint::Checkpoint,
            ) -> Result<Self> {
                <Self as $crate::Family>::load(config, checkpoint)
            }

            /// A model with seeded random weights (for benchmarks and tests).
            pub fn random(config: &$config, seed: u64) -> Result<Self> {
                <Self as $crate::Family>::random(config, seed)
            }

            /// Every weight (and buffer) under the family's names and stored shapes, ready to
            /// save and to load again.
            pub fn to_checkpoint(&self) -> Result<idlevit_checkpoint::Checkpoint> {
                Ok(idlevit_nn::Params::to_checkpoint(self)?)
            }

            /// The same model running its linear layers in `precision` for inference (the
            /// `Eager` backend): with bf16 every linear weight is rounded and packed now, once.
            /// Convolutions, norms and token selection stay f32. Training tapes always
            /// compute in f32, and an optimiser step drops the bf16 copy of what it changes.
            pub fn with_precision(mut self, precision: idlevit_nn::Precision) -> Result<Self> {
                idlevit_nn::set_linear_precision(precision, |f| {
                    idlevit_nn::Params::visit_mut(&mut self, f)
                })?;
                Ok(self)
            }

            /// The model's configuration.
            pub fn config(&self) -> &$config {
                &self.config
            }

            /// The token policy the model runs.
            pub fn policy(&self) -> &idlevit_selector::TokenPolicy {
                &self.policy
            }
        }
    };
}

pub(crate) use family_methods;
