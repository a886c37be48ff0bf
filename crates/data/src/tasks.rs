//! The two digits tasks as in-memory image sets, training canvases drawn fresh every epoch.
//!
//! - [`DigitsTask::Digit`]: one UCI digit per cluttered canvas; the label is the digit. The
//!   validation canvases are exactly those of [`crate::digits::make_split`].
//! - [`DigitsTask::LargerDigit`]: two smaller digits in opposite halves of the canvas; the label
//!   is the larger of the two. Which digit decides the answer depends on both, which lie apart,
//!   so a model that loses the tokens of either digit in an early layer often loses the answer: the task tells how well a
//!   token selector keeps what matters.
//!
//! Training and validation canvases are drawn from disjoint digits (the split of
//! [`crate::digits::make_split`]). A training set draws epoch `e`'s canvas `i` from its own
//! seeded stream, so each epoch shows new placements, sizes, colours and clutter (and, for
//! two-digit canvases, new pairs), while a run with the same seed sees the same canvases on any machine.

use idlevit_tensor::Tensor;
use image::DynamicImage;
use rayon::prelude::*;

use crate::augment::TrainTransform;
use crate::digits::{
    CLASSES, Canvas, DIGITS_BIN, Digit, DigitsOptions, DigitsSplit, SplitMix, cluttered_background,
    draw_canvas, ink_digit, parse_digits, split_ids,
};
use crate::error::ensure;
use crate::preprocess::{EvalTransform, preprocess};
use crate::set::ImageSet;
use crate::{DataError, Result};

/// What a canvas shows and what its label means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DigitsTask {
    /// One digit per canvas; the label is the digit.
    Digit,
    /// Two digits in opposite halves of the canvas; the label is the larger of the two.
    LargerDigit,
}

impl DigitsTask {
    /// Both tasks.
    pub const ALL: [DigitsTask; 2] = [DigitsTask::Digit, DigitsTask::LargerDigit];

    /// The task's name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            DigitsTask::Digit => "digits",
            DigitsTask::LargerDigit => "larger-digit",
        }
    }

    /// Validation canvases per validation digit.
    fn val_per_digit(self) -> usize {
        match self {
            DigitsTask::Digit => 1,
            // Each pair uses two digits: two canvases per digit show each about four times.
            DigitsTask::LargerDigit => 2,
        }
    }
}

/// Side range in pixels of each digit on a two-digit canvas: smaller than a lone digit's, so
/// that two fit apart.
pub const PAIR_DIGIT_SIZE: (u32, u32) = (14, 18);

/// Stream salt of training canvases, far from the validation streams `1..`.
const FRESH_STREAMS: u64 = 1 << 40;

/// Stream salt of the larger-digit validation canvases.
const PAIR_VAL_STREAMS: u64 = 1 << 39;

/// Draws digits `a` and `b` on one cluttered canvas, `a` in the left (or top) half and `b`
/// in the other, at least `side / 16` pixels apart, inside the central evaluation crop;
/// the label is the larger of the two digits.
pub fn draw_pair_canvas(
    a: &Digit,
    b: &Digit,
    options: &DigitsOptions,
    rng: &mut SplitMix,
) -> Canvas {
    let side = options.side;
    let mut image = cluttered_background(side, options.clutter, rng);
    let margin = side / 16;
    let half = side / 2;
    let gap = margin / 2;
    let across = rng.next_u64().is_multiple_of(2);
    let place = |first: bool, rng: &mut SplitMix| {
        let size = rng.range(PAIR_DIGIT_SIZE.0, PAIR_DIGIT_SIZE.1);
        let along = if first {
            rng.range(margin, half - gap - size)
        } else {
            rng.range(half + gap, side - margin - size)
        };
        let other = rng.range(margin, side - margin - size);
        if across {
            (along, other, size)
        } else {
            (other, along, size)
        }
    };
    let first = place(true, rng);
    let second = place(false, rng);
    ink_digit(&mut image, a, first, rng);
    ink_digit(&mut image, b, second, rng);
    Canvas {
        image,
        label: usize::from(a.label.max(b.label)),
        digit_box: first,
        second_box: Some(second),
    }
}

/// How a set comes by its canvases.
#[derive(Clone, Debug)]
enum Draw {
    /// The same canvases every epoch.
    Fixed(Vec<Canvas>),
    /// `per_epoch` canvases drawn afresh each epoch from `digits`, the streams keyed by
    /// the split's seed and `draw_seed`.
    Fresh {
        digits: Vec<Digit>,
        options: DigitsOptions,
        per_epoch: usize,
        draw_seed: u64,
    },
}

/// One half of a digits task, an [`ImageSet`] held in memory.
#[derive(Clone, Debug)]
pub struct TaskCanvases {
    task: DigitsTask,
    classes: Vec<String>,
    draw: Draw,
}

impl TaskCanvases {
    /// The task the canvases belong to.
    pub fn task(&self) -> DigitsTask {
        self.task
    }

    /// The same set drawing its fresh canvases from streams keyed by `seed` too (`0`: the
    /// streams of the split's seed alone), so that runs with different seeds see different
    /// canvases of the same digits; a fixed set is unchanged.
    pub fn with_draw_seed(mut self, seed: u64) -> Self {
        if let Draw::Fresh { draw_seed, .. } = &mut self.draw {
            *draw_seed = seed;
        }
        self
    }

    /// The first `count` canvases of a fixed set, for a quicker evaluation; a fresh set draws
    /// at most `count` per epoch.
    pub fn first(mut self, count: usize) -> Self {
        match &mut self.draw {
            Draw::Fixed(canvases) => canvases.truncate(count),
            Draw::Fresh { per_epoch, .. } => *per_epoch = (*per_epoch).min(count),
        }
        self
    }

    /// A fresh set drawing `count` canvases per epoch; a fixed set is unchanged.
    pub fn with_canvases_per_epoch(mut self, count: usize) -> Self {
        if let Draw::Fresh { per_epoch, .. } = &mut self.draw {
            *per_epoch = count;
        }
        self
    }

    /// Whether every epoch draws new canvases.
    pub fn is_fresh(&self) -> bool {
        matches!(self.draw, Draw::Fresh { .. })
    }

    /// Canvas `index` of `epoch`.
    pub fn canvas(&self, epoch: usize, index: usize) -> Result<Canvas> {
        match &self.draw {
            Draw::Fixed(canvases) => canvases.get(index).cloned().ok_or_else(|| {
                DataError::Invalid(format!(
                    "canvas {index} is out of range ({} canvases)",
                    canvases.len()
                ))
            }),
            Draw::Fresh {
                digits,
                options,
                per_epoch,
                draw_seed,
            } => {
                ensure!(
                    index < *per_epoch,
                    "canvas {index} is out of range ({per_epoch} canvases per epoch)"
                );
                let stream = FRESH_STREAMS
                    .wrapping_add((epoch as u64).wrapping_mul(1 << 24))
                    .wrapping_add(index as u64);
                let seed = options.seed ^ draw_seed.wrapping_mul(0xA24B_AED4_963E_E407);
                let mut rng = SplitMix::new(seed, stream);
                Ok(match self.task {
                    DigitsTask::Digit => {
                        draw_canvas(&digits[index % digits.len()], options, &mut rng)
                    }
                    DigitsTask::LargerDigit => {
                        let a = rng.next_u64() as usize % digits.len();
                        let b = rng.next_u64() as usize % digits.len();
                        draw_pair_canvas(&digits[a], &digits[b], options, &mut rng)
                    }
                })
            }
        }
    }

    /// Every canvas of `epoch`, in index order.
    pub fn canvases(&self, epoch: usize) -> Result<Vec<Canvas>> {
        (0..self.len())
            .into_par_iter()
            .map(|i| self.canvas(epoch, i))
            .collect()
    }

    fn load(
        &self,
        epoch: usize,
        indices: &[usize],
        side: usize,
        prepare: impl Fn(DynamicImage, usize) -> Result<Tensor> + Sync,
    ) -> Result<(Tensor, Vec<usize>)> {
        crate::set::load_batch(indices, side, |i| {
            let canvas = self.canvas(epoch, i)?;
            let image = DynamicImage::ImageRgb8(canvas.image);
            Ok((prepare(image, i)?, canvas.label))
        })
    }
}

impl ImageSet for TaskCanvases {
    fn classes(&self) -> &[String] {
        &self.classes
    }

    fn len(&self) -> usize {
        match &self.draw {
            Draw::Fixed(canvases) => canvases.len(),
            Draw::Fresh { per_epoch, .. } => *per_epoch,
        }
    }

    fn images(
        &self,
        epoch: usize,
        indices: &[usize],
        transform: &EvalTransform,
    ) -> Result<(Tensor, Vec<usize>)> {
        self.load(epoch, indices, transform.crop as usize, |image, _| {
            preprocess(&image, transform)
        })
    }

    fn augmented_images(
        &self,
        epoch: usize,
        indices: &[usize],
        transform: &TrainTransform,
        seed: u64,
    ) -> Result<(Tensor, Vec<usize>)> {
        self.load(epoch, indices, transform.size as usize, |image, i| {
            transform.apply(&image, crate::set::image_seed(seed, i))
        })
    }
}

/// A task's training canvases (fresh every epoch) and validation canvases (fixed).
#[derive(Clone, Debug)]
pub struct TaskSplit {
    /// Training canvases, drawn afresh each epoch from the training digits.
    pub train: TaskCanvases,
    /// Validation canvases from the held-out digits, the same every epoch.
    pub val: TaskCanvases,
}

impl TaskSplit {
    /// Epoch `epoch`'s training canvases and the validation canvases, as a split that
    /// [`crate::digits::write_image_folder`] writes.
    pub fn drawn(&self, epoch: usize) -> Result<DigitsSplit> {
        Ok(DigitsSplit {
            train: self.train.canvases(epoch)?,
            val: self.val.canvases(0)?,
        })
    }
}

/// The task `task` on the embedded digits: `per_epoch` training canvases per epoch (`None`:
/// one per training digit) and the fixed validation canvases, split and drawn by `options`
/// (`train_copies` is not used: each epoch draws its own canvases).
pub fn task_split(
    task: DigitsTask,
    options: &DigitsOptions,
    per_epoch: Option<usize>,
) -> Result<TaskSplit> {
    options.check()?;
    if task == DigitsTask::LargerDigit {
        // The layout of `draw_pair_canvas`: margin, digit, half a gap in each half.
        let (margin, gap) = (options.side / 16, options.side / 32);
        ensure!(
            margin + PAIR_DIGIT_SIZE.1 + gap <= options.side / 2,
            "larger digit: two digits of {} px do not fit apart on a {} px canvas",
            PAIR_DIGIT_SIZE.1,
            options.side
        );
    }
    let digits = parse_digits(DIGITS_BIN)?;
    let (val_ids, train_ids) = split_ids(digits.len(), options);
    ensure!(
        !val_ids.is_empty() && !train_ids.is_empty(),
        "digits: the split leaves no validation or no training digits"
    );
    let per_epoch = per_epoch.unwrap_or(train_ids.len());
    ensure!(
        per_epoch > 0,
        "digits: expected at least one canvas per epoch"
    );
    let val_count = val_ids.len() * task.val_per_digit();
    let val: Vec<Canvas> = (0..val_count)
        .into_par_iter()
        .map(|i| match task {
            // The streams of `make_split`, which draws the validation canvases first.
            DigitsTask::Digit => draw_canvas(
                &digits[val_ids[i]],
                options,
                &mut SplitMix::new(options.seed, i as u64 + 1),
            ),
            DigitsTask::LargerDigit => {
                let mut rng = SplitMix::new(options.seed, PAIR_VAL_STREAMS + i as u64);
                let a = val_ids[rng.next_u64() as usize % val_ids.len()];
                let b = val_ids[rng.next_u64() as usize % val_ids.len()];
                draw_pair_canvas(&digits[a], &digits[b], options, &mut rng)
            }
        })
        .collect();
    let classes: Vec<String> = (0..CLASSES).map(|c| c.to_string()).collect();
    let train_digits = train_ids.iter().map(|&i| digits[i].clone()).collect();
    Ok(TaskSplit {
        train: TaskCanvases {
            task,
            classes: classes.clone(),
            draw: Draw::Fresh {
                digits: train_digits,
                options: options.clone(),
                per_epoch,
                draw_seed: 0,
            },
        },
        val: TaskCanvases {
            task,
            classes,
            draw: Draw::Fixed(val),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digits::{embedded_split, fingerprint};

    /// Per task: the first 16 validation canvases, epoch 0's 16 training canvases, and epoch
    /// 2's under draw seed 3; then epoch 1's digits under split seed 5 and draw seed 3.
    const PINNED: [u64; 7] = [
        12_071_066_267_754_000_302,
        15_727_693_734_719_959_590,
        1_881_479_364_038_128_577,
        6_484_391_306_004_974_868,
        14_858_038_156_341_634_760,
        8_557_310_248_500_657_037,
        4_769_153_905_603_847_937,
    ];

    fn pixels(canvases: &[Canvas]) -> Vec<u8> {
        canvases
            .iter()
            .flat_map(|c| c.image.as_raw().clone())
            .collect()
    }

    #[test]
    fn canvases_per_epoch_can_be_set_after_the_split() {
        let options = DigitsOptions::default();
        let split = task_split(DigitsTask::LargerDigit, &options, None).unwrap();
        assert_eq!(split.train.len(), 1348);
        let set = split.train.with_canvases_per_epoch(2 * 1348);
        assert_eq!(set.len(), 2 * 1348);
        // The same canvases as a split asked for that many.
        let asked = task_split(DigitsTask::LargerDigit, &options, Some(2 * 1348)).unwrap();
        let last = 2 * 1348 - 1;
        let pixels_at = |s: &TaskCanvases| s.canvas(1, last).unwrap().image.into_raw();
        assert_eq!(pixels_at(&set), pixels_at(&asked.train));
        // A fixed set keeps its canvases.
        assert_eq!(split.val.with_canvases_per_epoch(3).len(), 898);
    }

    #[test]
    fn digit_validation_canvases_are_those_of_the_image_folder_split() {
        let options = DigitsOptions::default();
        let split = task_split(DigitsTask::Digit, &options, None).unwrap();
        let folder = embedded_split(&DigitsOptions {
            train_copies: 1,
            ..options
        })
        .unwrap();
        assert_eq!(split.val.canvases(0).unwrap(), folder.val);
        assert_eq!(split.train.len(), folder.train.len());
        // A fixed set is the same in every epoch.
        assert_eq!(split.val.canvas(7, 3).unwrap(), folder.val[3]);
    }

    #[test]
    fn the_canvases_are_pinned() {
        // Pinned, so that a change to the generator, its streams or its layout is noticed:
        // the repro's figures and the embedded models' training depend on these canvases.
        let mut found = Vec::new();
        for task in DigitsTask::ALL {
            let split = task_split(task, &DigitsOptions::default(), Some(16)).unwrap();
            found.push(fingerprint(
                &split.val.clone().first(16).canvases(0).unwrap(),
            ));
            found.push(fingerprint(&split.train.canvases(0).unwrap()));
            found.push(fingerprint(
                &split.train.clone().with_draw_seed(3).canvases(2).unwrap(),
            ));
        }
        // Another split seed keys the streams with the draw seed.
        let options = DigitsOptions {
            seed: 5,
            ..DigitsOptions::default()
        };
        let split = task_split(DigitsTask::Digit, &options, Some(16)).unwrap();
        found.push(fingerprint(
            &split.train.with_draw_seed(3).canvases(1).unwrap(),
        ));
        assert_eq!(found, PINNED);
    }

    #[test]
    fn training_canvases_are_new_each_epoch_and_repeat_for_a_seed() {
        for task in DigitsTask::ALL {
            let split = task_split(task, &DigitsOptions::default(), Some(40)).unwrap();
            let train = &split.train;
            assert!(train.is_fresh() && !split.val.is_fresh());
            let first = train.canvases(0).unwrap();
            assert_eq!(first, train.canvases(0).unwrap(), "{task:?}");
            assert_ne!(
                pixels(&first),
                pixels(&train.canvases(1).unwrap()),
                "{task:?}"
            );
            let reseeded = train.clone().with_draw_seed(5).canvases(0).unwrap();
            assert_ne!(pixels(&first), pixels(&reseeded), "{task:?}");
            assert_eq!(first.len(), 40);
            assert!(train.canvas(0, 40).is_err());
        }
    }

    #[test]
    fn a_digit_canvas_of_epoch_e_shows_training_digit_i_mod_n() {
        let options = DigitsOptions::default();
        let split = task_split(DigitsTask::Digit, &options, Some(3000)).unwrap();
        let (_, train_ids) = split_ids(1797, &options);
        let digits = parse_digits(DIGITS_BIN).unwrap();
        for i in [0, 5, 1348, 2999] {
            let canvas = split.train.canvas(2, i).unwrap();
            let digit = &digits[train_ids[i % train_ids.len()]];
            assert_eq!(canvas.label, usize::from(digit.label));
        }
    }

    #[test]
    fn larger_digit_canvases_are_labelled_by_the_larger_with_the_digits_apart_inside_the_crop() {
        let options = DigitsOptions::default();
        let digits = parse_digits(DIGITS_BIN).unwrap();
        let mut labels = [0usize; CLASSES];
        for i in 0..400u64 {
            let (a, b) = (
                &digits[(i * 7 % 1797) as usize],
                &digits[(i * 13 % 1797) as usize],
            );
            let canvas = draw_pair_canvas(a, b, &options, &mut SplitMix::new(3, i));
            assert_eq!(canvas.label, usize::from(a.label.max(b.label)));
            labels[canvas.label] += 1;
            let (x0, y0, s0) = canvas.digit_box;
            let (x1, y1, s1) = canvas.second_box.unwrap();
            for (x, y, s) in [(x0, y0, s0), (x1, y1, s1)] {
                assert!((14..=18).contains(&s));
                // The evaluation crop keeps the central 7/8: 4 px of 64 on each side.
                assert!(
                    x >= 4 && y >= 4 && x + s <= 60 && y + s <= 60,
                    "{x} {y} {s}"
                );
            }
            let apart_x = x1 >= x0 + s0 + 2;
            let apart_y = y1 >= y0 + s0 + 2;
            assert!(
                apart_x || apart_y,
                "{:?} {:?}",
                canvas.digit_box,
                canvas.second_box
            );
        }
        // P(larger = k) = (2k + 1) / 100: every label but the rarest turns up.
        assert!(
            labels[1..].iter().all(|&n| n > 0) && labels[9] > 40,
            "{labels:?}"
        );
    }

    #[test]
    fn larger_digit_validation_uses_only_held_out_digits() {
        let options = DigitsOptions::default();
        let split = task_split(DigitsTask::LargerDigit, &options, Some(8)).unwrap();
        assert_eq!(split.val.len(), 2 * 449);
        let (val_ids, _) = split_ids(1797, &options);
        let digits = parse_digits(DIGITS_BIN).unwrap();
        // Each validation canvas's pixels are those of a pair of held-out digits drawn from its
        // stream: redraw canvas 11 from the validation digits and compare.
        let mut rng = SplitMix::new(options.seed, PAIR_VAL_STREAMS + 11);
        let a = val_ids[rng.next_u64() as usize % val_ids.len()];
        let b = val_ids[rng.next_u64() as usize % val_ids.len()];
        let redrawn = draw_pair_canvas(&digits[a], &digits[b], &options, &mut rng);
        assert_eq!(split.val.canvas(0, 11).unwrap(), redrawn);
    }

    #[test]
    fn batches_match_the_image_folder_of_the_same_canvases() {
        let dir = tempfile::tempdir().unwrap();
        let options = DigitsOptions::default();
        let split = task_split(DigitsTask::LargerDigit, &options, Some(12)).unwrap();
        crate::digits::write_image_folder(&split.drawn(1).unwrap(), dir.path()).unwrap();
        let transform = EvalTransform::for_size(64);
        assert_eq!(split.train.classes(), split.val.classes());
        let names: Vec<String> = (0..10).map(|c| c.to_string()).collect();
        assert_eq!(split.train.classes(), names.as_slice());
        let (mine, labels) = split.train.images(1, &[0, 5, 11], &transform).unwrap();
        // The folder sorts by class, then index: find canvases 0, 5 and 11 by their file.
        let canvases = split.train.canvases(1).unwrap();
        for (row, &i) in [0usize, 5, 11].iter().enumerate() {
            let path = dir
                .path()
                .join("train")
                .join(canvases[i].label.to_string())
                .join(format!("{i:05}.png"));
            let loaded = crate::preprocess::load_image(&path, &transform)
                .unwrap()
                .to_vec();
            let n = loaded.len();
            assert_eq!(&mine.to_vec()[row * n..(row + 1) * n], loaded.as_slice());
            assert_eq!(labels[row], canvases[i].label);
        }
    }

    #[test]
    fn canvas_views_are_seeded_as_a_folder_seeds_them() {
        // Image i of a batch is augmented with `seed ^ i * 0x9E37_79B9_7F4A_7C15`, as
        // `ImageFolder::train_batch` does, so a run's views do not depend on the batching.
        let split =
            task_split(DigitsTask::LargerDigit, &DigitsOptions::default(), Some(9)).unwrap();
        let augment = TrainTransform::for_size(64);
        let (views, _) = split
            .train
            .augmented_images(2, &[8, 3], &augment, 77)
            .unwrap();
        let n = 3 * 64 * 64;
        for (row, i) in [8u64, 3].into_iter().enumerate() {
            let canvas = split.train.canvas(2, i as usize).unwrap();
            let image = DynamicImage::ImageRgb8(canvas.image);
            let seed = 77 ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let expected = augment.apply(&image, seed).unwrap().to_vec();
            assert_eq!(&views.to_vec()[row * n..(row + 1) * n], expected.as_slice());
        }
    }

    #[test]
    fn a_canvas_too_small_for_two_digits_is_an_error() {
        let options = DigitsOptions {
            side: 32,
            digit_size: (8, 12),
            ..DigitsOptions::default()
        };
        let err = task_split(DigitsTask::LargerDigit, &options, None).unwrap_err();
        assert!(err.to_string().contains("do not fit apart"), "{err}");
        assert!(task_split(DigitsTask::Digit, &options, None).is_ok());
        // 42 px is the smallest side that holds the layout (margin 2, an 18 px digit and a
        // half-gap of 1 in each half of 21), and its canvases draw.
        for (side, fits) in [(42, true), (41, false)] {
            let options = DigitsOptions {
                side,
                ..DigitsOptions::default()
            };
            let split = task_split(DigitsTask::LargerDigit, &options, Some(20));
            assert_eq!(split.is_ok(), fits, "side {side}");
            if let Ok(split) = split {
                for c in split.train.canvases(0).unwrap() {
                    let (x, y, s) = c.second_box.unwrap();
                    assert!(x + s <= side - 2 && y + s <= side - 2);
                }
            }
        }
    }
}
