//! Properties of the idle layer forms on random models (the masked form's equivalence
//! with the gathered one, `docs/algorithm.md`).

mod common;

use common::images;
use idlevit_nn::{Eager, QkvPart};
use idlevit_selector::{TokenBlock, cls_scores, idle_gathered, keep_count};
use idlevit_tensor::Tensor;
use idlevit_zoo::{
    DeiT, DeiTConfig, LvVitConfig, PolicyKind, Schedule, TokenPolicy, ZooConfig, ZooModel,
};
use proptest::prelude::*;

/// A random small model shape (DeiT or LV-ViT) and an idle schedule for it.
#[derive(Clone, Debug)]
struct Case {
    config: ZooConfig,
    batch: usize,
    ratios: Vec<Option<f64>>,
    seed: u64,
}

/// Ratios for `depth` layers, each idle (keeping at least one of `tokens`) or dense.
fn ratios(depth: usize, tokens: usize) -> impl Strategy<Value = Vec<Option<f64>>> {
    let min_ratio = 1.0 / tokens as f64;
    proptest::collection::vec(proptest::option::of(min_ratio..=1.0f64), depth)
}

fn case() -> impl Strategy<Value = Case> {
    with_schedule(prop_oneof![deit_config(), lvvit_config()])
}

fn deit_case() -> impl Strategy<Value = Case> {
    with_schedule(deit_config())
}

/// A batch, a seed and a random idle schedule for each config.
fn with_schedule(configs: impl Strategy<Value = ZooConfig>) -> impl Strategy<Value = Case> {
    (configs, 1usize..4, any::<u64>())
        .prop_flat_map(|(config, batch, seed)| {
            let ratios = ratios(config.depth(), config.num_patches());
            (Just(config), Just(batch), ratios, Just(seed))
        })
        .prop_map(|(config, batch, ratios, seed)| Case {
            config,
            batch,
            ratios,
            seed,
        })
}

/// Depth 1-3, 1-3 heads of width 4-6, a grid of 2-4 patches a side, MLP ratio 1-3. Widths
/// stay at 4 or more: layer norm over 2 or 3 features is nearly discontinuous (over 2 it
/// outputs only +-1), so rounding alone would part the forms being compared.
fn deit_config() -> impl Strategy<Value = ZooConfig> {
    (
        1usize..4,
        1usize..4,
        4usize..7,
        2usize..5,
        2usize..4,
        1usize..4,
        any::<bool>(),
    )
        .prop_map(|(depth, heads, head_dim, grid, patch, mlp, qkv_bias)| {
            ZooConfig::DeiT(DeiTConfig {
                img_size: grid * patch,
                patch_size: patch,
                embed_dim: heads * head_dim,
                depth,
                num_heads: heads,
                mlp_ratio: mlp as f64,
                num_classes: 3,
                qkv_bias,
                idle_layers: None,
                keep_ratios: None,
            })
        })
}

/// As [`deit_config`], with a stem of 1-3 channels and skip_lam 1-3.
fn lvvit_config() -> impl Strategy<Value = ZooConfig> {
    (
        1usize..4,
        1usize..4,
        4usize..6,
        2usize..5,
        1usize..3,
        1usize..4,
        1usize..4,
        1usize..4,
    )
        .prop_map(
            |(depth, heads, head_dim, grid, half_patch, stem, mlp, lam)| {
                ZooConfig::LvVit(LvVitConfig {
                    img_size: grid * 2 * half_patch,
                    patch_size: 2 * half_patch,
                    stem_channels: stem,
                    embed_dim: heads * head_dim,
                    depth,
                    num_heads: heads,
                    mlp_ratio: mlp as f64,
                    num_classes: 3,
                    skip_lam: lam as f32,
                    idle_layers: None,
                    keep_ratios: None,
                })
            },
        )
}

fn schedule(case: &Case) -> Schedule {
    let (layers, ratios): (Vec<usize>, Vec<f64>) = case
        .ratios
        .iter()
        .enumerate()
        .filter_map(|(l, r)| r.map(|r| (l, r)))
        .unzip();
    Schedule::new(layers, ratios).unwrap()
}

fn relative_diff(a: &Tensor, b: &Tensor) -> f32 {
    let scale = b.view().iter().fold(1.0f32, |m, v| m.max(v.abs()));
    a.max_abs_diff(b).unwrap() / scale
}

/// Relative gap between the K-th and (K+1)-th best score, the margin a selection has
/// against float rounding.
fn boundary_gap(scores: &[f32], keep: usize) -> f32 {
    let mut sorted = scores.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let scale = sorted.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    sorted
        .get(keep)
        .map_or(f32::INFINITY, |next| (sorted[keep - 1] - next) / scale)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The gathered (inference) and masked (training) forms select the same tokens and give
    /// the same logits, unless a selection sits on a near-tie that rounding may flip.
    #[test]
    fn gathered_and_masked_forms_agree(case in case()) {
        let model = ZooModel::random(&case.config, case.seed).unwrap();
        let model = model.with_policy(TokenPolicy::select(PolicyKind::Idle, schedule(&case))).unwrap();
        let x = images(case.batch, case.config.img_size(), case.seed);
        let gathered = model.forward_traced(&Eager, &x).unwrap();
        let masked = model.forward_masked(&Eager, &x).unwrap();
        prop_assert_eq!(gathered.selections.len(), masked.layers.len());
        let mut same = true;
        for (g, (layer, m)) in gathered.selections.iter().zip(&masked.layers) {
            prop_assert_eq!(g.layer, *layer);
            // Compare the selected sets: the order inside a set only follows score order, and
            // attention does not depend on it.
            let as_sets = |rows: &[Vec<usize>]| -> Vec<Vec<usize>> {
                rows.iter().map(|r| { let mut r = r.clone(); r.sort_unstable(); r }).collect()
            };
            if as_sets(&g.tokens) != as_sets(m.selection.indices()) {
                same = false;
                // Only a near-tie may differ: find it in the masked form's own scores.
                let scores = cls_scores(&m.logits).unwrap();
                let keep = m.selection.selected() - 1;
                let width = scores.shape()[1];
                let min_gap = scores.to_vec().chunks(width).map(|row| boundary_gap(row, keep)).fold(f32::INFINITY, f32::min);
                prop_assert!(min_gap < 1e-4, "selections differ at layer {} with score gap {}", layer, min_gap);
                // Once a near-tie flipped one token, later layers see different inputs and
                // may legitimately choose differently: compare no further.
                break;
            }
        }
        if same {
            let diff = relative_diff(&gathered.logits, &masked.logits);
            prop_assert!(diff <= 1e-5, "logits differ by {} relative", diff);
        }
    }

    /// Keeping every token is the dense model.
    #[test]
    fn keep_ratio_one_is_dense(case in case()) {
        let dense = ZooModel::random(&case.config, case.seed).unwrap();
        let depth = case.config.depth();
        let all = Schedule::new((0..depth).collect(), vec![1.0; depth]).unwrap();
        let idle = dense.clone().with_policy(TokenPolicy::select(PolicyKind::Idle, all)).unwrap();
        let x = images(case.batch, case.config.img_size(), case.seed);
        let diff = relative_diff(&idle.forward(&Eager, &x).unwrap(), &dense.forward(&Eager, &x).unwrap());
        // The idle form keeps every token but reorders them by score, so attention sums its
        // keys in another order; through layer norms over 4 features that rounding reaches
        // 1.4e-5 (a saved case). A wrong token or a lost residual is off by far more.
        prop_assert!(diff <= 5e-5, "keep ratio 1 differs from dense by {} relative", diff);
    }

    /// Rows an idle layer does not select leave it bit for bit as they entered.
    #[test]
    fn idle_rows_pass_through_unchanged(case in deit_case(), ratio in 0.01f64..=1.0) {
        let ZooConfig::DeiT(config) = &case.config else { unreachable!("a DeiT case") };
        let model = DeiT::random(config, case.seed).unwrap();
        let x = model.embed(&Eager, &images(case.batch, case.config.img_size(), case.seed)).unwrap();
        let tokens = config.num_patches();
        let keep = keep_count(tokens, ratio).unwrap_or(1);
        let (y, selection) = idle_gathered(&Eager, &model.blocks()[0], x.clone(), keep).unwrap();
        prop_assert_eq!(selection.selected(), keep + 1);
        let complement = selection.complement();
        prop_assert_eq!(complement[0].len(), tokens - keep);
        prop_assert_eq!(x.gather_rows(&complement).unwrap().to_vec(), y.gather_rows(&complement).unwrap().to_vec());
        // The selected rows did change (the layer is not the identity).
        prop_assert_ne!(x.gather_rows(selection.indices()).unwrap().to_vec(), y.gather_rows(selection.indices()).unwrap().to_vec());
    }

    /// The key-free scores equal the definition: the mean over heads of the CLS query's scaled
    /// logits against every token's key (with and without a qkv bias).
    #[test]
    fn key_free_scores_equal_the_logit_means(case in deit_case(), qkv_bias in any::<bool>()) {
        let ZooConfig::DeiT(config) = &case.config else { unreachable!("a DeiT case") };
        let config = DeiTConfig { qkv_bias, ..config.clone() };
        let model = DeiT::random(&config, case.seed).unwrap();
        let x = model.embed(&Eager, &images(case.batch, config.img_size, case.seed)).unwrap();
        let block = &model.blocks()[0];
        let attn = block.attn();
        let h = block.norm1().forward(&Eager, &x).unwrap();
        let q_cls = attn.project(&Eager, &h.slice_axis(1, 0, 1).unwrap(), QkvPart::Query).unwrap();
        let keys = attn.project(&Eager, &h, QkvPart::Key).unwrap();
        let split = |t: &Tensor| attn.split_heads(&Eager, t).unwrap();
        let logits = attn.logits(&Eager, &split(&q_cls), &split(&keys)).unwrap();
        let expected = cls_scores(&logits).unwrap();
        // From the input, with layer norm folded into the dot products.
        let from_x = TokenBlock::token_scores(block, &Eager, &x).unwrap();
        let tokens = from_x.shape()[1];
        let from_x = from_x.slice_axis(1, 1, tokens).unwrap().contiguous();
        let diff = relative_diff(&from_x, &expected);
        prop_assert!(diff <= 1e-5, "scores from the input differ by {} relative", diff);
    }
}
