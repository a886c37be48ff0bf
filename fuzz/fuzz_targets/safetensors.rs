//! `Checkpoint::from_safetensors_bytes` on arbitrary bytes: an error, or tensors that hold
//! what their shapes say, no more `f32` values than the bytes could encode, and a faithful
//! round trip. Never a panic.

#![no_main]

use idlevit_checkpoint::Checkpoint;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(ckpt) = Checkpoint::from_safetensors_bytes(data) else {
        return;
    };
    let mut values = 0usize;
    for (name, tensor) in ckpt.iter() {
        let numel = tensor.to_vec().len();
        assert_eq!(numel, tensor.numel(), "{name}");
        values += numel;
    }
    // The narrowest float type takes 2 bytes a value, and each value is stored once.
    assert!(
        values.saturating_mul(2) <= data.len(),
        "{values} values from {} bytes",
        data.len()
    );
    let bytes = ckpt
        .to_safetensors_bytes()
        .expect("a loaded checkpoint serialises");
    let again = Checkpoint::from_safetensors_bytes(&bytes).expect("our own output parses");
    assert_eq!(again.len(), ckpt.len());
    for ((name, a), (name_again, b)) in ckpt.iter().zip(again.iter()) {
        assert_eq!(name, name_again);
        assert_eq!(a.shape(), b.shape(), "{name}");
        let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
        assert_eq!(bits(a.to_vec()), bits(b.to_vec()), "{name}");
    }
});
