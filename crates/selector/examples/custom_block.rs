//! Idling a transformer block this crate has never seen: a small pre-norm block written here
//! over the op trait, run in the idle layer's inference form (only the selected rows
//! computed) and in its training form (every row computed, unselected keys and updates
//! masked), which must agree.
//!
//! Run with `cargo run -p idlevit-selector --example custom_block`.

use idlevit_ops::{Backend, Eager, OpsError};
use idlevit_selector::{
    AttentionParts, SelectorError, TokenBlock, class_row_scores, idle_gathered, idle_masked,
};
use idlevit_tensor::Tensor;

/// A pre-norm block with separate q, k, v projections and a ReLU MLP, no biases.
struct TinyBlock {
    heads: usize,
    norm: [Tensor; 2],
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    fc1: Tensor,
    fc2: Tensor,
}

/// Reproducible values in [-scale, scale) (a linear congruential generator).
fn random(shape: &[usize], scale: f32, seed: &mut u64) -> Result<Tensor, OpsError> {
    let count = shape.iter().product();
    let values = (0..count)
        .map(|_| {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((*seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect();
    Ok(Tensor::from_vec(shape.to_vec(), values)?)
}

impl TinyBlock {
    fn new(dim: usize, heads: usize, seed: &mut u64) -> Result<Self, OpsError> {
        let w = (dim as f32).powf(-0.5);
        Ok(Self {
            heads,
            norm: [Tensor::full(&[dim], 1.0)?, Tensor::zeros(&[dim])?],
            q: random(&[dim, dim], w, seed)?,
            k: random(&[dim, dim], w, seed)?,
            v: random(&[dim, dim], w, seed)?,
            out: random(&[dim, dim], w, seed)?,
            fc1: random(&[2 * dim, dim], w, seed)?,
            fc2: random(&[dim, 2 * dim], w, seed)?,
        })
    }

    /// `(batch, tokens, dim)` to `(batch, heads, tokens, dim / heads)`.
    fn split<B: Backend>(&self, bk: &B, x: &B::Value) -> Result<B::Value, OpsError> {
        let &[batch, tokens, dim] = bk.shape(x) else {
            return Err(OpsError::shape(
                "tokens",
                "(batch, tokens, dim)",
                bk.shape(x),
            ));
        };
        let x = bk.reshape(x, &[batch, tokens, self.heads, dim / self.heads])?;
        bk.permute(&x, &[0, 2, 1, 3])
    }

    fn normed<B: Backend>(&self, bk: &B, x: &B::Value) -> Result<B::Value, OpsError> {
        let [gamma, beta] = &self.norm;
        bk.layer_norm(
            x,
            &bk.constant(gamma.clone()),
            &bk.constant(beta.clone()),
            1e-6,
        )
    }

    fn project<B: Backend>(&self, bk: &B, x: &B::Value, w: &Tensor) -> Result<B::Value, OpsError> {
        bk.linear(x, &bk.constant(w.clone()), None)
    }
}

impl<B: Backend> TokenBlock<B> for TinyBlock {
    type Error = SelectorError;

    fn forward(&self, bk: &B, x: B::Value) -> Result<B::Value, SelectorError> {
        let parts = self.attention_parts(bk, &x)?;
        let branch = self.attention_branch(bk, &bk.softmax(&parts.logits)?, &parts.values)?;
        let x = self.residual(bk, &x, &branch)?;
        self.mlp_residual(bk, x)
    }

    /// Scored the plain way, from the class query's logits against every key.
    fn token_scores(&self, bk: &B, x: &B::Value) -> Result<Tensor, SelectorError> {
        Ok(self.attention_parts(bk, x)?.scores)
    }

    fn attention_parts(
        &self,
        bk: &B,
        x: &B::Value,
    ) -> Result<AttentionParts<B::Value>, SelectorError> {
        let h = self.normed(bk, x)?;
        let q = self.split(bk, &self.project(bk, &h, &self.q)?)?;
        let k = self.split(bk, &self.project(bk, &h, &self.k)?)?;
        let values = self.split(bk, &self.project(bk, &h, &self.v)?)?;
        let head_dim = bk.shape(&q)[3];
        let q = bk.scale(&q, (head_dim as f32).powf(-0.5))?;
        let logits = bk.matmul(&q, &bk.permute(&k, &[0, 1, 3, 2])?)?;
        let scores = class_row_scores(&bk.to_tensor(&logits))?;
        Ok(AttentionParts {
            logits,
            values,
            scores,
            keys_are_tokens: true,
        })
    }

    fn attention_branch(
        &self,
        bk: &B,
        weights: &B::Value,
        values: &B::Value,
    ) -> Result<B::Value, SelectorError> {
        let mixed = bk.matmul(weights, values)?;
        let &[batch, heads, tokens, head_dim] = bk.shape(&mixed) else {
            return Err(OpsError::shape("attention", "4 axes", bk.shape(&mixed)).into());
        };
        let merged = bk.reshape(
            &bk.permute(&mixed, &[0, 2, 1, 3])?,
            &[batch, tokens, heads * head_dim],
        )?;
        Ok(self.project(bk, &merged, &self.out)?)
    }

    fn mlp_branch(&self, bk: &B, x: &B::Value) -> Result<B::Value, SelectorError> {
        let hidden = bk.relu(&self.project(bk, &self.normed(bk, x)?, &self.fc1)?)?;
        Ok(self.project(bk, &hidden, &self.fc2)?)
    }

    fn residual(&self, bk: &B, x: &B::Value, branch: &B::Value) -> Result<B::Value, SelectorError> {
        Ok(bk.add(x, branch)?)
    }
}

fn main() -> Result<(), SelectorError> {
    let mut seed = 7;
    let (batch, tokens, dim, keep) = (2, 17, 32, 9);
    let block = TinyBlock::new(dim, 4, &mut seed)?;
    let x = random(&[batch, tokens, dim], 1.0, &mut seed)?;

    let (gathered, selection) = idle_gathered(&Eager, &block, x.clone(), keep)?;
    let masked = idle_masked(&Eager, &block, &x, keep)?;
    assert_eq!(
        selection, masked.selection,
        "both forms pick the same tokens"
    );

    let (gathered, masked_out) = (gathered.to_vec(), masked.output.to_vec());
    let worst = gathered
        .iter()
        .zip(&masked_out)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    println!(
        "kept rows {:?} of {tokens}; largest difference between the forms: {worst:.2e}",
        selection.indices()[0]
    );
    assert!(worst < 1e-5, "the forms differ by {worst}");

    // Idle rows pass through untouched.
    let input = x.to_vec();
    let idle_row = selection.complement()[0][0];
    let row = |v: &[f32]| v[idle_row * dim..(idle_row + 1) * dim].to_vec();
    assert_eq!(row(&gathered), row(&input));
    Ok(())
}
