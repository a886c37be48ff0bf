//! A token policy defined here, outside the selector, runs on a model's blocks through
//! `run_layers_with`: a new policy is one `SelectionPolicy` impl, nothing else.

mod common;

use common::images;
use idlevit_nn::{Backend, Eager, Tensor};
use idlevit_selector::{
    LayerKeep, PolicyStep, Schedule, SelectionPolicy, TokenBlock, TokenSelection, keep_count,
    run_layers_with,
};
use idlevit_zoo::{DeiT, DeiTConfig};

/// A positional baseline: each selecting layer computes the class token and the first `K`
/// image tokens in raster order, whatever the attention says; the others idle.
struct LeadingTokens;

fn leading_rows(batch: usize, keep: usize) -> Vec<Vec<usize>> {
    vec![(0..=keep).collect(); batch]
}

impl SelectionPolicy for LeadingTokens {
    fn gathered<B: Backend, T: TokenBlock<B>>(
        &self,
        bk: &B,
        block: &T,
        x: B::Value,
        at: LayerKeep,
    ) -> Result<PolicyStep<B::Value>, T::Error> {
        let keep = keep_count(at.image_tokens, at.ratio)?;
        let batch = bk.shape(&x)[0];
        // Descending scores 1 > 1/2 > ... pick the leading tokens in order.
        let scores: Vec<f32> = (0..batch)
            .flat_map(|_| (0..at.image_tokens).map(|j| 1.0 / (j + 1) as f32))
            .collect();
        let scores = Tensor::from_vec(vec![batch, at.image_tokens], scores)
            .map_err(idlevit_selector::SelectorError::from)?;
        let selection = TokenSelection::from_scores(&scores, keep)?;
        let rows = block.forward_rows(bk, &x, selection.indices())?;
        Ok(PolicyStep {
            output: bk.scatter_rows(&x, selection.indices(), &rows)?,
            selection: Some(selection),
        })
    }
}

#[test]
fn a_policy_defined_in_a_test_runs_on_a_model_stack() {
    let config = DeiTConfig {
        img_size: 16,
        patch_size: 4,
        embed_dim: 24,
        depth: 3,
        num_heads: 2,
        mlp_ratio: 2.0,
        num_classes: 5,
        qkv_bias: true,
        idle_layers: None,
        keep_ratios: None,
    };
    let model = DeiT::random(&config, 11).unwrap();
    let x = model.embed(&Eager, &images(2, 16, 3)).unwrap();
    let schedule = Schedule::new(vec![1, 2], vec![0.5, 0.25]).unwrap();
    let blocks = model.blocks();
    let (out, selections) =
        run_layers_with(&Eager, blocks, &schedule, &LeadingTokens, 0, x.clone()).unwrap();

    // The same stack by hand: layer 0 dense, layers 1 and 2 on the leading 8 and 4 tokens.
    let dense = |b: usize, x: Tensor| TokenBlock::forward(&blocks[b], &Eager, x).unwrap();
    let idle = |b: usize, x: Tensor, keep: usize| {
        let rows = leading_rows(2, keep);
        let y = dense(b, x.gather_rows(&rows).unwrap());
        Eager.scatter_rows(&x, &rows, &y).unwrap()
    };
    let expected = idle(2, idle(1, dense(0, x.clone()), 8), 4);
    assert_eq!(out.to_vec(), expected.to_vec());

    assert_eq!(selections.len(), 2);
    assert_eq!(selections[0].layer, 1);
    assert_eq!(selections[0].tokens, leading_rows(2, 8));
    assert_eq!(selections[1].tokens, leading_rows(2, 4));
    // Idle tokens kept their values through layer 2: token 16 was never selected.
    let row = |t: &Tensor| t.gather_rows(&[vec![16], vec![16]]).unwrap().to_vec();
    assert_eq!(row(&out), row(&dense(0, x)));
}
