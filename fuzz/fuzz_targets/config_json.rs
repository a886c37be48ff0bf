//! `DeiTConfig::from_json` on arbitrary text: an error, or a config within the documented
//! limits. Small valid configs are built with random weights and run, densely and with every
//! token policy their schedule allows. Never a panic.

#![no_main]

use idlevit_data::preprocess::EvalTransform;
use idlevit_nn::{Backend, Eager};
use idlevit_tensor::Tensor;
use idlevit_zoo::{
    DeiT, DeiTConfig, MAX_DEPTH, MAX_PARAMETERS, MAX_PATCHES, PolicyKind, TokenPolicy,
};
use libfuzzer_sys::fuzz_target;

/// Configs up to this size are built and run (a few milliseconds each).
const MAX_RUN_PARAMETERS: usize = 1 << 16;
const MAX_RUN_IMG_SIZE: usize = 64;
const MAX_RUN_PATCHES: usize = 64;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = DeiTConfig::from_json(text) else {
        return;
    };
    let parameters = config.parameter_count().expect("validated configs count");
    let zoo = idlevit_zoo::ZooConfig::DeiT(config.clone());
    for use_ in [
        idlevit_zoo::MemoryUse::Inference,
        idlevit_zoo::MemoryUse::Training { teacher: true },
    ] {
        // The estimate counts with checked arithmetic: an answer or None, never a panic,
        // and never less than the weights it must hold.
        if let Some(bytes) = zoo.memory_estimate(1, use_) {
            assert!(bytes >= 4 * parameters as u64);
        }
    }
    assert!(parameters <= MAX_PARAMETERS);
    assert!(config.depth <= MAX_DEPTH && config.num_patches() <= MAX_PATCHES);
    let transform = EvalTransform::for_size(config.img_size);
    assert!(transform.resize >= transform.crop);
    let schedule = config
        .schedule()
        .expect("validated configs have a schedule or none");

    if parameters > MAX_RUN_PARAMETERS
        || config.img_size > MAX_RUN_IMG_SIZE
        || config.num_patches() > MAX_RUN_PATCHES
    {
        return;
    }
    let model = DeiT::random(&config, 0).expect("a valid config builds");
    let side = config.img_size;
    let images = Tensor::zeros(&[1, 3, side, side]).expect("a small image batch");
    let images = Eager.constant(images);
    assert!(config.num_classes >= 1, "a classifier has at least one class");
    let width = config.num_classes;
    let logits = model.forward(&Eager, &images).expect("a valid config runs");
    assert_eq!(Eager.shape(&logits), [1, width]);
    let Some(schedule) = schedule else {
        return;
    };
    for kind in [PolicyKind::Idle, PolicyKind::Prune, PolicyKind::Evit] {
        let policy = TokenPolicy::select(kind, schedule.clone());
        if let Ok(model) = model.clone().with_policy(policy) {
            let logits = model.forward(&Eager, &images).expect("a valid policy runs");
            assert_eq!(Eager.shape(&logits), [1, width], "{kind:?}");
        }
    }
});
