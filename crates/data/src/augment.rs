//! Training-time augmentation: a random resized crop and a horizontal flip, as timm's
//! training transform for DeiT (`RandomResizedCrop(scale=(0.08, 1), ratio=(3/4, 4/3))`,
//! bicubic, flip with probability 0.5), seeded so that a run can be repeated.

use idlevit_tensor::Tensor;
use image::DynamicImage;
use image::imageops::FilterType;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::Result;
use crate::error::ensure;
use crate::preprocess::normalized_crop;

/// A random resized crop to `size x size` and a random horizontal flip.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrainTransform {
    /// Side of the square output (the model's input size).
    pub size: u32,
    /// Range of the crop's area as a fraction of the image's.
    pub scale: (f64, f64),
    /// Range of the crop's aspect ratio (width / height), sampled log-uniformly.
    pub ratio: (f64, f64),
    /// Probability of a horizontal flip.
    pub flip: f64,
}

/// A crop of an image: left, top, width, height, in pixels.
pub type CropBox = (u32, u32, u32, u32);

impl TrainTransform {
    /// timm's DeiT training transform for a model input of `img_size`.
    pub fn for_size(img_size: usize) -> Self {
        Self {
            size: u32::try_from(img_size).unwrap_or(u32::MAX),
            scale: (0.08, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            flip: 0.5,
        }
    }

    /// The crop for a `width x height` image: ten tries at a random area and aspect ratio
    /// that fit, else the largest centred crop whose ratio is in range (torchvision's rule).
    pub fn crop_box(&self, width: u32, height: u32, rng: &mut StdRng) -> CropBox {
        let (w, h) = (f64::from(width), f64::from(height));
        let area = w * h;
        let (log_lo, log_hi) = (self.ratio.0.ln(), self.ratio.1.ln());
        for _ in 0..10 {
            let target = area * rng.random_range(self.scale.0..=self.scale.1);
            let aspect = rng.random_range(log_lo..=log_hi).exp();
            let crop_w = (target * aspect).sqrt().round();
            let crop_h = (target / aspect).sqrt().round();
            if crop_w >= 1.0 && crop_h >= 1.0 && crop_w <= w && crop_h <= h {
                let (crop_w, crop_h) = (crop_w as u32, crop_h as u32);
                let top = rng.random_range(0..=height - crop_h);
                let left = rng.random_range(0..=width - crop_w);
                return (left, top, crop_w, crop_h);
            }
        }
        let in_ratio = w / h;
        let (crop_w, crop_h) = if in_ratio < self.ratio.0 {
            (w, (w / self.ratio.0).round())
        } else if in_ratio > self.ratio.1 {
            ((h * self.ratio.1).round(), h)
        } else {
            (w, h)
        };
        let (crop_w, crop_h) = (
            (crop_w as u32).clamp(1, width),
            (crop_h as u32).clamp(1, height),
        );
        ((width - crop_w) / 2, (height - crop_h) / 2, crop_w, crop_h)
    }

    /// Augments `image` into a normalised `(3, size, size)` tensor; the same `seed` gives the
    /// same crop and flip.
    pub fn apply(&self, image: &DynamicImage, seed: u64) -> Result<Tensor> {
        let (width, height) = (image.width(), image.height());
        ensure!(
            width > 0 && height > 0,
            "image has no pixels ({width}x{height})"
        );
        ensure!(self.size > 0, "the output must be at least one pixel");
        ensure!(
            0.0 < self.scale.0 && self.scale.0 <= self.scale.1 && self.scale.1 <= 1.0,
            "crop scale range {:?} must lie in (0, 1]",
            self.scale
        );
        ensure!(
            0.0 < self.ratio.0 && self.ratio.0 <= self.ratio.1 && self.ratio.1.is_finite(),
            "crop ratio range {:?} must be positive and ordered",
            self.ratio
        );
        let mut rng = StdRng::seed_from_u64(seed);
        let (left, top, crop_w, crop_h) = self.crop_box(width, height, &mut rng);
        let rgb = image.to_rgb8();
        let crop = image::imageops::crop_imm(&rgb, left, top, crop_w, crop_h).to_image();
        let mut resized =
            image::imageops::resize(&crop, self.size, self.size, FilterType::CatmullRom);
        if rng.random::<f64>() < self.flip {
            image::imageops::flip_horizontal_in_place(&mut resized);
        }
        normalized_crop(&resized, 0, 0, self.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::{IMAGENET_MEAN, IMAGENET_STD};

    /// An image whose red channel is the column and green the row, so crops are traceable.
    fn ramp(width: u32, height: u32) -> DynamicImage {
        DynamicImage::ImageRgb8(image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([x as u8, y as u8, 128])
        }))
    }

    fn red(t: &Tensor, side: usize, y: usize, x: usize) -> f32 {
        t.to_vec()[y * side + x] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    }

    #[test]
    fn crops_fit_the_image_and_respect_scale_and_ratio() {
        let transform = TrainTransform::for_size(32);
        let mut rng = StdRng::seed_from_u64(3);
        for (w, h) in [(200, 150), (64, 64), (300, 20), (7, 90)] {
            for _ in 0..200 {
                let (left, top, cw, ch) = transform.crop_box(w, h, &mut rng);
                assert!(cw >= 1 && ch >= 1 && left + cw <= w && top + ch <= h);
                let fraction = f64::from(cw * ch) / f64::from(w * h);
                assert!(fraction <= 1.0 + 1e-9);
            }
        }
        // A square image at full scale and ratio 1 is the identity crop.
        let whole = TrainTransform {
            scale: (1.0, 1.0),
            ratio: (1.0, 1.0),
            ..transform
        };
        assert_eq!(whole.crop_box(50, 50, &mut rng), (0, 0, 50, 50));
    }

    #[test]
    fn the_same_seed_gives_the_same_view_and_flips_mirror() {
        let image = ramp(64, 64);
        let transform = TrainTransform::for_size(16);
        let a = transform.apply(&image, 5).unwrap();
        assert_eq!(a.shape(), &[3, 16, 16]);
        assert_eq!(a.to_vec(), transform.apply(&image, 5).unwrap().to_vec());
        assert!((0..20).any(|s| transform.apply(&image, s).unwrap().to_vec() != a.to_vec()));
        // Whole image, always flipped: red (the column) now falls from left to right.
        let flipped = TrainTransform {
            scale: (1.0, 1.0),
            ratio: (1.0, 1.0),
            flip: 1.0,
            ..transform
        };
        let t = flipped.apply(&image, 0).unwrap();
        assert!(red(&t, 16, 8, 0) > red(&t, 16, 8, 15));
        let kept = TrainTransform {
            flip: 0.0,
            ..flipped
        };
        let t = kept.apply(&image, 0).unwrap();
        assert!(red(&t, 16, 8, 0) < red(&t, 16, 8, 15));
    }

    #[test]
    fn bad_settings_are_errors() {
        let image = ramp(8, 8);
        let transform = TrainTransform::for_size(4);
        assert!(
            TrainTransform {
                scale: (0.0, 1.0),
                ..transform
            }
            .apply(&image, 0)
            .is_err()
        );
        assert!(
            TrainTransform {
                ratio: (2.0, 1.0),
                ..transform
            }
            .apply(&image, 0)
            .is_err()
        );
        assert!(
            TrainTransform {
                size: 0,
                ..transform
            }
            .apply(&image, 0)
            .is_err()
        );
        assert!(transform.apply(&DynamicImage::new_rgb8(0, 5), 0).is_err());
    }
}
