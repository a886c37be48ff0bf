//! Batched row gather and scatter on `(batch, rows, width)` tensors: the data movement of
//! token selection.

use rayon::prelude::*;

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
    /// Every batch item must pick the same number of rows. Large copies split across
    /// rayon's current pool, also inside one batch item.
    pub fn gather_rows(&self, indices: &[Vec<usize>]) -> Result<Tensor> {
        let (batch, rows, width) = self.rows_dims("gather_rows")?;
        let picked = check_indices(indices, batch, rows)?;
        let src = self.contiguous_values();
        let mut out = vec![0.0; batch * picked * width];
        let copy = |first: usize, block: &mut [f32]| {
            for (k, row) in block.chunks_exact_mut(width).enumerate() {
                let (b, i) = ((first + k) / picked, (first + k) % picked);
                let start = (b * rows + indices[b][i]) * width;
                row.copy_from_slice(&src[start..start + width]);
            }
        };
        for_row_blocks(&mut out, width, copy);
        Tensor::from_vec(vec![batch, picked, width], out)
    }

    /// Writes rows back per batch item: `self[b, indices[b][i]] = src[b, i]`; other rows keep
    /// their values, and when an index repeats the last row written wins. Large copies split
    /// across rayon's current pool, each task owning a range of destination rows.
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
        let src = src.contiguous_values();
        // Destination row -> the source row written there last, if any.
        let mut source = vec![None; batch * rows];
        for (b, item) in indices.iter().enumerate() {
            for (i, &r) in item.iter().enumerate() {
                source[b * rows + r] = Some(b * picked + i);
            }
        }
        let copy = |first: usize, block: &mut [f32]| {
            for (k, row) in block.chunks_exact_mut(width).enumerate() {
                if let Some(from) = source[first + k] {
                    row.copy_from_slice(&src[from * width..(from + 1) * width]);
                }
            }
        };
        for_row_blocks(self.as_mut_slice(), width, copy);
        Ok(())
    }
}

/// Calls `copy(first_row, block)` on blocks of whole rows of `out` (`width` values each):
/// split across rayon's current pool when there are at least 2^14 values on four threads or
/// more (a token copy of a small model at batch 1 already pays for a hand-off on a many-core
/// CPU) or 2^17 on fewer, else in one call.
fn for_row_blocks(out: &mut [f32], width: usize, copy: impl Fn(usize, &mut [f32]) + Sync) {
    let rows = out.len().checked_div(width).unwrap_or(0);
    let threads = rayon::current_num_threads();
    // On two or three threads a batch-1 copy finishes before a hand-off pays.
    let small = out.len() < 1 << 14 || (threads < 4 && out.len() < 1 << 17);
    if small || threads < 2 || width == 0 {
        copy(0, out);
        return;
    }
    let block = rows
        .div_ceil(2 * threads)
        .max((1usize << 12).div_ceil(width));
    out.par_chunks_mut(block * width)
        .enumerate()
        .for_each(|(i, chunk)| copy(i * block, chunk));
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

    /// Copies big enough to split across threads (a DeiT layer's tokens, two images, an index
    /// repeated) give what one thread gives, and the last write of a repeated index wins.
    #[test]
    fn split_copies_match_one_thread() {
        let x = random_tensor([2, 197, 384], 3);
        let picks: Vec<usize> = (0..197).rev().step_by(2).chain([5, 5]).collect();
        let indices = vec![
            picks.clone(),
            picks.iter().map(|&r| (r * 7) % 197).collect(),
        ];
        let rows = random_tensor([2, picks.len(), 384], 4);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let mut y = x.clone();
                y.scatter_rows(&indices, &rows).unwrap();
                (x.gather_rows(&indices).unwrap().to_vec(), y.to_vec())
            })
        };
        let (gathered, scattered) = run(1);
        assert_eq!(run(5), (gathered.clone(), scattered.clone()));
        // Row 5 of item 0 holds the last of its two writes.
        let last = picks.len() - 1;
        assert_eq!(
            scattered[5 * 384..6 * 384],
            rows.to_vec()[last * 384..(last + 1) * 384]
        );
        assert_eq!(gathered[..384], x.to_vec()[196 * 384..197 * 384]);
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
