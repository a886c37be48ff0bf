//! Mixup and CutMix on whole batches, as timm's `Mixup` in its batch mode (DeiT's recipe:
//! mixup alpha 0.8, cutmix alpha 1.0, always applied, switching between them half the time).

use idlevit_tensor::Tensor;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Beta, Distribution};

use crate::error::bail;
use crate::{Result, TrainError};

/// Mixes each image of a batch with the image at the mirrored batch position (`b` with
/// `batch - 1 - b`), and the soft targets in the same proportion.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mixup {
    /// Beta(alpha, alpha) of the mixup weight; 0 disables mixup.
    pub mixup_alpha: f32,
    /// Beta(alpha, alpha) of the CutMix area; 0 disables CutMix.
    pub cutmix_alpha: f32,
    /// Probability that a batch is mixed at all.
    pub prob: f32,
    /// Probability of CutMix rather than mixup when both are enabled.
    pub switch_prob: f32,
}

impl Default for Mixup {
    fn default() -> Self {
        Self {
            mixup_alpha: 0.8,
            cutmix_alpha: 1.0,
            prob: 1.0,
            switch_prob: 0.5,
        }
    }
}

/// How one batch was mixed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mixing {
    /// The batch was left as it is.
    None,
    /// Every image is `lam x + (1 - lam) x_mirrored`.
    Blend {
        /// Weight of the image's own content and target.
        lam: f32,
    },
    /// A box `rows x cols` (top, bottom, left, right; end exclusive) of every image is pasted
    /// from the mirrored image; `lam` is the area fraction left untouched.
    Paste {
        /// Weight of the image's own target: the fraction of its pixels it keeps.
        lam: f32,
        /// The pasted box: `[top, bottom, left, right]`.
        bounds: [usize; 4],
    },
}

impl Mixup {
    /// Mixup and CutMix both off: batches pass unchanged.
    pub fn off() -> Self {
        Self {
            mixup_alpha: 0.0,
            cutmix_alpha: 0.0,
            prob: 0.0,
            switch_prob: 0.0,
        }
    }

    /// Whether any batch can be mixed.
    pub fn enabled(&self) -> bool {
        self.prob > 0.0 && (self.mixup_alpha > 0.0 || self.cutmix_alpha > 0.0)
    }

    /// Checks that the alphas are finite and non-negative and the probabilities in [0, 1].
    pub fn validate(&self) -> Result<()> {
        for (name, alpha) in [("mixup", self.mixup_alpha), ("cutmix", self.cutmix_alpha)] {
            if !(alpha.is_finite() && alpha >= 0.0) {
                bail!("{name} alpha must be finite and >= 0, got {alpha}");
            }
        }
        for (name, p) in [("mixup prob", self.prob), ("switch prob", self.switch_prob)] {
            if !(0.0..=1.0).contains(&p) {
                bail!("{name} must be in [0, 1], got {p}");
            }
        }
        Ok(())
    }

    /// Draws how a batch of `height x width` images is mixed, from a stream seeded by `seed`.
    pub fn draw(&self, height: usize, width: usize, seed: u64) -> Result<Mixing> {
        self.validate()?;
        let mut rng = StdRng::seed_from_u64(seed);
        if !self.enabled() || rng.random::<f32>() >= self.prob {
            return Ok(Mixing::None);
        }
        let use_cutmix = match (self.mixup_alpha > 0.0, self.cutmix_alpha > 0.0) {
            (true, true) => rng.random::<f32>() < self.switch_prob,
            (false, true) => true,
            _ => false,
        };
        let alpha = if use_cutmix {
            self.cutmix_alpha
        } else {
            self.mixup_alpha
        };
        let beta = Beta::new(alpha, alpha)
            .map_err(|e| TrainError::Invalid(format!("Beta({alpha}, {alpha}): {e}")))?;
        let lam: f32 = beta.sample(&mut rng);
        if !use_cutmix {
            return Ok(Mixing::Blend { lam });
        }
        // A box of area (1 - lam) of the image, centred anywhere, clipped at the borders; lam
        // is then corrected to the area actually kept (timm's `correct_lam`).
        let cut = (1.0 - lam).max(0.0).sqrt();
        let (cut_h, cut_w) = (
            (height as f32 * cut) as usize,
            (width as f32 * cut) as usize,
        );
        let (cy, cx) = (
            rng.random_range(0..height.max(1)),
            rng.random_range(0..width.max(1)),
        );
        let top = cy.saturating_sub(cut_h / 2);
        let bottom = (cy + cut_h / 2).min(height);
        let left = cx.saturating_sub(cut_w / 2);
        let right = (cx + cut_w / 2).min(width);
        let area = (bottom - top) * (right - left);
        let lam = 1.0 - area as f32 / (height * width).max(1) as f32;
        Ok(Mixing::Paste {
            lam,
            bounds: [top, bottom, left, right],
        })
    }

    /// Mixes `images` `(batch, channels, height, width)` and their soft `targets`
    /// `(batch, classes)` as [`draw`](Self::draw) decides for `seed`.
    pub fn apply(&self, images: &Tensor, targets: &Tensor, seed: u64) -> Result<(Tensor, Tensor)> {
        let &[batch, channels, height, width] = images.shape() else {
            bail!(
                "mixup needs images (batch, channels, height, width), got {:?}",
                images.shape()
            );
        };
        if targets.shape().len() != 2 || targets.shape()[0] != batch {
            bail!(
                "mixup targets {:?} do not match {batch} images",
                targets.shape()
            );
        }
        let mixing = self.draw(height, width, seed)?;
        let lam = match mixing {
            Mixing::None => return Ok((images.clone(), targets.clone())),
            Mixing::Blend { lam } | Mixing::Paste { lam, .. } => lam,
        };
        let source = images.to_vec();
        let mut mixed = source.clone();
        let image_len = channels * height * width;
        for b in 0..batch {
            let mirror = batch - 1 - b;
            let (own, other) = (b * image_len, mirror * image_len);
            match mixing {
                Mixing::None => {}
                Mixing::Blend { lam } => {
                    for i in 0..image_len {
                        mixed[own + i] = lam * source[own + i] + (1.0 - lam) * source[other + i];
                    }
                }
                Mixing::Paste {
                    bounds: [top, bottom, left, right],
                    ..
                } => {
                    for c in 0..channels {
                        for y in top..bottom {
                            let row = (c * height + y) * width;
                            mixed[own + row + left..own + row + right]
                                .copy_from_slice(&source[other + row + left..other + row + right]);
                        }
                    }
                }
            }
        }
        let classes = targets.shape()[1];
        let soft = targets.to_vec();
        let mixed_targets = (0..batch * classes)
            .map(|i| {
                let (b, k) = (i / classes, i % classes);
                lam * soft[i] + (1.0 - lam) * soft[(batch - 1 - b) * classes + k]
            })
            .collect();
        Ok((
            Tensor::from_vec(images.shape().to_vec(), mixed)?,
            Tensor::from_vec(targets.shape().to_vec(), mixed_targets)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(count: usize, side: usize) -> (Tensor, Tensor) {
        let images = (0..count * 3 * side * side).map(|i| i as f32).collect();
        let mut targets = vec![0.0; count * 4];
        for b in 0..count {
            targets[b * 4 + b % 4] = 1.0;
        }
        (
            Tensor::from_vec(vec![count, 3, side, side], images).unwrap(),
            Tensor::from_vec(vec![count, 4], targets).unwrap(),
        )
    }

    #[test]
    fn blend_mixes_images_and_targets_in_one_proportion() {
        let (images, targets) = batch(3, 4);
        let mixup = Mixup {
            cutmix_alpha: 0.0,
            ..Mixup::default()
        };
        let Mixing::Blend { lam } = mixup.draw(4, 4, 7).unwrap() else {
            panic!("mixup alone always blends");
        };
        assert!((0.0..=1.0).contains(&lam));
        let (mixed, soft) = mixup.apply(&images, &targets, 7).unwrap();
        let (x, y) = (images.to_vec(), mixed.to_vec());
        let per_image = 3 * 16;
        for i in 0..per_image {
            let expected = lam * x[i] + (1.0 - lam) * x[2 * per_image + i];
            assert!((y[i] - expected).abs() < 1e-4);
        }
        let soft = soft.to_vec();
        assert!((soft[0] - lam).abs() < 1e-6 && (soft[2] - (1.0 - lam)).abs() < 1e-6);
        for row in soft.chunks(4) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn cutmix_pastes_a_box_and_weights_targets_by_its_area() {
        let (images, targets) = batch(2, 8);
        let mixup = Mixup {
            mixup_alpha: 0.0,
            ..Mixup::default()
        };
        for seed in 0..20 {
            let Mixing::Paste {
                lam,
                bounds: [top, bottom, left, right],
            } = mixup.draw(8, 8, seed).unwrap()
            else {
                panic!("cutmix alone always pastes");
            };
            let (mixed, soft) = mixup.apply(&images, &targets, seed).unwrap();
            let (x, y) = (images.to_vec(), mixed.to_vec());
            let mut pasted = 0;
            for i in 0..3 * 64 {
                let (row, col) = ((i / 8) % 8, i % 8);
                let inside = (top..bottom).contains(&row) && (left..right).contains(&col);
                let expected = if inside { x[3 * 64 + i] } else { x[i] };
                assert_eq!(y[i], expected);
                pasted += usize::from(inside);
            }
            assert!((lam - (1.0 - pasted as f32 / (3.0 * 64.0))).abs() < 1e-6);
            assert!((soft.to_vec()[0] - lam).abs() < 1e-6);
        }
    }

    #[test]
    fn off_leaves_batches_alone_and_bad_settings_are_errors() {
        let (images, targets) = batch(2, 4);
        let (mixed, soft) = Mixup::off().apply(&images, &targets, 1).unwrap();
        assert_eq!(
            (mixed.to_vec(), soft.to_vec()),
            (images.to_vec(), targets.to_vec())
        );
        let bad = Mixup {
            prob: 1.5,
            ..Mixup::default()
        };
        assert!(bad.apply(&images, &targets, 1).is_err());
        let bad = Mixup {
            mixup_alpha: f32::NAN,
            ..Mixup::default()
        };
        assert!(bad.apply(&images, &targets, 1).is_err());
        assert!(Mixup::default().apply(&targets, &targets, 1).is_err());
    }
}
