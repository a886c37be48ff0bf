//! Image preprocessing as timm evaluates DeiT: resize the shorter side with bicubic
//! filtering, center-crop, scale to [0, 1], normalise with the ImageNet mean and std.
//!
//! Decoding is bounded ([`MAX_IMAGE_SIDE`], [`MAX_DECODE_BYTES`]) and so is the resized image
//! ([`MAX_RESIZED_PIXELS`]), so that a small file cannot ask for gigabytes.

use std::io::Cursor;

use idlevit_tensor::Tensor;
use image::imageops::FilterType;
use image::{DynamicImage, ImageReader, Limits, RgbImage};

use crate::error::ensure;
use crate::{DataError, Result};

/// ImageNet channel means (RGB), as timm's `IMAGENET_DEFAULT_MEAN`.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (RGB), as timm's `IMAGENET_DEFAULT_STD`.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Widest or tallest image decoded, in pixels; larger images are refused before decoding.
pub const MAX_IMAGE_SIDE: u32 = 16_384;

/// Most memory an image decoder may allocate for one image (the decoded pixels included), in
/// bytes.
pub const MAX_DECODE_BYTES: u64 = 512 << 20;

/// Most pixels the resized image (before the center crop) may have: 64 Mi, which lets the
/// shorter side go to 256 with an aspect ratio up to 1024:1. It stops a tall, thin image from
/// being scaled up into gigabytes.
pub const MAX_RESIZED_PIXELS: u64 = 1 << 26;

/// Largest image file read, in bytes: far above any photograph, far below what would strain
/// memory, and it keeps a device file such as `/dev/zero` from being read forever.
pub const MAX_IMAGE_FILE_BYTES: u64 = 256 << 20;

/// Most values (`batch * 3 * side * side`) an image batch may hold: 2 Gi, 8 GiB of `f32`. A
/// batch size typed by mistake is refused with an error instead of aborting on allocation.
pub const MAX_BATCH_VALUES: usize = 1 << 31;

/// Number of `f32` values in a `(batch, 3, side, side)` image batch, refused when it overflows
/// or exceeds [`MAX_BATCH_VALUES`].
pub fn batch_values(batch: usize, side: usize) -> Result<usize> {
    batch
        .checked_mul(3)
        .and_then(|n| n.checked_mul(side))
        .and_then(|n| n.checked_mul(side))
        .filter(|&n| n <= MAX_BATCH_VALUES)
        .ok_or(DataError::BatchTooLarge(batch, side))
}

/// The evaluation transform: shorter side to `resize`, then a `crop x crop` center crop.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EvalTransform {
    /// Length of the shorter side after resizing.
    pub resize: u32,
    /// Side of the square center crop (the model's input size).
    pub crop: u32,
}

impl EvalTransform {
    /// timm's default for a model input of `img_size`: crop ratio 0.875 (224 -> resize 256).
    pub fn for_size(img_size: usize) -> Self {
        let crop = u32::try_from(img_size).unwrap_or(u32::MAX);
        Self {
            resize: (f64::from(crop) / 0.875).floor() as u32,
            crop,
        }
    }
}

/// Decodes an image file and preprocesses it into a `(3, crop, crop)` tensor.
pub fn load_image(path: &std::path::Path, transform: &EvalTransform) -> Result<Tensor> {
    let image = read_image(path)?;
    preprocess(&image, transform)
        .map_err(|e| DataError::Image("cannot preprocess", path.into(), Box::new(e)))
}

/// Reads and decodes an image file under [`decode_limits`].
pub fn read_image(path: &std::path::Path) -> Result<DynamicImage> {
    let bytes = idlevit_checkpoint::read_file_capped(path, MAX_IMAGE_FILE_BYTES, "image")?;
    decode_image(&bytes).map_err(|e| DataError::NotAnImage(path.into(), Box::new(e)))
}

/// The limits every decode runs under: [`MAX_IMAGE_SIDE`] and [`MAX_DECODE_BYTES`].
pub fn decode_limits() -> Limits {
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    limits
}

/// Decodes an image held in memory (PNG, JPEG, BMP, GIF, WebP or TIFF, recognised by its
/// contents) under [`decode_limits`].
pub fn decode_image(bytes: &[u8]) -> Result<DynamicImage> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(DataError::ImageHeader)?;
    ensure!(
        reader.format() != Some(image::ImageFormat::Jpeg) || jpeg_is_complete(bytes),
        "the JPEG data is cut short (no end-of-image marker after its last scan)"
    );
    reader.limits(decode_limits());
    reader.decode().map_err(DataError::Decode)
}

/// Whether a JPEG's last scan is followed by its end-of-image marker. The decoder fills the
/// missing rows of a truncated file with grey and reports no error, so a file cut in half
/// would be classified as if whole. Markers cannot occur inside entropy-coded data (a 0xFF
/// byte there is always followed by 0x00 or a restart code), so searching bytes is exact;
/// a thumbnail's own markers come before the main image's scans.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    const START_OF_SCAN: [u8; 2] = [0xFF, 0xDA];
    const END_OF_IMAGE: [u8; 2] = [0xFF, 0xD9];
    bytes
        .windows(2)
        .rposition(|w| w == START_OF_SCAN)
        .is_some_and(|scan| bytes[scan..].windows(2).any(|w| w == END_OF_IMAGE))
}

/// Resizes, crops and normalises a decoded image into a `(3, crop, crop)` tensor.
pub fn preprocess(image: &DynamicImage, transform: &EvalTransform) -> Result<Tensor> {
    let (w, h) = (image.width(), image.height());
    ensure!(w > 0 && h > 0, "image has no pixels ({w}x{h})");
    ensure!(transform.crop > 0, "the crop must be at least one pixel");
    let short = w.min(h);
    // As torchvision's Resize(int): the shorter side becomes `resize`, the longer keeps the
    // aspect ratio (truncated), so both sides are at least the crop.
    let scale = f64::from(transform.resize) / f64::from(short);
    let (nw, nh) = if w <= h {
        (transform.resize, (f64::from(h) * scale) as u32)
    } else {
        ((f64::from(w) * scale) as u32, transform.resize)
    };
    ensure!(
        u64::from(nw) * u64::from(nh) <= MAX_RESIZED_PIXELS,
        "image {w}x{h} would be resized to {nw}x{nh}, more than {MAX_RESIZED_PIXELS} pixels"
    );
    ensure!(
        nw >= transform.crop && nh >= transform.crop,
        "resize {} is smaller than crop {}",
        transform.resize,
        transform.crop
    );
    let resized = image.to_rgb8();
    let resized = image::imageops::resize(&resized, nw, nh, FilterType::CatmullRom);
    // torchvision rounds the crop offset to the nearest pixel.
    let left = ((f64::from(nw - transform.crop)) / 2.0).round() as u32;
    let top = ((f64::from(nh - transform.crop)) / 2.0).round() as u32;
    normalized_crop(&resized, left, top, transform.crop)
}

/// The `side x side` square of `rgb` at (`left`, `top`), scaled to [0, 1] and normalised with
/// the ImageNet mean and std, as a `(3, side, side)` tensor.
pub fn normalized_crop(rgb: &RgbImage, left: u32, top: u32, side: u32) -> Result<Tensor> {
    ensure!(
        u64::from(left) + u64::from(side) <= u64::from(rgb.width())
            && u64::from(top) + u64::from(side) <= u64::from(rgb.height()),
        "crop {side}x{side} at ({left}, {top}) lies outside the {}x{} image",
        rgb.width(),
        rgb.height()
    );
    let side = side as usize;
    let mut data = vec![0.0f32; 3 * side * side];
    for y in 0..side {
        for x in 0..side {
            let pixel = rgb.get_pixel(left + x as u32, top + y as u32);
            for c in 0..3 {
                let value = f32::from(pixel[c]) / 255.0;
                data[(c * side + y) * side + x] = (value - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
            }
        }
    }
    Ok(Tensor::from_vec(vec![3, side, side], data)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoder_errors_say_their_cause_once() {
        let err = format!(
            "{:#}",
            decode_image(b"GIF89a\x01\x00").expect_err("cut short")
        );
        let cause = "Unexpected End of File";
        assert_eq!(err.matches(cause).count(), 1, "{err}");
    }

    /// Every decoded format refuses a file cut short, wherever the cut falls in its pixel
    /// data.
    #[test]
    fn truncated_images_are_errors() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/image");
        for name in [
            "crop.bmp",
            "crop.gif",
            "crop.jpg",
            "crop.png",
            "crop.tiff",
            "crop.webp",
            "crop_lossless.webp",
        ] {
            // A fuzz seed's first two bytes pick the transform; the image follows.
            let seed = std::fs::read(dir.join(name)).expect("seed image");
            let bytes = &seed[2..];
            decode_image(bytes).unwrap_or_else(|e| panic!("{name} whole: {e:#}"));
            for keep in [bytes.len() / 3, bytes.len() / 2, bytes.len() * 9 / 10] {
                assert!(
                    decode_image(&bytes[..keep]).is_err(),
                    "{name} cut to {keep} of {} bytes decoded",
                    bytes.len()
                );
            }
        }
    }

    #[test]
    fn batch_values_are_checked() {
        assert_eq!(batch_values(2, 224).unwrap(), 2 * 3 * 224 * 224);
        assert!(batch_values(usize::MAX, 224).is_err());
        assert!(batch_values(1, usize::MAX / 2).is_err());
        assert!(batch_values(MAX_BATCH_VALUES / (3 * 64 * 64) + 1, 64).is_err());
        let largest = MAX_BATCH_VALUES / (3 * 64 * 64);
        assert_eq!(batch_values(largest, 64).unwrap(), largest * 3 * 64 * 64);
    }
}
