//! The ViT block as a [`TokenBlock`], so that every selection form runs on it.

use idlevit_selector::{
    AttentionParts, KeyScoring, TokenBlock, class_key_scores, class_row_scores,
};
use idlevit_tensor::Tensor;

use crate::{Block, Eager, Fused, NnError, QkvPart, Result};

impl<B: Fused> TokenBlock<B> for Block {
    type Error = NnError;

    fn forward(&self, bk: &B, x: B::Value) -> Result<B::Value> {
        self.forward_owned(bk, x)
    }

    /// The class query's logits without any key: only the class rows are normalised and
    /// projected to `q_cls`; every token's score is one pass over its row.
    fn token_scores(&self, bk: &B, x: &B::Value) -> Result<Tensor> {
        let x = bk.to_tensor(x);
        let (attn, norm) = (self.attn(), self.norm1());
        let &[batch, _, dim] = x.shape() else {
            return Err(NnError::shape(
                "scored tokens",
                "(batch, tokens, dim)",
                x.shape(),
            ));
        };
        let h_cls = norm.forward(&Eager, &x.slice_axis(1, 0, 1)?)?;
        let query = attn.project(&Eager, &h_cls, QkvPart::Query)?;
        let key_rows = |t: &Tensor| t.slice_axis(0, dim, 2 * dim);
        let key_weight = key_rows(attn.qkv().weight().value())?;
        let key_bias = attn.qkv().bias().map(|b| key_rows(b.value())).transpose()?;
        let scoring = KeyScoring {
            norm_gamma: norm.weight().value(),
            norm_beta: norm.bias().value(),
            norm_eps: norm.eps(),
            key_weight: &key_weight,
            key_bias: key_bias.as_ref(),
            scale_per_head: attn.scale() / attn.num_heads() as f32,
        };
        Ok(class_key_scores(
            &x,
            &query.reshape(&[batch, dim])?,
            &scoring,
        )?)
    }

    fn attention_parts(&self, bk: &B, x: &B::Value) -> Result<AttentionParts<B::Value>> {
        let attn = self.attn();
        let h = self.norm1().forward(bk, x)?;
        let heads = attn.heads(bk, &h)?;
        let logits = attn.logits(bk, &heads.q, &heads.k)?;
        let scores = class_row_scores(&bk.to_tensor(&logits))?;
        Ok(AttentionParts {
            logits,
            values: heads.v,
            scores,
            keys_are_tokens: true,
        })
    }

    fn attention_branch(&self, bk: &B, weights: &B::Value, values: &B::Value) -> Result<B::Value> {
        self.attn().attend_weights(bk, weights, values)
    }

    fn mlp_branch(&self, bk: &B, x: &B::Value) -> Result<B::Value> {
        Block::mlp_branch(self, bk, x)
    }

    fn residual(&self, bk: &B, x: &B::Value, branch: &B::Value) -> Result<B::Value> {
        Block::residual(self, bk, x, branch)
    }

    fn mlp_residual(&self, bk: &B, x: B::Value) -> Result<B::Value> {
        Block::mlp_residual(self, bk, x)
    }
}
