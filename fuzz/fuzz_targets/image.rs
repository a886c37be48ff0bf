//! `decode_image` and `preprocess` on arbitrary bytes: an error, or an image within the
//! decoder limits and a `(3, crop, crop)` tensor of finite values. The first two bytes pick the
//! resize (0 to 255) and the crop (0 to 63); the rest is the image file. Never a panic.

#![no_main]

use idlevit_data::preprocess::{EvalTransform, MAX_IMAGE_SIDE, decode_image, preprocess};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [resize, crop, file @ ..] = data else {
        return;
    };
    let transform = EvalTransform {
        resize: u32::from(*resize),
        crop: u32::from(*crop % 64),
    };
    let Ok(image) = decode_image(file) else {
        return;
    };
    assert!(image.width() <= MAX_IMAGE_SIDE && image.height() <= MAX_IMAGE_SIDE);
    let Ok(tensor) = preprocess(&image, &transform) else {
        return;
    };
    let side = transform.crop as usize;
    assert_eq!(tensor.shape(), [3, side, side]);
    assert!(tensor.to_vec().iter().all(|v| v.is_finite()));
});
