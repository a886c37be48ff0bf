#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

use idlevit_ops::Backend;
use idlevit_tensor::Tensor;
use thiserror::Error;

/// Which terms of the cut loss to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CutLoss {
    /// `inter + intra` (the release's default).
    #[default]
    Both,
    /// Only the attention crossing the cut.
    Inter,
    /// Only the attention kept inside the selected tokens.
    Intra,
    /// No cut loss.
    None,
}

impl std::str::FromStr for CutLoss {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "both" => Ok(Self::Both),
            "inter" => Ok(Self::Inter),
            "intra" => Ok(Self::Intra),
            "none" => Ok(Self::None),
            other => Err(format!(
                "unknown cut loss `{other}`; expected both, inter, intra or none"
            )),
        }
    }
}

/// Everything that can go wrong computing the cut loss.
#[derive(Debug, Error)]
pub enum CutLossError {
    /// Logits and mask that do not describe the same tokens.
    #[error(
        "cut loss: logits {logits:?} must be (batch, heads, T, T) and the mask (batch, T, 1), found mask {mask:?}"
    )]
    Shape {
        /// The logits' shape.
        logits: Vec<usize>,
        /// The mask's shape.
        mask: Vec<usize>,
    },
    /// A backend operation failed.
    #[error(transparent)]
    Ops(#[from] idlevit_ops::OpsError),
    /// A tensor could not be built.
    #[error(transparent)]
    Tensor(#[from] idlevit_tensor::TensorError),
}

/// The `D` (crossing: `|m_i - m_j|`, column 0 zeroed) and `S` (inside: `m_i m_j`) pair weights
/// of a 0/1 token mask `(batch, T)`, each `(batch, T, T)`.
fn pair_weights(
    mask: &[f32],
    batch: usize,
    tokens: usize,
) -> Result<(Tensor, Tensor), CutLossError> {
    let mut crossing = vec![0.0f32; batch * tokens * tokens];
    let mut inside = vec![0.0f32; batch * tokens * tokens];
    for b in 0..batch {
        let m = &mask[b * tokens..(b + 1) * tokens];
        for i in 0..tokens {
            let row = (b * tokens + i) * tokens;
            for j in 0..tokens {
                // Attention to CLS (column 0) never counts as crossing: CLS is always computed.
                crossing[row + j] = if j == 0 { 0.0 } else { (m[i] - m[j]).abs() };
                inside[row + j] = m[i] * m[j];
            }
        }
    }
    let shape = vec![batch, tokens, tokens];
    Ok((
        Tensor::from_vec(shape.clone(), crossing)?,
        Tensor::from_vec(shape, inside)?,
    ))
}

/// The cut loss of one idle layer from its pre-mask attention logits `(batch, heads, T, T)`
/// and 0/1 token mask `(batch, T, 1)`: a rank-0 value (0 for [`CutLoss::None`]).
pub fn cut_loss<B: Backend>(
    bk: &B,
    logits: &B::Value,
    token_mask: &Tensor,
    variant: CutLoss,
) -> Result<B::Value, CutLossError> {
    let shape = bk.shape(logits).to_vec();
    let &[batch, heads, tokens, keys] = shape.as_slice() else {
        return Err(CutLossError::Shape {
            logits: shape,
            mask: token_mask.shape().to_vec(),
        });
    };
    if keys != tokens || heads == 0 || token_mask.shape() != [batch, tokens, 1] {
        return Err(CutLossError::Shape {
            logits: shape,
            mask: token_mask.shape().to_vec(),
        });
    }
    if variant == CutLoss::None {
        return Ok(bk.constant(Tensor::scalar(0.0)));
    }
    let mask = token_mask.contiguous();
    let mask = &mask.contiguous_values();
    let (crossing, inside) = pair_weights(mask, batch, tokens)?;
    let mean_logits = bk.scale(&bk.sum_axis(logits, 1, false)?, 1.0 / heads as f32)?;
    let weights = bk.softmax(&mean_logits)?;
    let per_token = 1.0 / (batch * tokens) as f32;
    let mut terms = Vec::new();
    if matches!(variant, CutLoss::Both | CutLoss::Inter) {
        let crossed = bk.sum_axis(&bk.mul(&weights, &bk.constant(crossing))?, 2, false)?;
        terms.push(bk.scale(&bk.sum_all(&bk.square(&crossed)?)?, per_token)?);
    }
    if matches!(variant, CutLoss::Both | CutLoss::Intra) {
        let kept = bk.sum_axis(&bk.mul(&weights, &bk.constant(inside))?, 2, false)?;
        let target = bk.constant(Tensor::from_vec(vec![batch, tokens], mask.to_vec())?);
        terms.push(bk.scale(
            &bk.sum_all(&bk.square(&bk.sub(&kept, &target)?)?)?,
            per_token,
        )?);
    }
    let mut total = terms.remove(0);
    for term in terms {
        total = bk.add(&total, &term)?;
    }
    Ok(total)
}
