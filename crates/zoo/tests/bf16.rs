//! The bf16 inference path against f32 on the committed fixtures: logits stay close and the
//! top-1 class agrees; training tapes ignore it; token policies run in bf16 too.

use idlevit_autodiff::Backend;
use idlevit_autodiff::Tape;
use std::path::PathBuf;

use idlevit_checkpoint::Checkpoint;
use idlevit_nn::{Eager, Precision, Tensor};
use idlevit_zoo::{DeiT, DeiTConfig, PolicyKind, Schedule, TokenPolicy, ZooConfig, ZooModel};

const FIXTURES: [&str; 3] = ["p8_i32_d2", "p16_i64_d4", "p8_i64_d6"];

fn fixture_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn model(name: &str) -> DeiT {
    let dir = fixture_root().join("deit").join(name);
    let config = DeiTConfig::from_file(dir.join("config.json")).unwrap();
    let weights = Checkpoint::load_safetensors(dir.join("weights.safetensors")).unwrap();
    DeiT::load(&config, weights).unwrap()
}

/// The fixture's own inputs, then every non-overlapping `side x side` crop of the
/// preprocessed sample photo (224 x 224), so the comparison also sees natural-image
/// statistics: 2 or 3 + 9 (side 64) or 49 (side 32) images.
fn inputs(name: &str, side: usize) -> Tensor {
    let dir = fixture_root().join("deit").join(name);
    let own = Checkpoint::load_safetensors(dir.join("input.safetensors")).unwrap();
    let own = own.require("input").unwrap().to_vec();
    let photo =
        Checkpoint::load_safetensors(fixture_root().join("images/sample_preprocessed.safetensors"))
            .unwrap();
    let photo = photo.require("input").unwrap().to_vec();
    let per_side = 224 / side;
    let mut data = own;
    for (cy, cx) in (0..per_side).flat_map(|y| (0..per_side).map(move |x| (y, x))) {
        for c in 0..3 {
            for y in 0..side {
                let row = (c * 224 + cy * side + y) * 224 + cx * side;
                data.extend_from_slice(&photo[row..row + side]);
            }
        }
    }
    let images = data.len() / (3 * side * side);
    Tensor::from_vec(vec![images, 3, side, side], data).unwrap()
}

fn argmax(row: &[f32]) -> usize {
    (0..row.len()).fold(0, |best, i| if row[i] > row[best] { i } else { best })
}

/// (max |bf16 - f32|, that over max |f32|, rows with the same top-1, rows).
fn compare(f32_logits: &Tensor, bf16_logits: &Tensor) -> (f32, f32, usize, usize) {
    let classes = *f32_logits.shape().last().unwrap();
    let (a, b) = (f32_logits.to_vec(), bf16_logits.to_vec());
    let diff = f32_logits.max_abs_diff(bf16_logits).unwrap();
    let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let agree = a
        .chunks(classes)
        .zip(b.chunks(classes))
        .filter(|(x, y)| argmax(x) == argmax(y))
        .count();
    (diff, diff / scale, agree, a.len() / classes)
}

#[test]
fn bf16_logits_stay_close_to_f32_on_the_fixtures() {
    let (mut agree_all, mut rows_all) = (0, 0);
    for name in FIXTURES {
        let f32_model = model(name);
        let side = f32_model.config().img_size;
        let bf16_model = f32_model.clone().with_precision(Precision::Bf16).unwrap();
        let images = inputs(name, side);
        let reference = f32_model.forward(&Eager, &images).unwrap();
        let logits = bf16_model.forward(&Eager, &images).unwrap();
        let (diff, relative, agree, rows) = compare(&reference, &logits);
        println!(
            "{name}: {rows} images, max |bf16 - f32| = {diff:.3e} ({relative:.3e} of max |logit|), \
             top-1 agrees on {agree}/{rows}"
        );
        // bf16 keeps 8 significant bits (relative rounding 2^-9 = 2e-3 per operand).
        assert!(
            relative <= 3e-2,
            "{name}: relative logit error {relative:e}"
        );
        assert!(
            diff > 0.0,
            "{name}: bf16 logits equal f32 exactly; is the path used?"
        );
        agree_all += agree;
        rows_all += rows;
    }
    println!("top-1 agreement over all fixtures: {agree_all}/{rows_all}");
    assert!(
        agree_all * 100 >= rows_all * 97,
        "top-1 agreement {agree_all}/{rows_all}"
    );
}

/// LV-ViT and PVT-v2 (timm-checked fixtures) run bf16 too, dense and idle: logits stay
/// close to f32 and the bf16 path is the one taken.
#[test]
fn every_family_runs_in_bf16() {
    let families = [
        (
            "lvvit",
            r#"{"family": "lvvit", "#,
            Schedule::new(vec![1, 3], vec![0.7, 0.5]),
        ),
        (
            "pvt/i64_d1221",
            r#"{"family": "pvt_v2", "#,
            Schedule::new(vec![1, 3, 5], vec![0.7, 0.5, 0.5]),
        ),
    ];
    for (name, family, schedule) in families {
        let dir = fixture_root().join(name);
        let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
        let config = ZooConfig::from_json(&text.replacen('{', family, 1)).unwrap();
        let weights = Checkpoint::load_safetensors(dir.join("weights.safetensors")).unwrap();
        let input = Checkpoint::load_safetensors(dir.join("input.safetensors")).unwrap();
        let images = input.require("input").unwrap();
        let dense = ZooModel::load(&config, weights).unwrap();
        let idle = TokenPolicy::select(PolicyKind::Idle, schedule.unwrap());
        for f32_model in [dense.clone(), dense.with_policy(idle).unwrap()] {
            let bf16_model = f32_model.clone().with_precision(Precision::Bf16).unwrap();
            let reference = f32_model.forward(&Eager, images).unwrap();
            let logits = bf16_model.forward(&Eager, images).unwrap();
            let (diff, relative, _, _) = compare(&reference, &logits);
            println!("{name}: max |bf16 - f32| = {diff:.3e} ({relative:.3e} of max |logit|)");
            assert!(
                relative <= 3e-2,
                "{name}: relative logit error {relative:e}"
            );
            assert!(diff > 0.0, "{name}: bf16 logits equal f32 exactly");
        }
    }
}

#[test]
fn switching_back_to_f32_restores_the_exact_logits() {
    let f32_model = model(FIXTURES[0]);
    let images = inputs(FIXTURES[0], 32);
    let back = f32_model
        .clone()
        .with_precision(Precision::Bf16)
        .unwrap()
        .with_precision(Precision::F32)
        .unwrap();
    let a = f32_model.forward(&Eager, &images).unwrap();
    let b = back.forward(&Eager, &images).unwrap();
    assert_eq!(a.to_vec(), b.to_vec());
}

#[test]
fn training_tapes_stay_f32() {
    let f32_model = model(FIXTURES[1]);
    let bf16_model = f32_model.clone().with_precision(Precision::Bf16).unwrap();
    let images = inputs(FIXTURES[1], 64);
    let on_tape = |m: &DeiT| {
        let tape = Tape::new();
        let logits = m.forward(&tape, &tape.constant(images.clone())).unwrap();
        let loss = tape.sum_all(&tape.square(&logits).unwrap()).unwrap();
        let grads = tape.backward(&loss).unwrap().into_map();
        (logits.value().to_vec(), grads)
    };
    let (f32_logits, f32_grads) = on_tape(&f32_model);
    let (bf16_logits, bf16_grads) = on_tape(&bf16_model);
    assert_eq!(f32_logits, bf16_logits);
    assert_eq!(f32_grads.len(), bf16_grads.len());
    for (name, g) in &f32_grads {
        assert_eq!(g.to_vec(), bf16_grads[name].to_vec(), "{name}");
    }
    // Eager inference runs the fused kernels, which sum in another order: equal to rounding.
    let eager = f32_model.forward(&Eager, &images).unwrap();
    for (e, t) in eager.to_vec().iter().zip(&f32_logits) {
        assert!((e - t).abs() <= 1e-5 * (1.0 + t.abs()), "{e} against {t}");
    }
}

#[test]
fn an_optimiser_step_drops_the_stale_bf16_copy() {
    let mut m = model(FIXTURES[0]).with_precision(Precision::Bf16).unwrap();
    m.visit_params_mut(&mut |p| {
        if p.name() == "head.weight" {
            let zero = Tensor::zeros(p.value().shape()).unwrap();
            *p.value_mut() = zero;
        }
    });
    let mut packed = Vec::new();
    m.visit_params(&mut |p| {
        if p.value().ndim() == 2 {
            packed.push((p.name().to_string(), p.packed_bf16().is_some()));
        }
    });
    assert!(packed.iter().any(|(_, is)| *is));
    for (name, is) in packed {
        assert_eq!(is, name != "head.weight", "{name}");
    }
}

#[test]
fn token_policies_run_in_bf16() {
    let f32_model = model(FIXTURES[2]);
    let images = inputs(FIXTURES[2], 64);
    for kind in [PolicyKind::Idle, PolicyKind::Prune, PolicyKind::Evit] {
        let policy = TokenPolicy::select(kind, Schedule::new(vec![1, 3], vec![0.7, 0.5]).unwrap());
        let f32_policy = f32_model.clone().with_policy(policy.clone()).unwrap();
        let bf16_policy = f32_policy.clone().with_precision(Precision::Bf16).unwrap();
        let reference = f32_policy.forward(&Eager, &images).unwrap();
        let logits = bf16_policy.forward(&Eager, &images).unwrap();
        let (diff, relative, agree, rows) = compare(&reference, &logits);
        println!(
            "{kind:?}: max |bf16 - f32| = {diff:.3e} ({relative:.3e} of max |logit|), top-1 \
             {agree}/{rows}"
        );
        // Token selection may flip on near-ties, so only a loose bound holds here.
        assert!(
            relative <= 0.1,
            "{kind:?}: relative logit error {relative:e}"
        );
        assert!(agree * 10 >= rows * 9, "{kind:?}: top-1 {agree}/{rows}");
    }
}

#[test]
fn packing_for_inference_packs_every_linear_weight_once() {
    let config = DeiTConfig {
        img_size: 32,
        patch_size: 8,
        embed_dim: 16,
        depth: 2,
        num_heads: 2,
        mlp_ratio: 2.0,
        num_classes: 5,
        qkv_bias: true,
        idle_layers: None,
        keep_ratios: None,
    };
    let model = ZooModel::random(&ZooConfig::DeiT(config), 3).unwrap();
    let mut matrices = 0;
    model.visit_params(&mut |p| {
        assert!(!p.is_packed_f32(), "{} packed before", p.name());
        matrices += usize::from(p.value().ndim() == 2);
    });
    model.pack_for_inference();
    let twin = model.clone();
    let mut packed = 0;
    twin.visit_params(&mut |p| {
        assert!(p.is_packed_f32(), "{} not looked at", p.name());
        packed += usize::from(p.packed_f32().is_some());
    });
    let expected = if idlevit_kernels::packed_f32_available() {
        matrices
    } else {
        0
    };
    assert!(matrices > 0);
    assert_eq!(packed, expected);
}
