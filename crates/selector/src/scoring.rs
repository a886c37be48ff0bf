//! The class query's attention to every token, without computing a key.

use idlevit_ops::math;
use idlevit_tensor::Tensor;

use crate::{Result, SelectorError};

/// What a pre-norm attention block scores tokens with: the norm in front of attention and
/// the key projection.
#[derive(Clone, Copy, Debug)]
pub struct KeyScoring<'a> {
    /// Layer-norm scale `(dim)`.
    pub norm_gamma: &'a Tensor,
    /// Layer-norm shift `(dim)`.
    pub norm_beta: &'a Tensor,
    /// Layer-norm epsilon.
    pub norm_eps: f32,
    /// The key projection's weight `(dim, dim)` (a view of a fused qkv weight is fine).
    pub key_weight: &'a Tensor,
    /// The key projection's bias `(dim)`.
    pub key_bias: Option<&'a Tensor>,
    /// The attention's softmax temperature divided by the number of heads.
    pub scale_per_head: f32,
}

/// Every token's score `(batch, tokens)` against one query per image `query` `(batch, dim)`:
/// the mean over heads of the scaled logit `s q_h · k_h[j]` of `k = W_k norm(x) + b_k`,
/// from the block's input `x` `(batch, tokens, dim)`.
///
/// The logit is linear in the key, so no key is computed: the mean over heads is
/// `S[j] = norm(x_j) · u + c` for `u = (s / H) W_k^T q` and `c = (s / H) q · b_k`, and with the
/// norm's scale folded into `u` and its shift into `c`, each token's score is one pass over
/// its row (its mean, variance and dot product at once). That costs `(N + 1) C + 2 C^2`
/// multiply-adds per image instead of the `(N + 1) C^2` of projecting every token's key.
///
/// A ViT block's query is its class token's; a block without a class token (PVT) uses the
/// query of its mean normalised token.
pub fn class_key_scores(x: &Tensor, query: &Tensor, w: &KeyScoring<'_>) -> Result<Tensor> {
    let &[batch, tokens, dim] = x.shape() else {
        return Err(shape_error(
            "scored tokens",
            "(batch, tokens, dim)",
            x.shape(),
        ));
    };
    let expect = |what: &str, t: &Tensor, shape: &[usize]| {
        if t.shape() == shape {
            Ok(())
        } else {
            Err(shape_error(what, &format!("{shape:?}"), t.shape()))
        }
    };
    if tokens == 0 {
        return Err(shape_error(
            "scored tokens",
            "at least one token",
            x.shape(),
        ));
    }
    expect("scoring query", query, &[batch, dim])?;
    expect("scoring norm scale", w.norm_gamma, &[dim])?;
    expect("scoring norm shift", w.norm_beta, &[dim])?;
    expect("key weight", w.key_weight, &[dim, dim])?;
    if let Some(b) = w.key_bias {
        expect("key bias", b, &[dim])?;
    }
    let u = math::scale(&math::matmul(query, w.key_weight)?, w.scale_per_head)?.to_vec();
    let (gamma, beta) = (w.norm_gamma.to_vec(), w.norm_beta.to_vec());
    let folded: Vec<f32> = u
        .chunks_exact(dim)
        .flat_map(|u| u.iter().zip(&gamma).map(|(u, g)| u * g))
        .collect();
    let mut shift: Vec<f32> = u
        .chunks_exact(dim)
        .map(|u| u.iter().zip(&beta).map(|(u, b)| u * b).sum())
        .collect();
    if let Some(b) = w.key_bias {
        let c = math::matmul(query, &b.reshape(&[dim, 1])?)?;
        let c = math::scale(&c, w.scale_per_head)?;
        shift.iter_mut().zip(c.to_vec()).for_each(|(s, c)| *s += c);
    }
    let x = x.contiguous();
    let mut scores = vec![0.0; batch * tokens];
    let rows = x.as_slice().ok_or_else(|| {
        SelectorError::Schedule("scored tokens are not laid out contiguously".into())
    })?;
    idlevit_kernels::layer_norm_dot(&mut scores, rows, &folded, w.norm_eps, dim, tokens)?;
    for (image, c) in scores.chunks_exact_mut(tokens).zip(&shift) {
        image.iter_mut().for_each(|s| *s += c);
    }
    Ok(Tensor::from_vec(vec![batch, tokens], scores)?)
}

fn shape_error(what: &str, expected: &str, found: &[usize]) -> SelectorError {
    SelectorError::Ops(idlevit_ops::OpsError::shape(what, expected, found))
}
