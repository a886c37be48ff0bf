//! Finite-difference checks of whole blocks: every parameter's gradient through a pre-norm
//! attention block with a key mask, and through an idle-style block that computes selected
//! rows only and scatters them back, then classifies the CLS row.

mod common;

use common::{Ops, Rng};
use idlevit_autodiff::Tensor;
use proptest::prelude::*;

/// Sizes of a tiny transformer block.
#[derive(Clone, Copy, Debug)]
struct Dims {
    batch: usize,
    tokens: usize,
    heads: usize,
    head_dim: usize,
    hidden: usize,
}

impl Dims {
    fn width(&self) -> usize {
        self.heads * self.head_dim
    }
}

/// Input tokens then the block's parameters: norm1 (gamma, beta), qkv (w, b), proj (w, b),
/// norm2 (gamma, beta), fc1 (w, b), fc2 (w, b).
fn block_inputs(rng: &mut Rng, d: Dims) -> Vec<Tensor> {
    let (c, h) = (d.width(), d.hidden);
    let gamma = |rng: &mut Rng| rng.tensor(&[c], 0.2).map(|v| v + 1.0);
    vec![
        rng.tensor(&[d.batch, d.tokens, c], 1.0),
        gamma(rng),
        rng.tensor(&[c], 0.2),
        rng.tensor(&[3 * c, c], 0.6),
        rng.tensor(&[3 * c], 0.2),
        rng.tensor(&[c, c], 0.6),
        rng.tensor(&[c], 0.2),
        gamma(rng),
        rng.tensor(&[c], 0.2),
        rng.tensor(&[h, c], 0.6),
        rng.tensor(&[h], 0.2),
        rng.tensor(&[c, h], 0.6),
        rng.tensor(&[c], 0.2),
    ]
}

/// `x + attn(norm1(x))`, then `+ mlp(norm2(.))`, with an additive key mask `(batch, 1, 1,
/// tokens)`, on `x` of `d.tokens` tokens, as the layers of the nn crate compute it (fused qkv split into heads by a
/// reshape, a permute and selects; keys transposed by a permute).
fn block<O: Ops>(o: &O, p: &[O::V], x: &O::V, mask: &O::V, d: Dims) -> O::V {
    let h = o.layer_norm(x, &p[1], &p[2], 1e-6);
    let qkv = o.linear(&h, &p[3], Some(&p[4]));
    let n = d.tokens;
    let qkv = o.reshape(&qkv, &[d.batch, n, 3, d.heads, d.head_dim]);
    let qkv = o.permute(&qkv, &[2, 0, 3, 1, 4]);
    let (q, k, v) = (
        o.select(&qkv, 0, 0),
        o.select(&qkv, 0, 1),
        o.select(&qkv, 0, 2),
    );
    let q = o.scale(&q, (d.head_dim as f32).powf(-0.5));
    let logits = o.matmul(&q, &o.permute(&k, &[0, 1, 3, 2]));
    let weights = o.softmax(&o.add(&logits, mask));
    let mixed = o.permute(&o.matmul(&weights, &v), &[0, 2, 1, 3]);
    let mixed = o.reshape(&mixed, &[d.batch, n, d.width()]);
    let y = o.add(x, &o.linear(&mixed, &p[5], Some(&p[6])));
    let hidden = o.gelu(&o.linear(&o.layer_norm(&y, &p[7], &p[8], 1e-6), &p[9], Some(&p[10])));
    o.add(&y, &o.linear(&hidden, &p[11], Some(&p[12])))
}

/// A key mask keeping key 0 and a random subset of the others.
fn key_mask(rng: &mut Rng, batch: usize, tokens: usize) -> Tensor {
    let values = (0..batch * tokens)
        .map(|i| {
            if i % tokens == 0 || rng.below(3) > 0 {
                0.0
            } else {
                -1e5
            }
        })
        .collect();
    Tensor::from_vec(vec![batch, 1, 1, tokens], values).unwrap()
}

/// Shapes of the composite checks. A layer norm over fewer than 4 features is nearly
/// singular, and its f32 gradient cancels too much to compare with an f64 reference at 1e-4.
fn dims() -> impl Strategy<Value = Dims> {
    (1usize..3, 2usize..6, 1usize..3, 2usize..5, 1usize..7)
        .prop_filter("width of at least 4", |&(_, _, heads, head_dim, _)| {
            heads * head_dim >= 4
        })
        .prop_map(|(batch, tokens, heads, head_dim, hidden)| Dims {
            batch,
            tokens,
            heads,
            head_dim,
            hidden,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn attention_block(d in dims(), seed in any::<u64>()) {
        let mut rng = Rng(seed);
        let mut inputs = block_inputs(&mut rng, d);
        inputs.push(key_mask(&mut rng, d.batch, d.tokens));
        let mut leaves = vec![true; inputs.len()];
        leaves[13] = false;
        check!("attention block", inputs, leaves, seed, |o, x| block(o, x, &x[0], &x[13], d))?;
    }

    /// The idle layer's inference form and the classifier on top: gather the kept rows,
    /// run the block on them, scatter them back, then `log_softmax(head(norm(x[:, 0])))`.
    #[test]
    fn idle_block_and_head(d in dims(), keep_seed in any::<u64>(), classes in 1usize..5, seed in any::<u64>()) {
        let mut rng = Rng(seed);
        let mut inputs = block_inputs(&mut rng, d);
        let c = d.width();
        inputs.push(rng.tensor(&[classes, c], 0.6));
        inputs.push(rng.tensor(&[classes], 0.2));
        // CLS first, then a random subset of the other rows.
        let mut pick = Rng(keep_seed);
        let rows: Vec<Vec<usize>> = (0..d.batch)
            .map(|_| std::iter::once(0).chain((1..d.tokens).filter(|_| pick.below(2) == 0)).collect())
            .collect();
        let kept = rows.iter().map(Vec::len).min().unwrap_or(1);
        let rows: Vec<Vec<usize>> = rows.into_iter().map(|r| r[..kept].to_vec()).collect();
        let sub = Dims { tokens: kept, ..d };
        let no_mask = Tensor::zeros(&[d.batch, 1, 1, kept]).unwrap();
        inputs.push(no_mask);
        let mut leaves = vec![true; inputs.len()];
        leaves[15] = false;
        check!("idle block and head", inputs, leaves, seed, |o, x| {
            let selected = o.gather_rows(&x[0], &rows);
            let updated = block(o, x, &selected, &x[15], sub);
            let tokens = o.scatter_rows(&x[0], &rows, &updated);
            let cls = o.select(&tokens, 1, 0);
            o.log_softmax(&o.linear(&cls, &x[13], Some(&x[14])))
        })?;
    }
}
