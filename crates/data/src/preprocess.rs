//! Image preprocessing as timm evaluates a model: resize (bicubic or bilinear, as PIL
//! filters), crop as the model's `crop_mode` says, scale to [0, 1], normalise with the
//! model's mean and std. The default is DeiT's: shorter side to 256, center crop 224,
//! bicubic, ImageNet mean and std.
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

/// How an image is resized: the filters timm's configs name, computed as PIL computes them
/// (the filter widened by the scale when shrinking).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interpolation {
    /// Cubic convolution with a = -0.5 (PIL's `BICUBIC`).
    Bicubic,
    /// Linear (PIL's `BILINEAR`).
    Bilinear,
}

/// How the resized image becomes the model's square input, as timm's `crop_mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CropMode {
    /// Shorter side to `resize` (aspect ratio kept), then the center square of `crop`.
    Center,
    /// Both sides to `resize` (aspect ratio not kept), then the center square of `crop`.
    Squash,
    /// Longer side to `resize` (aspect ratio kept), then the center square of `crop`, padded
    /// with the mean colour where the image is smaller.
    Border,
}

/// The evaluation transform: resize by `crop_mode` to `resize`, take the `crop x crop`
/// center, normalise with `mean` and `std`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EvalTransform {
    /// Side after resizing (timm's scale size, `floor(crop / crop_pct)`): the shorter side
    /// in `Center` mode, both sides in `Squash`, the longer side in `Border`.
    pub resize: u32,
    /// Side of the square center crop (the model's input size).
    pub crop: u32,
    /// The resize filter.
    pub interpolation: Interpolation,
    /// How the image is fitted to the square.
    pub crop_mode: CropMode,
    /// Channel means (RGB) subtracted after scaling to [0, 1].
    pub mean: [f32; 3],
    /// Channel standard deviations (RGB) divided by after the means.
    pub std: [f32; 3],
}

impl EvalTransform {
    /// timm's default for a model input of `img_size`, as the DeiT release evaluates:
    /// crop ratio 0.875 (224 -> resize 256), center crop, bicubic, ImageNet mean and std.
    pub fn for_size(img_size: usize) -> Self {
        let crop = u32::try_from(img_size).unwrap_or(u32::MAX);
        Self {
            resize: (f64::from(crop) / 0.875).floor() as u32,
            crop,
            interpolation: Interpolation::Bicubic,
            crop_mode: CropMode::Center,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        }
    }

    /// The transform of a timm data config: input side `img_size`, `crop_pct` in (0, 1]
    /// (the resize is `floor(img_size / crop_pct)`), `crop_mode`, `interpolation`, and a
    /// positive `std`. Errors name the value that is out of range.
    pub fn timm(
        img_size: usize,
        crop_pct: f64,
        crop_mode: CropMode,
        interpolation: Interpolation,
        mean: [f32; 3],
        std: [f32; 3],
    ) -> Result<Self> {
        let crop = u32::try_from(img_size).ok().filter(|&c| c > 0);
        let Some(crop) = crop.filter(|&c| u64::from(c) <= u64::from(MAX_IMAGE_SIDE)) else {
            return Err(DataError::Invalid(format!(
                "input size {img_size} is not between 1 and {MAX_IMAGE_SIDE}"
            )));
        };
        ensure!(
            crop_pct.is_finite() && crop_pct > 0.0 && crop_pct <= 1.0,
            "crop_pct {crop_pct} is not in (0, 1]"
        );
        let resize = (f64::from(crop) / crop_pct).floor();
        ensure!(
            (0.0..=f64::from(MAX_IMAGE_SIDE)).contains(&resize),
            "crop_pct {crop_pct} resizes to {resize} pixels, more than {MAX_IMAGE_SIDE}"
        );
        ensure!(
            mean.iter().all(|m| m.is_finite()),
            "mean {mean:?} is not finite"
        );
        ensure!(
            std.iter().all(|s| s.is_finite() && *s > 0.0),
            "std {std:?} is not positive"
        );
        Ok(Self {
            resize: resize as u32,
            crop,
            interpolation,
            crop_mode,
            mean,
            std,
        })
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

/// Resizes, crops and normalises a decoded image into a `(3, crop, crop)` tensor, as timm's
/// eval transform does with PIL and torchvision.
pub fn preprocess(image: &DynamicImage, transform: &EvalTransform) -> Result<Tensor> {
    let (w, h) = (image.width(), image.height());
    ensure!(w > 0 && h > 0, "image has no pixels ({w}x{h})");
    ensure!(transform.crop > 0, "the crop must be at least one pixel");
    let (nw, nh) = resized_size(w, h, transform)?;
    ensure!(
        u64::from(nw) * u64::from(nh) <= MAX_RESIZED_PIXELS,
        "image {w}x{h} would be resized to {nw}x{nh}, more than {MAX_RESIZED_PIXELS} pixels"
    );
    let pads = transform.crop_mode == CropMode::Border;
    ensure!(
        pads || (nw >= transform.crop && nh >= transform.crop),
        "resize {} is smaller than crop {}",
        transform.resize,
        transform.crop
    );
    let filter = match transform.interpolation {
        Interpolation::Bicubic => FilterType::CatmullRom,
        Interpolation::Bilinear => FilterType::Triangle,
    };
    let resized = image::imageops::resize(&image.to_rgb8(), nw, nh, filter);
    let resized = if pads {
        padded_to(&resized, transform.crop, fill_colour(&transform.mean))
    } else {
        resized
    };
    let left = center_offset(resized.width(), transform.crop);
    let top = center_offset(resized.height(), transform.crop);
    normalized_crop_with(
        &resized,
        left,
        top,
        transform.crop,
        &transform.mean,
        &transform.std,
    )
}

/// The size a `w x h` image is resized to before the crop.
fn resized_size(w: u32, h: u32, transform: &EvalTransform) -> Result<(u32, u32)> {
    let target = u64::from(transform.resize);
    let (w64, h64) = (u64::from(w), u64::from(h));
    let size = match transform.crop_mode {
        // torchvision's Resize(int): the shorter side becomes `resize`, the longer
        // `int(resize * long / short)`, computed exactly here.
        CropMode::Center if w <= h => (target, target * h64 / w64),
        CropMode::Center => (target * w64 / h64, target),
        CropMode::Squash => (target, target),
        // timm's ResizeKeepRatio(longest=1): both sides divided by the larger ratio to the
        // target and rounded half to even, as Python's round.
        CropMode::Border => {
            let ratio = (w as f64 / target as f64).max(h as f64 / target as f64);
            let side = |s: u32| (f64::from(s) / ratio).round_ties_even() as u64;
            (side(w), side(h))
        }
    };
    ensure!(
        size.0 > 0 && size.1 > 0,
        "image {w}x{h} would be resized to {}x{} pixels",
        size.0,
        size.1
    );
    let clamp = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
    Ok((clamp(size.0), clamp(size.1)))
}

/// torchvision's center-crop offset: `round((length - crop) / 2)`, half to even.
fn center_offset(length: u32, crop: u32) -> u32 {
    (f64::from(length.saturating_sub(crop)) / 2.0).round_ties_even() as u32
}

/// The colour timm's border mode pads with: the mean scaled to bytes (`round(255 * mean)`,
/// half to even).
fn fill_colour(mean: &[f32; 3]) -> image::Rgb<u8> {
    image::Rgb(mean.map(|m| (255.0 * f64::from(m)).round_ties_even().clamp(0.0, 255.0) as u8))
}

/// `rgb` padded with `fill` to at least `side` in each dimension, the image centred (the
/// odd pixel of padding going after it), as timm's `CenterCropOrPad`.
fn padded_to(rgb: &RgbImage, side: u32, fill: image::Rgb<u8>) -> RgbImage {
    let (w, h) = (rgb.width(), rgb.height());
    if w >= side && h >= side {
        return rgb.clone();
    }
    let (pw, ph) = (w.max(side), h.max(side));
    let mut out = RgbImage::from_pixel(pw, ph, fill);
    image::imageops::replace(
        &mut out,
        rgb,
        i64::from((pw - w) / 2),
        i64::from((ph - h) / 2),
    );
    out
}

/// The `side x side` square of `rgb` at (`left`, `top`), scaled to [0, 1] and normalised with
/// the ImageNet mean and std, as a `(3, side, side)` tensor.
pub fn normalized_crop(rgb: &RgbImage, left: u32, top: u32, side: u32) -> Result<Tensor> {
    normalized_crop_with(rgb, left, top, side, &IMAGENET_MEAN, &IMAGENET_STD)
}

/// [`normalized_crop`] with the channel `mean` and `std` given.
pub fn normalized_crop_with(
    rgb: &RgbImage,
    left: u32,
    top: u32,
    side: u32,
    mean: &[f32; 3],
    std: &[f32; 3],
) -> Result<Tensor> {
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
                data[(c * side + y) * side + x] = (value - mean[c]) / std[c];
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
