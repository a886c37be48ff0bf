//! The transformer's feed-forward block.

use idlevit_checkpoint::WeightReader;

use crate::{Fused, Linear, Result};
use idlevit_ops::{ParamVisitor, ParamVisitorMut};

/// `fc2(GELU(fc1(x)))`, hidden width `mlp_ratio * dim`.
#[derive(Clone, Debug)]
pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    /// Reads `{prefix}.fc1.*` `(hidden, dim)` and `{prefix}.fc2.*` `(dim, hidden)`.
    pub fn load(
        reader: &mut WeightReader,
        prefix: &str,
        dim: usize,
        hidden: usize,
    ) -> Result<Self> {
        Ok(Self {
            fc1: Linear::load(reader, &format!("{prefix}.fc1"), dim, hidden, true)?,
            fc2: Linear::load(reader, &format!("{prefix}.fc2"), hidden, dim, true)?,
        })
    }

    /// Visits `fc1` then `fc2`.
    pub fn visit_params(&self, f: &mut ParamVisitor<'_>) {
        self.fc1.visit_params(f);
        self.fc2.visit_params(f);
    }

    /// Visits `fc1` then `fc2` mutably.
    pub fn visit_params_mut(&mut self, f: &mut ParamVisitorMut<'_>) {
        self.fc1.visit_params_mut(f);
        self.fc2.visit_params_mut(f);
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
