//! Stochastic depth (drop path): the identity at inference and on an unseeded tape; on a
//! seeded training tape it drops whole samples' residual branches at the set rate, replays
//! exactly for the same seed, and backpropagates through the kept ones.

use idlevit_autodiff::Tape;
use idlevit_nn::{Backend, Eager, Tensor};
use idlevit_zoo::{DeiT, DeiTConfig, PolicyKind, Schedule, TokenPolicy};

mod common;
use common::{check_directional_derivatives, values};

fn config() -> DeiTConfig {
    DeiTConfig {
        img_size: 16,
        patch_size: 4,
        embed_dim: 16,
        depth: 3,
        num_heads: 2,
        mlp_ratio: 2.0,
        num_classes: 5,
        ..DeiTConfig::tiny()
    }
}

fn idle_model(drop_path: f32) -> DeiT {
    DeiT::random(&config(), 3)
        .unwrap()
        .with_policy(TokenPolicy::select(
            PolicyKind::Idle,
            Schedule::new(vec![1, 2], vec![0.5, 0.5]).unwrap(),
        ))
        .unwrap()
        .with_drop_path(drop_path)
        .unwrap()
}

/// `sum(logits * c)` of the masked (training) form on `tape`.
fn masked_loss(model: &DeiT, tape: &Tape, images: &Tensor, c: &Tensor) -> idlevit_autodiff::Var {
    let out = model
        .forward_masked(tape, &tape.constant(images.clone()))
        .unwrap();
    tape.sum_all(&tape.mul(&out.logits, &tape.constant(c.clone())).unwrap())
        .unwrap()
}

#[test]
fn inference_and_unseeded_tapes_ignore_drop_path() {
    let images = values(1, &[3, 3, 16, 16]);
    let plain = idle_model(0.0);
    let dropping = idle_model(0.5);
    let expected = plain.forward(&Eager, &images).unwrap().to_vec();
    assert_eq!(
        dropping.forward(&Eager, &images).unwrap().to_vec(),
        expected
    );
    let tape = Tape::new();
    let recorded = dropping
        .forward(&tape, &tape.constant(images.clone()))
        .unwrap();
    // The tape runs the unfused layers: equal to the fused inference up to rounding.
    for (r, e) in recorded.value().to_vec().iter().zip(&expected) {
        assert!((r - e).abs() <= 1e-5 * (1.0 + e.abs()), "{r} against {e}");
    }
    assert!(
        DeiT::random(&config(), 3)
            .unwrap()
            .with_drop_path(1.0)
            .is_err()
    );
}

#[test]
fn seeded_tapes_drop_whole_samples_at_the_rate() {
    let branch = Tensor::full(&[4000, 2, 3], 1.0).unwrap();
    let sample = |seed| {
        let tape = Tape::with_seed(seed);
        let dropped = tape
            .drop_path(&tape.constant(branch.clone()), 0.25)
            .unwrap();
        dropped.value().to_vec()
    };
    let out = sample(9);
    let mut zeroed = 0;
    for item in out.chunks(6) {
        let first = item[0];
        assert!(
            item.iter().all(|&v| v == first),
            "a sample is kept or dropped whole"
        );
        assert!(first == 0.0 || (first - 1.0 / 0.75).abs() < 1e-6, "{first}");
        zeroed += usize::from(first == 0.0);
    }
    // Binomial(4000, 0.25): mean 1000, standard deviation 27.4; 5 sigma either side.
    assert!((863..=1137).contains(&zeroed), "{zeroed} of 4000 dropped");
    assert_eq!(sample(9), out, "the same seed replays the same masks");
    assert_ne!(sample(10), out);
}

/// The derivative along a random direction of every parameter, by central differences of
/// forwards on tapes with the same seed (so the same samples are dropped), against the
/// backward pass.
#[test]
fn gradients_through_dropped_paths_match_finite_differences() {
    let model = idle_model(0.6);
    let images = values(4, &[6, 3, 16, 16]);
    let c = values(5, &[6, 5]);
    let seed = 17;
    let tape = Tape::with_seed(seed);
    let loss = masked_loss(&model, &tape, &images, &c);
    let plain = Tape::new();
    let undropped = masked_loss(&model, &plain, &images, &c);
    assert_ne!(
        loss.value().to_vec(),
        undropped.value().to_vec(),
        "the seeded tape drops some branch"
    );
    let grads = tape.backward(&loss).unwrap().into_map();
    let replay = |m: &DeiT| {
        let loss = masked_loss(m, &Tape::with_seed(seed), &images, &c);
        f64::from(loss.value().to_vec()[0])
    };
    check_directional_derivatives(&model, &grads, replay, 1e-2, (5e-3, 1e-3));
}

/// LV-ViT and PVT-v2 (all blocks of all stages, by timm's linear rule) drop paths on a
/// seeded tape only, in the dense, idle and masked forms alike.
#[test]
fn lvvit_and_pvt_drop_paths_on_seeded_tapes_only() {
    let configs = [
        r#"{"family": "lvvit", "img_size": 16, "patch_size": 8, "stem_channels": 2,
            "embed_dim": 8, "depth": 3, "num_heads": 2, "mlp_ratio": 2.0, "num_classes": 3,
            "skip_lam": 2.0}"#,
        r#"{"family": "pvt_v2", "img_size": 32, "embed_dims": [4, 4, 8, 8],
            "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2], "sr_ratios": [2, 1, 1, 1],
            "mlp_ratios": [2.0, 2.0, 2.0, 2.0], "num_classes": 3}"#,
    ];
    for text in configs {
        let config = idlevit_zoo::ZooConfig::from_json(text).unwrap();
        let side = config.img_size();
        let images = values(7, &[4, 3, side, side]);
        let idle = TokenPolicy::select(
            PolicyKind::Idle,
            Schedule::new(vec![1, 2], vec![0.5, 0.5]).unwrap(),
        );
        let dense = idlevit_zoo::ZooModel::random(&config, 2).unwrap();
        assert!(dense.clone().with_drop_path(1.0).is_err());
        for model in [dense.clone(), dense.clone().with_policy(idle).unwrap()] {
            let dropping = model.clone().with_drop_path(0.5).unwrap();
            let expected = model.forward(&Eager, &images).unwrap().to_vec();
            let on = |tape: &Tape| {
                let logits = dropping.forward(tape, &tape.constant(images.clone()));
                logits.unwrap().value().to_vec()
            };
            assert_eq!(
                dropping.forward(&Eager, &images).unwrap().to_vec(),
                expected
            );
            // The unseeded tape runs the unfused layers: equal to inference up to rounding.
            for (r, e) in on(&Tape::new()).iter().zip(&expected) {
                assert!((r - e).abs() <= 1e-5 * (1.0 + e.abs()), "{r} against {e}");
            }
            let seeded = on(&Tape::with_seed(5));
            assert_ne!(seeded, expected, "{}: a seeded tape drops", config.family());
            assert_eq!(on(&Tape::with_seed(5)), seeded, "the same seed replays");
        }
        // The masked (training) form drops paths too.
        let masked = |model: &idlevit_zoo::ZooModel, tape: &Tape| match model {
            idlevit_zoo::ZooModel::Pvt(m) => {
                let out = m.forward_masked(tape, &tape.constant(images.clone()));
                out.unwrap().logits.value().to_vec()
            }
            _ => {
                let out = model.forward_masked(tape, &tape.constant(images.clone()));
                out.unwrap().logits.value().to_vec()
            }
        };
        let idle_model = dense
            .with_policy(TokenPolicy::select(
                PolicyKind::Idle,
                Schedule::new(vec![1, 2], vec![0.5, 0.5]).unwrap(),
            ))
            .unwrap();
        let dropping = idle_model.clone().with_drop_path(0.5).unwrap();
        assert_ne!(
            masked(&dropping, &Tape::with_seed(5)),
            masked(&idle_model, &Tape::with_seed(5))
        );
    }
}
