//! Times each phase of a DeiT-S idle layer (scoring, top-k, gather, the block on the
//! selected rows, scatter) on 1 and 2 threads, and projects each phase's thread scaling to
//! 16 threads with Amdahl's law from the measured serial fraction.
//!
//! `cargo run --release -p idlevit-benches --example idle_phases [batch ...]` (default 1 and 32).
//! Medians of repeated runs; figures are ratios within one run, never absolute claims.

use std::time::Instant;

use idlevit_nn::{Backend, Eager, Tensor};
use idlevit_selector::{TokenBlock, TokenSelection, keep_count};
use idlevit_zoo::{DeiT, DeiTConfig};

/// Median seconds of `runs` calls of `f`.
fn median(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[runs / 2]
}

/// A copy of `x` that shares no storage, so writing into it copies nothing more.
fn own_copy(x: &Tensor) -> Tensor {
    Tensor::from_vec(x.shape().to_vec(), x.to_vec()).expect("copy")
}

/// Per phase, its median seconds.
fn phases(model: &DeiT, x: &Tensor, keep: usize, runs: usize) -> Vec<(&'static str, f64)> {
    let block = &model.blocks()[4];
    let bk = Eager;
    let scores = TokenBlock::token_scores(block, &bk, x).expect("scores");
    let tokens = scores.shape()[1];
    let image = scores
        .slice_axis(1, 1, tokens)
        .expect("image scores")
        .contiguous();
    let selection = TokenSelection::from_scores(&image, keep).expect("selection");
    let rows = selection.indices();
    let gathered = bk.gather_rows(x, rows).expect("gather");
    let computed = TokenBlock::forward(block, &bk, gathered.clone()).expect("block");
    vec![
        (
            "score",
            median(runs, || {
                TokenBlock::token_scores(block, &bk, x).expect("scores");
            }),
        ),
        (
            "top-k",
            median(runs, || {
                TokenSelection::from_scores(&image, keep).expect("selection");
            }),
        ),
        (
            "gather",
            median(runs, || {
                bk.gather_rows(x, rows).expect("gather");
            }),
        ),
        (
            "block on selected rows",
            median(runs, || {
                TokenBlock::forward(block, &bk, gathered.clone()).expect("block");
            }),
        ),
        (
            "scatter",
            median(runs, || {
                // A fresh copy each time, as the layer scatters into its own input.
                let target = own_copy(x);
                bk.scatter_rows_into(target, rows, &computed)
                    .expect("scatter");
            }),
        ),
        (
            "copy of the input (scatter's setup)",
            median(runs, || {
                let _ = own_copy(x);
            }),
        ),
    ]
}

fn main() {
    let batches: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("batch sizes are whole numbers"))
        .collect();
    let batches = if batches.is_empty() {
        vec![1, 32]
    } else {
        batches
    };
    let config = DeiTConfig::small();
    let model = DeiT::random(&config, 0).expect("model");
    let keep = keep_count(config.num_patches(), 0.7).expect("keep");
    for batch in batches {
        let images = Tensor::full(&[batch, 3, 224, 224], 0.1).expect("images");
        let x = model.embed(&Eager, &images).expect("embed");
        let runs = if batch == 1 { 201 } else { 21 };
        let on = |threads| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool");
            pool.install(|| phases(&model, &x, keep, runs))
        };
        let (one, two) = (on(1), on(2));
        let total1: f64 = one.iter().take(5).map(|p| p.1).sum();
        println!("\nDeiT-S idle layer 4 (keep {keep} of 196), batch {batch}");
        println!(
            "| phase | share of the layer, 1 thread | 1 thread / 2 threads | serial fraction | projected 16-thread speed-up |"
        );
        println!("|---|---|---|---|---|");
        for ((name, t1), (_, t2)) in one.iter().zip(&two) {
            let ratio = t1 / t2;
            // t2 = t1 (f + (1 - f) / 2)  =>  f = 2 t2 / t1 - 1, clamped to [0, 1].
            let serial = (2.0 * t2 / t1 - 1.0).clamp(0.0, 1.0);
            let speedup16 = 1.0 / (serial + (1.0 - serial) / 16.0);
            println!(
                "| {name} | {:.1}% | {ratio:.2} | {serial:.2} | {speedup16:.1} |",
                100.0 * t1 / total1
            );
        }
    }
}
