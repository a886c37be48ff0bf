//! Scores, deterministic top-k, and the masks a selection implies.

use idlevit_kernels::top_k;
use idlevit_tensor::Tensor;
use rayon::prelude::*;

use crate::{Result, SelectorError};

/// The additive logit for keys of unselected tokens in the masked form. The release uses
/// -1e5 rather than -inf: `exp(-1e5)` is exactly 0 in f32, and -1e5 keeps the softmax
/// finite even for a row whose every key were masked.
pub const KEY_MASK_VALUE: f32 = -1e5;

/// Per batch item, the rows a layer computes: CLS (row 0) first, then the kept image
/// tokens in descending score order (ties: lower token index first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenSelection {
    indices: Vec<Vec<usize>>,
    tokens: usize,
}

/// Image-token scores from attention logits or probabilities `(batch, heads, queries, T)`:
/// the CLS query's row (query 0) averaged over heads, for tokens `1..T`; `(batch, T - 1)`.
pub fn cls_scores(attention: &Tensor) -> Result<Tensor> {
    let all = class_row_scores(attention)?;
    let tokens = all.shape()[1];
    if tokens < 2 {
        return Err(SelectorError::Schedule(format!(
            "attention {:?} has no image token to score",
            attention.shape()
        )));
    }
    Ok(all.slice_axis(1, 1, tokens)?.contiguous())
}

/// Every key's score from attention logits or probabilities `(batch, heads, queries, T)`:
/// query 0's row averaged over heads, `(batch, T)`.
pub fn class_row_scores(attention: &Tensor) -> Result<Tensor> {
    let &[batch, heads, queries, tokens] = attention.shape() else {
        return Err(SelectorError::Schedule(format!(
            "attention for scoring must be (batch, heads, queries, tokens), found {:?}",
            attention.shape()
        )));
    };
    if heads == 0 || queries == 0 || tokens == 0 {
        return Err(SelectorError::Schedule(format!(
            "attention {:?} has no CLS row to score with",
            attention.shape()
        )));
    }
    let rows = attention.select(2, 0)?.to_vec();
    let mut scores = vec![0.0f32; batch * tokens];
    for (b, out) in scores.chunks_mut(tokens).enumerate() {
        for h in 0..heads {
            let row = &rows[(b * heads + h) * tokens..(b * heads + h + 1) * tokens];
            out.iter_mut().zip(row).for_each(|(o, &v)| *o += v);
        }
        out.iter_mut().for_each(|o| *o /= heads as f32);
    }
    Ok(Tensor::from_vec(vec![batch, tokens], scores)?)
}

impl TokenSelection {
    /// Keeps the `keep` best-scored image tokens of each batch item. `scores` is
    /// `(batch, image tokens)`, token `j` of it being row `j + 1` (row 0 is CLS).
    pub fn from_scores(scores: &Tensor, keep: usize) -> Result<Self> {
        Self::top_rows(scores, keep, true)
    }

    /// Keeps the `keep` best-scored rows of each batch item of a block without a class
    /// token: `scores` is `(batch, tokens)`, column `j` scoring row `j`.
    pub fn from_row_scores(scores: &Tensor, keep: usize) -> Result<Self> {
        Self::top_rows(scores, keep, false)
    }

    /// The top `keep` columns of `scores` per batch item, as rows: shifted by one behind a
    /// leading class row when `class_row`.
    fn top_rows(scores: &Tensor, keep: usize, class_row: bool) -> Result<Self> {
        let &[batch, image_tokens] = scores.shape() else {
            return Err(SelectorError::Schedule(format!(
                "scores must be (batch, image tokens), found {:?}",
                scores.shape()
            )));
        };
        if keep == 0 || keep > image_tokens {
            return Err(SelectorError::Schedule(format!(
                "cannot keep {keep} of {image_tokens} image tokens"
            )));
        }
        let values = scores.to_vec();
        let shift = usize::from(class_row);
        let pick = |b: usize| -> Vec<usize> {
            let row = &values[b * image_tokens..(b + 1) * image_tokens];
            let best = top_k(row, keep).into_iter().map(|j| j + shift);
            class_row.then_some(0).into_iter().chain(best).collect()
        };
        // One top-k per image: worth a thread each only when there are several of them.
        let indices = if batch > 1 {
            (0..batch).into_par_iter().map(pick).collect()
        } else {
            (0..batch).map(pick).collect()
        };
        Ok(Self {
            indices,
            tokens: image_tokens + shift,
        })
    }

    /// The selected rows per batch item, CLS first.
    pub fn indices(&self) -> &[Vec<usize>] {
        &self.indices
    }

    /// The number of rows selected per batch item (`K + 1`).
    pub fn selected(&self) -> usize {
        self.indices.first().map_or(0, Vec::len)
    }

    /// The number of rows the selection chose from (`N + 1`).
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// The unselected rows per batch item, ascending.
    pub fn complement(&self) -> Vec<Vec<usize>> {
        self.indices
            .iter()
            .map(|picked| {
                let mut chosen = vec![false; self.tokens];
                picked.iter().for_each(|&i| chosen[i] = true);
                (0..self.tokens).filter(|&i| !chosen[i]).collect()
            })
            .collect()
    }

    /// Maps the selected rows through `positions` (row -> original token index), for
    /// reporting selections after tokens were dropped.
    pub fn map_positions(&self, positions: &[Vec<usize>]) -> Vec<Vec<usize>> {
        self.indices
            .iter()
            .zip(positions)
            .map(|(picked, pos)| picked.iter().map(|&i| pos[i]).collect())
            .collect()
    }

    fn per_token(&self, selected: f32, unselected: f32, shape: &[usize]) -> Result<Tensor> {
        let mut values = vec![unselected; self.indices.len() * self.tokens];
        for (b, picked) in self.indices.iter().enumerate() {
            picked
                .iter()
                .for_each(|&i| values[b * self.tokens + i] = selected);
        }
        Ok(Tensor::from_vec(shape.to_vec(), values)?)
    }

    /// The 0/1 token mask `(batch, tokens, 1)`: 1 for selected rows (CLS included).
    pub fn token_mask(&self) -> Result<Tensor> {
        self.per_token(1.0, 0.0, &[self.indices.len(), self.tokens, 1])
    }

    /// The additive key mask `(batch, 1, 1, tokens)`: 0 for selected keys,
    /// [`KEY_MASK_VALUE`] for the others.
    pub fn key_mask(&self) -> Result<Tensor> {
        self.per_token(
            0.0,
            KEY_MASK_VALUE,
            &[self.indices.len(), 1, 1, self.tokens],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_keeps_cls_first_descending_and_ties_low() {
        let scores =
            Tensor::from_vec(vec![2, 4], vec![0.5, 2.0, 0.5, 1.0, 3.0, 3.0, -1.0, 3.0]).unwrap();
        let sel = TokenSelection::from_scores(&scores, 3).unwrap();
        assert_eq!(sel.indices(), &[vec![0, 2, 4, 1], vec![0, 1, 2, 4]]);
        assert_eq!(sel.complement(), vec![vec![3], vec![3]]);
        assert_eq!(
            sel.token_mask().unwrap().to_vec(),
            [1., 1., 1., 0., 1., 1., 1., 1., 0., 1.]
        );
        assert_eq!(sel.key_mask().unwrap().to_vec()[3], KEY_MASK_VALUE);
        assert!(TokenSelection::from_scores(&scores, 0).is_err());
        assert!(TokenSelection::from_scores(&scores, 5).is_err());
    }

    #[test]
    fn scores_average_the_cls_row_over_heads() {
        // (batch 1, heads 2, queries 2, tokens 3)
        let logits = Tensor::from_vec(
            vec![1, 2, 2, 3],
            vec![9., 1., 2., 7., 7., 7., 9., 3., 6., 7., 7., 7.],
        )
        .unwrap();
        assert_eq!(cls_scores(&logits).unwrap().to_vec(), vec![2.0, 4.0]);
        assert!(cls_scores(&Tensor::zeros(&[1, 2, 1, 1]).unwrap()).is_err());
    }
}
