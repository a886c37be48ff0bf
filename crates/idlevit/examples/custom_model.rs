//! Idle a model of your own with the selector alone: implement `TokenBlock` for your block
//! (its attention split into logits, values and branch; its MLP branch; its residual), and
//! `run_layers` runs a stack of them dense, idle, pruned or EViT-fused.
//!
//! ```sh
//! cargo run --release -p idlevit --example custom_model
//! ```

use idlevit::ops::{Backend, Eager};
use idlevit::selector::{
    AttentionParts, LayerSelection, SelectorError, TokenBlock, class_row_scores, run_layers,
};
use idlevit::{PolicyKind, Schedule, Tensor, TokenPolicy};

/// A single-head block without norms: attention `softmax(q k^T / sqrt(d)) v` and a ReLU MLP,
/// each closing a residual.
struct MyBlock {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    up: Tensor,
    down: Tensor,
}

impl MyBlock {
    fn new(dim: usize, seed: &mut u64) -> Result<Self, SelectorError> {
        let scale = (dim as f32).powf(-0.5);
        Ok(Self {
            q: random(&[dim, dim], scale, seed)?,
            k: random(&[dim, dim], scale, seed)?,
            v: random(&[dim, dim], scale, seed)?,
            up: random(&[2 * dim, dim], scale, seed)?,
            down: random(&[dim, 2 * dim], scale, seed)?,
        })
    }
}

impl<B: Backend> TokenBlock<B> for MyBlock {
    type Error = SelectorError;

    fn forward(&self, bk: &B, x: B::Value) -> Result<B::Value, SelectorError> {
        let parts = self.attention_parts(bk, &x)?;
        let weights = bk.softmax(&parts.logits)?;
        let x = bk.add(&x, &self.attention_branch(bk, &weights, &parts.values)?)?;
        self.mlp_residual(bk, x)
    }

    fn token_scores(&self, bk: &B, x: &B::Value) -> Result<Tensor, SelectorError> {
        Ok(self.attention_parts(bk, x)?.scores)
    }

    fn attention_parts(
        &self,
        bk: &B,
        x: &B::Value,
    ) -> Result<AttentionParts<B::Value>, SelectorError> {
        let shape = bk.shape(x).to_vec();
        let one_head = |w: &Tensor| -> Result<B::Value, SelectorError> {
            let projected = bk.linear(x, &bk.constant(w.clone()), None)?;
            Ok(bk.reshape(&projected, &[shape[0], 1, shape[1], shape[2]])?)
        };
        let q = bk.scale(&one_head(&self.q)?, (shape[2] as f32).powf(-0.5))?;
        let keys = bk.permute(&one_head(&self.k)?, &[0, 1, 3, 2])?;
        let logits = bk.matmul(&q, &keys)?;
        // Tokens are scored by the attention the class token (row 0) pays them.
        let scores = class_row_scores(&bk.to_tensor(&logits))?;
        let values = one_head(&self.v)?;
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
        let shape = bk.shape(&mixed).to_vec();
        Ok(bk.reshape(&mixed, &[shape[0], shape[2], shape[3]])?)
    }

    fn mlp_branch(&self, bk: &B, x: &B::Value) -> Result<B::Value, SelectorError> {
        let hidden = bk.relu(&bk.linear(x, &bk.constant(self.up.clone()), None)?)?;
        Ok(bk.linear(&hidden, &bk.constant(self.down.clone()), None)?)
    }

    fn residual(&self, bk: &B, x: &B::Value, branch: &B::Value) -> Result<B::Value, SelectorError> {
        Ok(bk.add(x, branch)?)
    }
}

/// Reproducible values in [-scale, scale).
fn random(shape: &[usize], scale: f32, seed: &mut u64) -> Result<Tensor, SelectorError> {
    let values = (0..shape.iter().product())
        .map(|_| {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((*seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect();
    Ok(Tensor::from_vec(shape.to_vec(), values)?)
}

fn main() -> Result<(), SelectorError> {
    let (selections, difference) = idle_my_model()?;
    for selection in selections {
        println!(
            "layer {} computes tokens {:?}",
            selection.layer, selection.tokens[0]
        );
    }
    println!("keeping every token, idle and dense differ by {difference:.1e}");
    Ok(())
}

/// Runs four blocks on a class token and 16 image tokens idle (layer 1 computes half the
/// image tokens, layer 3 a quarter); returns each idle layer's choice, and how far the idle
/// stack keeping every token is from the dense one.
pub fn idle_my_model() -> Result<(Vec<LayerSelection>, f32), SelectorError> {
    let mut seed = 7;
    let blocks = (0..4)
        .map(|_| MyBlock::new(32, &mut seed))
        .collect::<Result<Vec<_>, _>>()?;
    let tokens = random(&[2, 17, 32], 1.0, &mut seed)?;
    let idle = |ratios: Vec<f64>| -> Result<TokenPolicy, SelectorError> {
        Ok(TokenPolicy::select(
            PolicyKind::Idle,
            Schedule::new(vec![1, 3], ratios)?,
        ))
    };
    let (_, selections) = run_layers(&Eager, &blocks, &idle(vec![0.5, 0.25])?, 0, tokens.clone())?;
    let (dense, _) = run_layers(&Eager, &blocks, &TokenPolicy::Dense, 0, tokens.clone())?;
    let (all_kept, _) = run_layers(&Eager, &blocks, &idle(vec![1.0, 1.0])?, 0, tokens)?;
    let difference = dense
        .to_vec()
        .iter()
        .zip(all_kept.to_vec())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    Ok((selections, difference))
}
