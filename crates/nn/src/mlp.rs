//! The transformer's feed-forward block.

use crate::{Fused, Linear, Result, WeightSource};

/// `fc2(GELU(fc1(x)))`, hidden width `mlp_ratio * dim`.
#[derive(Clone, Debug)]
pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

crate::params!(Mlp: fc1, fc2);

impl Mlp {
    /// Reads `{prefix}.fc1.*` `(hidden, dim)` and `{prefix}.fc2.*` `(dim, hidden)`.
    pub fn load(
        src: &mut dyn WeightSource,
        prefix: &str,
        dim: usize,
        hidden: usize,
    ) -> Result<Self> {
        Ok(Self {
            fc1: Linear::load(src, &format!("{prefix}.fc1"), dim, hidden, true)?,
            fc2: Linear::load(src, &format!("{prefix}.fc2"), hidden, dim, true)?,
        })
    }

    /// The expanding projection.
    pub fn fc1(&self) -> &Linear {
        &self.fc1
    }

    /// The contracting projection.
    pub fn fc2(&self) -> &Linear {
        &self.fc2
    }

    /// Applies the block to the last axis of `x`.
    pub fn forward<B: Fused>(&self, bk: &B, x: &B::Value) -> Result<B::Value> {
        let hidden = bk.gelu(&self.fc1.forward(bk, x)?)?;
        self.fc2.forward(bk, &hidden)
    }
}
