//! What the optimiser and the objective refuse: nothing they accept can make a weight NaN or
//! infinite, and a damaged optimiser state is refused when it is loaded.

use std::collections::BTreeMap;

use idlevit_checkpoint::Checkpoint;
use idlevit_tensor::Tensor;
use idlevit_train::{AdamW, Objective, TrainError, check_targets, smoothed_targets, whole_count};
use idlevit_zoo::{DeiT, DeiTConfig};

fn tiny() -> DeiT {
    let config = DeiTConfig::from_json(
        r#"{"img_size": 16, "patch_size": 8, "embed_dim": 8, "depth": 1, "num_heads": 2,
            "mlp_ratio": 2.0, "num_classes": 3, "qkv_bias": true}"#,
    )
    .unwrap();
    DeiT::random(&config, 1).unwrap()
}

fn weights(model: &DeiT) -> Vec<Vec<f32>> {
    let mut out = Vec::new();
    model.visit_params(&mut |p| out.push(p.value().to_vec()));
    out
}

fn gradients(model: &DeiT, value: f32) -> BTreeMap<String, Tensor> {
    let mut grads = BTreeMap::new();
    model.visit_params(&mut |p| {
        let shape = p.value().shape().to_vec();
        let n = shape.iter().product();
        grads.insert(
            p.name().to_string(),
            Tensor::from_vec(shape, vec![value; n]).unwrap(),
        );
    });
    grads
}

#[test]
fn refused_steps_leave_the_weights_as_they_were() {
    let mut model = tiny();
    let before = weights(&model);
    let mut optimizer = AdamW::new(0.05);
    let small = gradients(&model, 0.1);
    for lr in [f64::NAN, f64::INFINITY, -1e-3] {
        let err = optimizer.step(&mut model, &small, lr).unwrap_err();
        assert!(err.to_string().contains("learning rate"), "{err}");
    }
    let mut grads = gradients(&model, 0.1);
    let name = grads.keys().nth(3).unwrap().clone();
    grads.get_mut(&name).unwrap().as_mut_slice()[0] = f32::NAN;
    let err = optimizer.step(&mut model, &grads, 1e-3).unwrap_err();
    assert!(
        matches!(&err, TrainError::NonFiniteGradient(n) if *n == name),
        "{err}"
    );
    assert_eq!(weights(&model), before);
    assert_eq!(optimizer.steps(), 0, "a refused step is not counted");

    // A rate of 0 is a valid (if idle) step.
    optimizer.step(&mut model, &small, 0.0).unwrap();
    assert_eq!(optimizer.steps(), 1);

    // A finite but enormous rate overflows the weights: the step reports it.
    let err = optimizer.step(&mut model, &small, 1e39).unwrap_err();
    assert!(matches!(err, TrainError::NonFiniteWeights(_)), "{err}");
}

fn saved_state() -> (DeiT, Checkpoint) {
    let mut model = tiny();
    let mut optimizer = AdamW::new(0.05);
    let grads = gradients(&model, 0.1);
    optimizer.step(&mut model, &grads, 1e-3).unwrap();
    let mut ckpt = Checkpoint::default();
    for (name, tensor) in optimizer.state_tensors().unwrap() {
        ckpt.insert(name, tensor);
    }
    (model, ckpt)
}

#[test]
fn damaged_optimiser_state_is_refused() {
    let (_, good) = saved_state();
    AdamW::new(0.05)
        .load_state_tensors(&mut good.clone())
        .unwrap();
    for step in [f32::NAN, -3.0, 1.5, f32::INFINITY, 1e30] {
        let mut ckpt = good.clone();
        ckpt.insert("adamw.step", Tensor::scalar(step));
        let err = AdamW::new(0.05).load_state_tensors(&mut ckpt).unwrap_err();
        assert!(err.to_string().contains("adamw.step"), "{step}: {err}");
        assert!(err.to_string().contains(&step.to_string()), "{step}: {err}");
    }
    let moment = good
        .iter()
        .find(|(n, _)| n.starts_with("adamw.v."))
        .map(|(n, t)| (n.to_string(), t.clone()))
        .unwrap();
    for bad in [f32::NAN, -1.0] {
        let mut ckpt = good.clone();
        let mut values = moment.1.to_vec();
        values[0] = bad;
        ckpt.insert(
            moment.0.clone(),
            Tensor::from_vec(moment.1.shape().to_vec(), values).unwrap(),
        );
        assert!(
            AdamW::new(0.05).load_state_tensors(&mut ckpt).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn a_state_of_another_shape_is_refused_at_the_step() {
    let (mut model, good) = saved_state();
    let (name, first) = good
        .iter()
        .find(|(n, _)| n.starts_with("adamw.m."))
        .map(|(n, t)| (n.to_string(), t.clone()))
        .unwrap();
    let mut ckpt = good.clone();
    let shorter = first.to_vec()[1..].to_vec();
    let len = shorter.len();
    ckpt.insert(
        name.clone(),
        Tensor::from_vec(vec![len], shorter.clone()).unwrap(),
    );
    ckpt.insert(
        name.replace("adamw.m.", "adamw.v."),
        Tensor::from_vec(vec![len], vec![0.0; len]).unwrap(),
    );
    let mut optimizer = AdamW::new(0.05);
    optimizer.load_state_tensors(&mut ckpt).unwrap();
    let grads = gradients(&model, 0.1);
    let err = optimizer.step(&mut model, &grads, 1e-3).unwrap_err();
    assert!(err.to_string().contains("optimiser state"), "{err}");
}

#[test]
fn counts_are_whole_numbers_an_f32_holds() {
    assert_eq!(whole_count(&Tensor::scalar(0.0)), Some(0));
    assert_eq!(whole_count(&Tensor::scalar(7.0)), Some(7));
    assert_eq!(whole_count(&Tensor::scalar(16_777_216.0)), Some(1 << 24));
    for bad in [f32::NAN, -1.0, 2.5, 16_777_218.0, f32::INFINITY] {
        assert_eq!(whole_count(&Tensor::scalar(bad)), None, "{bad}");
    }
    assert_eq!(
        whole_count(&Tensor::from_vec(vec![2], vec![1.0, 1.0]).unwrap()),
        None
    );
}

#[test]
fn objective_weights_and_targets_are_checked() {
    Objective::default().validate().unwrap();
    for (cut, distill, smoothing) in [
        (f32::NAN, 0.0, 0.1),
        (-1.0, 0.0, 0.1),
        (20.0, f32::INFINITY, 0.1),
        (20.0, -0.5, 0.1),
        (20.0, 0.0, f32::NAN),
        (20.0, 0.0, 1.5),
        (20.0, 0.0, -0.1),
    ] {
        let objective = Objective {
            cut_weight: cut,
            distill_weight: distill,
            smoothing,
            ..Objective::default()
        };
        assert!(objective.validate().is_err(), "{cut} {distill} {smoothing}");
    }
    let nan_weight = Objective {
        cut_weight: f32::NAN,
        ..Objective::default()
    };
    assert!(
        nan_weight.check(&tiny()).is_err(),
        "check validates the weights"
    );
    Objective::default().check(&tiny()).unwrap();
    assert!(smoothed_targets(&[0], 3, 1.0).is_ok());
    assert!(smoothed_targets(&[0], 3, 1.01).is_err());

    let targets = |row: [f32; 3]| Tensor::from_vec(vec![1, 3], row.to_vec()).unwrap();
    check_targets(&targets([0.2, 0.3, 0.5])).unwrap();
    check_targets(&targets([0.0, 1.0, 0.0005])).unwrap();
    for bad in [
        [1.2, -0.2, 0.0],
        [f32::NAN, 0.5, 0.5],
        [0.2, 0.2, 0.2],
        [0.5, 0.5, 0.01],
    ] {
        assert!(check_targets(&targets(bad)).is_err(), "{bad:?}");
    }
    assert!(check_targets(&Tensor::from_vec(vec![3], vec![1.0, 0.0, 0.0]).unwrap()).is_err());
}
