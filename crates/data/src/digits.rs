//! The digits task: the UCI handwritten digits (bundled with scikit-learn, exported once to
//! this crate's `assets/digits.bin`) drawn small, at seeded random places and sizes, on cluttered
//! 64x64 canvases, so that most patches are background, as in natural images, and a model
//! that idles the right tokens loses little.
//!
//! Everything is a pure function of the seed: the same seed gives the same pixels on every
//! machine (integer arithmetic and IEEE f32 operations only, no platform maths).

use std::path::Path;

use image::{Rgb, RgbImage};

use crate::error::ensure;
use crate::{DataError, Result};

/// The exported digits: magic, count, then (label, 8x8 pixels in 0..=16) records.
pub const DIGITS_BIN: &[u8] = include_bytes!("../assets/digits.bin");

const MAGIC: &[u8; 8] = b"UCIDIG01";

/// Classes of the task: the ten digits, whose folder names `0`..`9` sort into label order.
pub const CLASSES: usize = 10;

/// One UCI digit: label and 8x8 ink counts (0..=16 of a 4x4 block set).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digit {
    /// The digit, 0..9.
    pub label: u8,
    /// Row-major 8x8 ink, each 0..=16.
    pub ink: [u8; 64],
}

/// Parses the export format; a wrong magic, count, label or pixel is an error naming it.
pub fn parse_digits(bytes: &[u8]) -> Result<Vec<Digit>> {
    ensure!(
        bytes.len() >= 12 && &bytes[..8] == MAGIC,
        "not a digits export: expected magic UCIDIG01 and a count"
    );
    let count = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
    let body = &bytes[12..];
    ensure!(
        body.len() == count * 65,
        "digits export: expected {} bytes for {count} records, found {}",
        count * 65,
        body.len()
    );
    body.chunks_exact(65)
        .enumerate()
        .map(|(i, record)| {
            let label = record[0];
            ensure!(label < 10, "digit {i}: label {label} is not 0..9");
            let mut ink = [0u8; 64];
            ink.copy_from_slice(&record[1..]);
            let bad = ink.iter().find(|&&v| v > 16);
            ensure!(
                bad.is_none(),
                "digit {i}: ink {} is outside 0..=16",
                bad.unwrap_or(&0)
            );
            Ok(Digit { label, ink })
        })
        .collect()
}

/// A small seeded generator (SplitMix64) at its raw state: canvases, shuffles and training
/// steps must not depend on any crate's RNG.
#[derive(Clone, Debug)]
pub struct SplitMix(pub u64);

impl SplitMix {
    /// A generator for stream `stream` of `seed` (independent streams per canvas).
    pub fn new(seed: u64, stream: u64) -> Self {
        let mut rng = Self(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        rng.next_u64();
        rng
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u32, hi: u32) -> u32 {
        lo + (self.next_u64() % u64::from(hi - lo + 1)) as u32
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// How the canvases are made.
#[derive(Clone, Debug, PartialEq)]
pub struct DigitsOptions {
    /// Canvas side in pixels.
    pub side: u32,
    /// Seed of the split, placements, colours and clutter.
    pub seed: u64,
    /// Fraction of the digits held out for validation (distinct digits, one canvas each).
    pub val_fraction: f64,
    /// Canvases per training digit (each with its own placement and clutter).
    pub train_copies: usize,
    /// Smallest and largest side of a drawn digit, in pixels.
    pub digit_size: (u32, u32),
    /// Clutter marks per canvas.
    pub clutter: (u32, u32),
}

/// Most canvases per training digit: 1000 copies of the embedded digits are 1.3 million
/// canvases, about 16 GiB while they are made.
pub const MAX_TRAIN_COPIES: usize = 1000;

impl DigitsOptions {
    /// Checks that the canvas side, digit sizes and validation fraction make a task.
    pub fn check(&self) -> Result<()> {
        ensure!(
            self.side >= 16 && self.digit_size.0 >= 8 && self.digit_size.0 <= self.digit_size.1,
            "digits: expected side >= 16 and 8 <= min digit size <= max, found side {} sizes {:?}",
            self.side,
            self.digit_size
        );
        ensure!(
            self.digit_size.1 + 2 <= self.side,
            "digits: a digit of {} px does not fit a {} px canvas",
            self.digit_size.1,
            self.side
        );
        ensure!(
            (0.0..1.0).contains(&self.val_fraction),
            "digits: val fraction must be in [0, 1), found {}",
            self.val_fraction
        );
        Ok(())
    }
    /// Bytes the canvases of the embedded task take while they are made: pixels and the
    /// bookkeeping of each canvas, for every embedded digit; `None` when the count overflows.
    pub fn memory_estimate(&self) -> Option<u64> {
        let digits = DIGITS_BIN.get(8..12).map_or(0, |c| {
            u64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        });
        let side = u64::from(self.side);
        let per_canvas = side
            .checked_mul(side)?
            .checked_mul(3)?
            .checked_add(std::mem::size_of::<Canvas>() as u64)?;
        let copies = u64::try_from(self.train_copies).ok()?.checked_add(1)?;
        digits.checked_mul(copies)?.checked_mul(per_canvas)
    }
}

impl Default for DigitsOptions {
    fn default() -> Self {
        Self {
            side: 64,
            seed: 0,
            val_fraction: 0.25,
            train_copies: 2,
            digit_size: (18, 26),
            clutter: (4, 8),
        }
    }
}

/// One canvas and where its digit is.
#[derive(Clone, Debug, PartialEq)]
pub struct Canvas {
    /// The RGB image, `side x side`.
    pub image: RgbImage,
    /// The class (the digit).
    pub label: usize,
    /// The digit's box `(x, y, size)` in pixels (the first digit's, on a two-digit canvas).
    pub digit_box: (u32, u32, u32),
    /// The second digit's box, on a two-digit canvas.
    pub second_box: Option<(u32, u32, u32)>,
}

/// The task's two halves.
#[derive(Clone, Debug, PartialEq)]
pub struct DigitsSplit {
    /// Training canvases.
    pub train: Vec<Canvas>,
    /// Validation canvases.
    pub val: Vec<Canvas>,
}

/// Ink of `digit` at fractional grid position `(u, v)` in 0..8 (bilinear, zero outside).
fn ink_at(digit: &Digit, u: f32, v: f32) -> f32 {
    let (u, v) = (u - 0.5, v - 0.5);
    let (x0, y0) = (u.floor(), v.floor());
    let (fx, fy) = (u - x0, v - y0);
    let sample = |x: f32, y: f32| -> f32 {
        if (0.0..8.0).contains(&x) && (0.0..8.0).contains(&y) {
            f32::from(digit.ink[y as usize * 8 + x as usize]) / 16.0
        } else {
            0.0
        }
    };
    let top = sample(x0, y0) * (1.0 - fx) + sample(x0 + 1.0, y0) * fx;
    let bottom = sample(x0, y0 + 1.0) * (1.0 - fx) + sample(x0 + 1.0, y0 + 1.0) * fx;
    top * (1.0 - fy) + bottom * fy
}

fn blend(pixel: &mut Rgb<u8>, colour: [f32; 3], alpha: f32) {
    for (p, c) in pixel.0.iter_mut().zip(colour) {
        let mixed = f32::from(*p) * (1.0 - alpha) + c * alpha;
        *p = mixed.round().clamp(0.0, 255.0) as u8;
    }
}

fn random_colour(rng: &mut SplitMix, lo: f32, hi: f32) -> [f32; 3] {
    [0; 3].map(|_| 255.0 * (lo + (hi - lo) * rng.unit()))
}

/// A dim background with a gentle gradient and grain.
fn background(side: u32, rng: &mut SplitMix) -> RgbImage {
    let base = random_colour(rng, 0.05, 0.35);
    let tilt = [0; 3].map(|_| 60.0 * (rng.unit() - 0.5));
    let mut image = RgbImage::new(side, side);
    let scale = 1.0 / side as f32;
    for (x, y, pixel) in image.enumerate_pixels_mut() {
        let t = (x + y) as f32 * scale * 0.5;
        for c in 0..3 {
            let grain = 12.0 * (rng.unit() - 0.5);
            pixel.0[c] = (base[c] + tilt[c] * t + grain).round().clamp(0.0, 255.0) as u8;
        }
    }
    image
}

/// Short strokes and dots, the size of a digit's parts, so that a model must look at shape.
fn add_clutter(image: &mut RgbImage, count: u32, rng: &mut SplitMix) {
    let side = image.width();
    for _ in 0..count {
        let colour = random_colour(rng, 0.3, 0.9);
        let alpha = 0.4 + 0.4 * rng.unit();
        let (x0, y0) = (rng.range(0, side - 1) as f32, rng.range(0, side - 1) as f32);
        if rng.next_u64().is_multiple_of(2) {
            // A stroke of 3..7 pixels.
            let length = rng.range(3, 7) as f32;
            let angle = std::f32::consts::TAU * rng.unit();
            let (dx, dy) = (poly_cos(angle), poly_sin(angle));
            for step in 0..=(length as u32 * 2) {
                let t = step as f32 * 0.5;
                let (x, y) = (x0 + dx * t, y0 + dy * t);
                if x >= 0.0 && y >= 0.0 && (x as u32) < side && (y as u32) < side {
                    blend(image.get_pixel_mut(x as u32, y as u32), colour, alpha);
                }
            }
        } else {
            // A dot of radius 1..2.
            let r = rng.range(1, 2) as i64;
            for dy in -r..=r {
                for dx in -r..=r {
                    let (x, y) = (x0 as i64 + dx, y0 as i64 + dy);
                    if dx * dx + dy * dy <= r * r
                        && (0..i64::from(side)).contains(&x)
                        && (0..i64::from(side)).contains(&y)
                    {
                        blend(image.get_pixel_mut(x as u32, y as u32), colour, alpha);
                    }
                }
            }
        }
    }
}

/// Cosine by a fixed polynomial, so canvases never depend on the platform's maths library.
fn poly_cos(x: f32) -> f32 {
    poly_sin(x + std::f32::consts::FRAC_PI_2)
}

/// Sine by a fixed odd polynomial after reduction to [-pi, pi].
fn poly_sin(x: f32) -> f32 {
    let tau = std::f32::consts::TAU;
    let mut r = x - tau * (x / tau).floor();
    if r > std::f32::consts::PI {
        r -= tau;
    }
    // Taylor to x^9: error below 7e-3 on [-pi, pi], ample for clutter angles.
    let r2 = r * r;
    r * (1.0 - r2 / 6.0 * (1.0 - r2 / 20.0 * (1.0 - r2 / 42.0 * (1.0 - r2 / 72.0))))
}

/// A dim cluttered background, `clutter` marks drawn from `rng`.
pub(crate) fn cluttered_background(side: u32, clutter: (u32, u32), rng: &mut SplitMix) -> RgbImage {
    let mut image = background(side, rng);
    let count = rng.range(clutter.0, clutter.1);
    add_clutter(&mut image, count, rng);
    image
}

/// Inks `digit` into `image` as a `size`-pixel square at `(x, y)` in a random bright colour.
pub(crate) fn ink_digit(
    image: &mut RgbImage,
    digit: &Digit,
    (x, y, size): (u32, u32, u32),
    rng: &mut SplitMix,
) {
    let colour = random_colour(rng, 0.7, 1.0);
    let step = 8.0 / size as f32;
    for dy in 0..size {
        for dx in 0..size {
            let ink = ink_at(digit, (dx as f32 + 0.5) * step, (dy as f32 + 0.5) * step);
            if ink > 0.0 {
                blend(image.get_pixel_mut(x + dx, y + dy), colour, ink.min(1.0));
            }
        }
    }
}

/// Draws `digit` on a fresh cluttered canvas; `rng` decides everything random.
pub fn draw_canvas(digit: &Digit, options: &DigitsOptions, rng: &mut SplitMix) -> Canvas {
    let side = options.side;
    let mut image = cluttered_background(side, options.clutter, rng);
    let size = rng
        .range(options.digit_size.0, options.digit_size.1)
        .min(side);
    // Keep a margin so the evaluation crop (7/8 of the side, centred) never cuts the digit.
    let margin = (side / 16).min((side - size) / 2);
    let x = rng.range(margin, side - size - margin);
    let y = rng.range(margin, side - size - margin);
    ink_digit(&mut image, digit, (x, y, size), rng);
    Canvas {
        image,
        label: usize::from(digit.label),
        digit_box: (x, y, size),
        second_box: None,
    }
}

/// Makes the task from `digits`: a seeded split into training and validation digits, then
/// `train_copies` canvases per training digit and one per validation digit.
pub fn make_split(digits: &[Digit], options: &DigitsOptions) -> Result<DigitsSplit> {
    options.check()?;
    ensure!(
        (1..=MAX_TRAIN_COPIES).contains(&options.train_copies),
        "digits: expected 1 to {MAX_TRAIN_COPIES} canvases per training digit, found {}",
        options.train_copies
    );
    let (val_ids, train_ids) = split_ids(digits.len(), options);
    let (val_ids, train_ids) = (&val_ids[..], &train_ids[..]);
    let mut stream = 0u64;
    let mut draw = |id: usize| {
        stream += 1;
        draw_canvas(
            &digits[id],
            options,
            &mut SplitMix::new(options.seed, stream),
        )
    };
    let val = val_ids.iter().map(|&id| draw(id)).collect();
    let train = (0..options.train_copies)
        .flat_map(|_| train_ids.iter().copied())
        .map(&mut draw)
        .collect();
    Ok(DigitsSplit { train, val })
}

/// The indices of the validation digits and of the training digits: a seeded shuffle of
/// `0..count`, the first `val_fraction` of it for validation.
pub(crate) fn split_ids(count: usize, options: &DigitsOptions) -> (Vec<usize>, Vec<usize>) {
    let mut order = crate::folder::shuffled(count, options.seed);
    let val_count = (count as f64 * options.val_fraction).round() as usize;
    let train = order.split_off(val_count.min(count));
    (order, train)
}

/// The task from the embedded export.
pub fn embedded_split(options: &DigitsOptions) -> Result<DigitsSplit> {
    make_split(&parse_digits(DIGITS_BIN)?, options)
}

/// Writes the split as an image folder: `dir/{train,val}/<digit>/<index>.png`, readable by
/// [`ImageFolder`](crate::ImageFolder) as a training and a validation set.
pub fn write_image_folder(split: &DigitsSplit, dir: &Path) -> Result<()> {
    for (part, canvases) in [("train", &split.train), ("val", &split.val)] {
        for class in 0..CLASSES {
            let class_dir = dir.join(part).join(class.to_string());
            std::fs::create_dir_all(&class_dir)
                .map_err(|e| DataError::Io("cannot create", class_dir.clone(), e))?;
        }
        for (i, canvas) in canvases.iter().enumerate() {
            let path = dir
                .join(part)
                .join(canvas.label.to_string())
                .join(format!("{i:05}.png"));
            crate::files::save_png(&canvas.image, &path)?;
        }
    }
    Ok(())
}

/// FNV-1a over every canvas's pixels, label and boxes: pins generated canvases in tests.
#[cfg(test)]
pub(crate) fn fingerprint(canvases: &[Canvas]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    let mut eat = |b: u8| {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x100_0000_01b3);
    };
    for c in canvases {
        c.image.as_raw().iter().for_each(|&b| eat(b));
        eat(c.label as u8);
        let boxes = std::iter::once(c.digit_box).chain(c.second_box);
        boxes.for_each(|(x, y, s)| [x, y, s].iter().for_each(|&v| eat(v as u8)));
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_export_parses_to_the_uci_test_set() {
        let digits = parse_digits(DIGITS_BIN).unwrap();
        assert_eq!(digits.len(), 1797);
        // scikit-learn's copy starts 0, 1, 2, ..., 9, 0, 1.
        let first: Vec<u8> = digits.iter().take(12).map(|d| d.label).collect();
        assert_eq!(first, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]);
        let mut counts = [0usize; 10];
        digits
            .iter()
            .for_each(|d| counts[usize::from(d.label)] += 1);
        assert!(
            counts.iter().all(|&c| (174..=183).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn malformed_exports_are_errors() {
        assert!(parse_digits(b"UCIDIG0").is_err());
        let mut bytes = DIGITS_BIN[..12 + 65].to_vec();
        assert!(
            parse_digits(&bytes)
                .unwrap_err()
                .to_string()
                .contains("expected 116805")
        );
        bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(parse_digits(&bytes).unwrap().len(), 1);
        bytes[12] = 10;
        assert!(
            parse_digits(&bytes)
                .unwrap_err()
                .to_string()
                .contains("label 10")
        );
        bytes[12] = 3;
        bytes[20] = 17;
        assert!(
            parse_digits(&bytes)
                .unwrap_err()
                .to_string()
                .contains("ink 17")
        );
    }

    #[test]
    fn canvases_are_a_pure_function_of_the_seed() {
        let digits = &parse_digits(DIGITS_BIN).unwrap()[..60];
        let options = DigitsOptions::default();
        let a = make_split(digits, &options).unwrap();
        let b = make_split(digits, &options).unwrap();
        assert_eq!(a, b);
        assert_eq!((a.train.len(), a.val.len()), (90, 15));
        // Pinned, so a change to the generator (or to float behaviour) is noticed.
        assert_eq!(
            fingerprint(&a.train),
            12_935_228_451_452_122_833,
            "train fingerprint"
        );
        assert_eq!(
            fingerprint(&a.val),
            2_096_193_897_734_249_324,
            "val fingerprint"
        );
        let other = make_split(digits, &DigitsOptions { seed: 1, ..options }).unwrap();
        assert_ne!(fingerprint(&other.train), fingerprint(&a.train));
    }

    #[test]
    fn most_patches_are_background_and_digits_stay_inside_the_crop() {
        let split = embedded_split(&DigitsOptions::default()).unwrap();
        assert_eq!(split.val.len(), 449);
        assert_eq!(split.train.len(), 2 * 1348);
        let mut digit_patches = 0usize;
        for c in split.train.iter().chain(&split.val) {
            let (x, y, s) = c.digit_box;
            // The evaluation transform keeps the central 7/8: 4 px of 64 on each side.
            assert!(
                x >= 4 && y >= 4 && x + s <= 60 && y + s <= 60,
                "{:?}",
                c.digit_box
            );
            let patches = |lo: u32, len: u32| (lo + len - 1) / 8 - lo / 8 + 1;
            digit_patches += (patches(x, s) * patches(y, s)) as usize;
        }
        let mean = digit_patches as f64 / (split.train.len() + split.val.len()) as f64;
        assert!(
            mean < 20.0,
            "a digit covers {mean:.1} of 64 patches on average"
        );
    }
}
