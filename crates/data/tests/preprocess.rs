//! Preprocessing against torchvision's `Resize(256, bicubic)`, `CenterCrop(224)`,
//! `ToTensor`, `Normalize` on the same image (`fixtures/images`).

use std::io::Cursor;
use std::path::PathBuf;

use idlevit_checkpoint::Checkpoint;
use idlevit_data::preprocess::{
    EvalTransform, MAX_IMAGE_SIDE, MAX_RESIZED_PIXELS, decode_image, load_image, preprocess,
};
use image::{DynamicImage, ImageFormat};

fn images() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/images")
}

#[test]
fn matches_torchvision_closely() {
    let ours = load_image(&images().join("sample.png"), &EvalTransform::for_size(224)).unwrap();
    let reference =
        Checkpoint::load_safetensors(images().join("sample_preprocessed.safetensors")).unwrap();
    let reference = reference
        .require("input")
        .unwrap()
        .reshape(&[3, 224, 224])
        .unwrap();
    let (a, b) = (ours.to_vec(), reference.to_vec());
    let mean = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32;
    let max = ours.max_abs_diff(&reference).unwrap();
    let off = a
        .iter()
        .zip(&b)
        .filter(|(x, y)| (*x - *y).abs() > 0.05)
        .count();
    // Normalised units: one 8-bit level is 1/255/0.225 = 0.017. PIL and the image crate both
    // filter with Catmull-Rom (a = -0.5) over the scaled support, but round differently, which
    // shows only on sharp edges: measured mean 0.0014, 471 of 150528 values beyond 3 levels,
    // max 0.30 on a diagonal edge.
    assert!(mean < 0.003, "mean |diff| {mean}");
    assert!(
        off * 200 < a.len(),
        "{off} values differ by more than 3 levels"
    );
    assert!(max < 0.4, "max |diff| {max}");
}

#[test]
fn jpeg_decodes_and_garbage_is_an_error() {
    let jpeg = load_image(&images().join("sample.jpg"), &EvalTransform::for_size(64)).unwrap();
    assert_eq!(jpeg.shape(), &[3, 64, 64]);
    let err = load_image(
        &images().join("not_an_image.png"),
        &EvalTransform::for_size(64),
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("not_an_image.png"), "{err:#}");
    assert!(load_image(&images().join("missing.png"), &EvalTransform::for_size(64)).is_err());
}

/// A bitmap header declaring `width x height` pixels of 24-bit colour, with no pixel data.
fn bmp_header(width: i32, height: i32) -> Vec<u8> {
    let mut bytes = b"BM".to_vec();
    bytes.extend_from_slice(&54u32.to_le_bytes()); // file size
    bytes.extend_from_slice(&0u32.to_le_bytes()); // reserved
    bytes.extend_from_slice(&54u32.to_le_bytes()); // pixel data offset
    bytes.extend_from_slice(&40u32.to_le_bytes()); // BITMAPINFOHEADER
    bytes.extend_from_slice(&width.to_le_bytes());
    bytes.extend_from_slice(&height.to_le_bytes());
    bytes.extend_from_slice(&1u16.to_le_bytes()); // planes
    bytes.extend_from_slice(&24u16.to_le_bytes()); // bits per pixel
    bytes.extend_from_slice(&[0; 24]); // no compression, default sizes and palette
    bytes
}

#[test]
fn declared_sizes_beyond_the_limits_are_refused_before_decoding() {
    // 100000 x 100000 RGB would be 30 GB; 16384 x 16384 RGB 768 MiB, above the decode budget.
    for (width, height) in [
        (100_000, 100_000),
        (16_384, 16_384),
        (MAX_IMAGE_SIDE as i32 + 1, 1),
    ] {
        let err = decode_image(&bmp_header(width, height)).unwrap_err();
        let message = format!("{err:#}");
        assert!(message.contains("limit"), "{width}x{height}: {message}");
    }
    let wide = DynamicImage::new_luma8(MAX_IMAGE_SIDE + 1, 1);
    let mut png = Cursor::new(Vec::new());
    wide.write_to(&mut png, ImageFormat::Png).unwrap();
    assert!(decode_image(png.get_ref()).is_err());
}

/// A 1 x 16384 image is a few hundred bytes as PNG, but resizing its shorter side to 256 would
/// make it 256 x 4194304 pixels (3 GiB of RGB) before the crop.
#[test]
fn extreme_aspect_ratios_are_refused_before_resizing() {
    let tall = DynamicImage::new_luma8(1, MAX_IMAGE_SIDE);
    let mut png = Cursor::new(Vec::new());
    tall.write_to(&mut png, ImageFormat::Png).unwrap();
    let decoded = decode_image(png.get_ref()).unwrap();
    let err = preprocess(&decoded, &EvalTransform::for_size(224)).unwrap_err();
    assert!(err.to_string().contains("pixels"), "{err}");
    // 1024:1 at resize 256 is the most the limit allows.
    let long = DynamicImage::new_rgb8(1024, 1);
    let tensor = preprocess(
        &long,
        &EvalTransform {
            resize: 4,
            crop: 2,
            ..EvalTransform::for_size(2)
        },
    )
    .unwrap();
    assert_eq!(tensor.shape(), &[3, 2, 2]);
    assert!(
        preprocess(
            &long,
            &EvalTransform {
                resize: 0,
                crop: 0,
                ..EvalTransform::for_size(0)
            }
        )
        .is_err()
    );
    assert!(u64::from(256u32) * 256 * 1024 <= MAX_RESIZED_PIXELS);
}

/// Every interpolation and crop mode of a timm data config against timm's own eval transform
/// of the same image (`fixtures/hub/preprocess.safetensors`, written by
/// `make_hub_fixtures.py`), within the rounding differences measured above.
#[test]
fn timm_crop_modes_and_filters_match() {
    use idlevit_data::preprocess::{CropMode, IMAGENET_MEAN, IMAGENET_STD, Interpolation};
    let goldens =
        Checkpoint::load_safetensors(images().join("../hub/preprocess.safetensors")).unwrap();
    let half = [0.5; 3];
    let (imagenet_mean, imagenet_std) = (IMAGENET_MEAN, IMAGENET_STD);
    let cases = [
        (
            "bicubic_center_0.9",
            0.9,
            CropMode::Center,
            Interpolation::Bicubic,
            half,
            half,
        ),
        (
            "bilinear_center_0.875",
            0.875,
            CropMode::Center,
            Interpolation::Bilinear,
            imagenet_mean,
            imagenet_std,
        ),
        (
            "bicubic_squash_0.95",
            0.95,
            CropMode::Squash,
            Interpolation::Bicubic,
            imagenet_mean,
            imagenet_std,
        ),
        (
            "bilinear_border_1.0",
            1.0,
            CropMode::Border,
            Interpolation::Bilinear,
            half,
            half,
        ),
        (
            "bicubic_border_0.8",
            0.8,
            CropMode::Border,
            Interpolation::Bicubic,
            imagenet_mean,
            imagenet_std,
        ),
    ];
    for (name, crop_pct, mode, filter, mean, std) in cases {
        let transform = EvalTransform::timm(64, crop_pct, mode, filter, mean, std).unwrap();
        let ours = load_image(&images().join("sample.png"), &transform).unwrap();
        let theirs = goldens.require(name).unwrap();
        assert_eq!(ours.shape(), theirs.shape(), "{name}");
        let (a, b) = (ours.to_vec(), theirs.to_vec());
        let mean_diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32;
        let max = ours.max_abs_diff(theirs).unwrap();
        // Measured: mean 0.0003 to 0.0010, max 0.008 to 0.12 (a few edge pixels a level or
        // several apart after rounding). A crop or padding one pixel off, or the wrong
        // normalisation, moves most values by far more.
        assert!(mean_diff < 0.003, "{name}: mean |diff| {mean_diff}");
        assert!(max < 0.25, "{name}: max |diff| {max}");
    }
}

#[test]
fn timm_transforms_refuse_values_out_of_range() {
    use idlevit_data::preprocess::{CropMode, IMAGENET_MEAN, IMAGENET_STD, Interpolation};
    let make = |size, pct, std| {
        EvalTransform::timm(
            size,
            pct,
            CropMode::Center,
            Interpolation::Bicubic,
            IMAGENET_MEAN,
            std,
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    };
    assert!(make(224, 0.875, IMAGENET_STD).is_ok());
    assert!(
        make(224, 0.0, IMAGENET_STD)
            .unwrap_err()
            .contains("crop_pct 0")
    );
    assert!(
        make(224, f64::NAN, IMAGENET_STD)
            .unwrap_err()
            .contains("crop_pct NaN")
    );
    assert!(
        make(0, 0.9, IMAGENET_STD)
            .unwrap_err()
            .contains("input size 0")
    );
    assert!(
        make(224, 1e-9, IMAGENET_STD)
            .unwrap_err()
            .contains("resizes to")
    );
    assert!(make(224, 0.9, [0.2, 0.0, 0.2]).unwrap_err().contains("std"));
}
