//! Batched row gather and scatter on `(batch, rows, width)` tensors: the data movement of
//! token selection.

use crate::{Result, Tensor, TensorError};

impl Tensor {
    /// Checks a `(batch, rows, width)` tensor and returns its three sizes.
    fn rows_dims(&self, op: &'static str) -> Result<(usize, usize, usize)> {
        match *self.shape() {
            [b, n, c] => Ok((b, n, c)),
            _ => Err(TensorError::Rank {
                op,
                expected: 3,
                found: self.shape().to_vec(),
            }),
        }
    }

    /// Picks rows per batch item: `out[b, i] = self[b, indices[b][i]]`.
    ///
    /// Every batch item must pick the same number of rows.
    pub fn gather_rows(&self, indices: &[Vec<usize>]) -> Result<Tensor> {
        let (batch, rows, width) = self.rows_dims("gather_rows")?;
        let picked = check_indices(indices, batch, rows)?;
        let src = self.contiguous();
        let src = src.as_slice().unwrap_or_default();
        let mut out = Vec::with_capacity(batch * picked * width);
        for (b, item) in indices.iter().enumerate() {
            for &r in item {
                let start = (b * rows + r) * width;
                out.extend_from_slice(&src[start..start + width]);
            }
        }
        Tensor::from_vec(vec![batch, picked, width], out)
    }

    /// Writes rows back per batch item: `self[b, indices[b][i]] = src[b, i]`; other rows keep
    /// their values.
    pub fn scatter_rows(&mut self, indices: &[Vec<usize>], src: &Tensor) -> Result<()> {
        let (batch, rows, width) = self.rows_dims("scatter_rows")?;
        let picked = check_indices(indices, batch, rows)?;
        if src.shape() != [batch, picked, width] {
            return Err(TensorError::ShapeMismatch {
                op: "scatter_rows",
                left: vec![batch, picked, width],
                right: src.shape().to_vec(),
            });
        }
        let src = src.contiguous();
        let src = src.as_slice().unwrap_or_default();
        let dst = self.as_mut_slice();
        for (b, item) in indices.iter().enumerate() {
            for (i, &r) in item.iter().enumerate() {
                let to = (b * rows + r) * width;
                let from = (b * picked + i) * width;
                dst[to..to + width].copy_from_slice(&src[from..from + width]);
            }
        }
        Ok(())
    }
}

/// Checks that there is one index list per batch item, all of one length, all in range.
fn check_indices(indices: &[Vec<usize>], batch: usize, rows: usize) -> Result<usize> {
    if indices.len() != batch {
        return Err(TensorError::ShapeMismatch {
            op: "row indices per batch item",
            left: vec![batch],
            right: vec![indices.len()],
        });
    }
    let picked = indices.first().map_or(0, Vec::len);
    for item in indices {
        if item.len() != picked {
            return Err(TensorError::ShapeMismatch {
                op: "row index lists of one length",
                left: vec![picked],
                right: vec![item.len()],
            });
        }
        if let Some(&bad) = item.iter().find(|&&r| r >= rows) {
            return Err(TensorError::OutOfRange {
                what: "row index",
                index: bad,
                size: rows,
            });
        }
    }
    Ok(picked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn random_tensor(shape: [usize; 3], seed: u64) -> Tensor {
        let n = shape.iter().product::<usize>();
        let mut state = seed | 1;
        let data = (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % 1000) as f32 / 100.0
            })
            .collect();
        Tensor::from_vec(shape.to_vec(), data).unwrap()
    }

    #[test]
    fn rejects_bad_indices() {
        let mut x = Tensor::zeros(&[2, 4, 3]).unwrap();
        assert!(x.gather_rows(&[vec![0]]).is_err());
        assert!(x.gather_rows(&[vec![0], vec![4]]).is_err());
        assert!(x.gather_rows(&[vec![0], vec![1, 2]]).is_err());
        let src = Tensor::zeros(&[2, 2, 3]).unwrap();
        assert!(x.scatter_rows(&[vec![0], vec![1]], &src).is_err());
        assert!(Tensor::zeros(&[4, 3]).unwrap().gather_rows(&[]).is_err());
    }

    proptest! {
        /// Scattering gathered rows back is the identity, and untouched rows never change.
        #[test]
        fn scatter_of_gather_is_identity(
            batch in 1usize..4, rows in 1usize..9, width in 1usize..7, seed in any::<u64>(),
            picks in proptest::collection::vec(proptest::sample::subsequence((0..8usize).collect::<Vec<_>>(), 0..8), 1..4),
        ) {
            let x = random_tensor([batch, rows, width], seed);
            let picked: Vec<usize> = picks[0].iter().copied().filter(|&r| r < rows).collect();
            let indices = vec![picked.clone(); batch];
            let g = x.gather_rows(&indices).unwrap();
            prop_assert_eq!(g.shape(), &[batch, picked.len(), width]);
            let mut y = Tensor::zeros(&[batch, rows, width]).unwrap();
            y.scatter_rows(&indices, &g).unwrap();
            for b in 0..batch {
                for r in 0..rows {
                    for c in 0..width {
                        let expected = if picked.contains(&r) { x.view()[[b, r, c]] } else { 0.0 };
                        prop_assert_eq!(y.view()[[b, r, c]], expected);
                    }
                }
            }
        }
    }
}
