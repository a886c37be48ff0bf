//! `pth::read_pth_bytes` on arbitrary bytes, lenient and strict: an error, or tensors that
//! hold what their shapes say. Strict mode accepts a subset of what lenient mode accepts, with
//! the same weights and no unknown globals. Never a panic.

#![no_main]

use idlevit_checkpoint::pth::{PthOptions, PthWeights, read_pth_bytes};
use libfuzzer_sys::fuzz_target;

fn check(weights: &PthWeights) {
    assert!(
        !weights.tensors.is_empty(),
        "success means at least one tensor"
    );
    for (name, tensor) in &weights.tensors {
        assert_eq!(tensor.to_vec().len(), tensor.numel(), "{name}");
    }
}

fn bits(weights: &PthWeights) -> Vec<(String, Vec<usize>, Vec<u32>)> {
    let weights = weights.tensors.iter();
    weights
        .map(|(name, t)| {
            let values = t.to_vec().into_iter().map(f32::to_bits).collect();
            (name.clone(), t.shape().to_vec(), values)
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let lenient = read_pth_bytes(data, &PthOptions::default());
    if let Ok(weights) = &lenient {
        check(weights);
    }
    let strict = PthOptions {
        strict: true,
        key: None,
    };
    if let Ok(weights) = read_pth_bytes(data, &strict) {
        assert!(weights.unknown_globals.is_empty());
        let Ok(lenient) = &lenient else {
            panic!("strict mode accepted what lenient mode refused");
        };
        assert_eq!(bits(&weights), bits(lenient));
    }
});
