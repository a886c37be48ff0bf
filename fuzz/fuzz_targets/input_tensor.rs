//! The `--input` file of `idlevit logits`: arbitrary bytes parsed as the command parses them
//! (`parse_checkpoint`), tensor `input` required, then run through a tiny DeiT, whose forward
//! pass checks the shape. An error or logits of shape `(batch, classes)`; never a panic.

#![no_main]

use std::sync::OnceLock;

use idlevit_data::weights::parse_checkpoint;
use idlevit_nn::{Backend, Eager};
use idlevit_zoo::{DeiT, DeiTConfig};
use libfuzzer_sys::fuzz_target;

/// Input `(batch, 3, 32, 32)`, 16 patches of 8x8, 3 classes.
fn model() -> &'static DeiT {
    static MODEL: OnceLock<DeiT> = OnceLock::new();
    MODEL.get_or_init(|| {
        let config = DeiTConfig::from_json(
            r#"{"img_size": 32, "patch_size": 8, "embed_dim": 8, "depth": 1, "num_heads": 2,
                "mlp_ratio": 2.0, "num_classes": 3, "qkv_bias": true}"#,
        )
        .expect("the tiny config is valid");
        DeiT::random(&config, 0).expect("the tiny model builds")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(inputs) = parse_checkpoint(data, false, false) else {
        return;
    };
    let Ok(input) = inputs.require("input") else {
        return;
    };
    let batch = input.shape().first().copied();
    if let Ok(logits) = model().forward(&Eager, &Eager.constant(input.clone())) {
        assert_eq!(Some(Eager.shape(&logits)[0]), batch);
        assert_eq!(Eager.shape(&logits)[1], 3);
    }
});
