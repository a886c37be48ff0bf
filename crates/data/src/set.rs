//! Labelled image sets that batches are drawn from: an [`ImageFolder`] on disk, or canvases
//! drawn in memory ([`crate::tasks::TaskCanvases`]), which may draw new images every epoch.

use idlevit_tensor::Tensor;
use rayon::prelude::*;

use crate::Result;
use crate::augment::TrainTransform;
use crate::folder::ImageFolder;
use crate::preprocess::{EvalTransform, batch_values};

/// A labelled image set whose images can be batched by index.
///
/// `epoch` lets a generated set draw new images every epoch; a set on disk ignores it and
/// gives the same image for an index in every epoch.
pub trait ImageSet: Sync + std::fmt::Debug {
    /// Class names, by label.
    fn classes(&self) -> &[String];

    /// The number of images in one epoch.
    fn len(&self) -> usize;

    /// Whether the set holds no images.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The images at `indices` in `epoch`, preprocessed by `transform` into
    /// `(batch, 3, crop, crop)`, and their labels.
    fn images(
        &self,
        epoch: usize,
        indices: &[usize],
        transform: &EvalTransform,
    ) -> Result<(Tensor, Vec<usize>)>;

    /// The images at `indices` in `epoch` through the training augmentation, image `i`
    /// augmented with a seed drawn from `seed` and `i`, and their labels.
    fn augmented_images(
        &self,
        epoch: usize,
        indices: &[usize],
        transform: &TrainTransform,
        seed: u64,
    ) -> Result<(Tensor, Vec<usize>)>;
}

impl ImageSet for ImageFolder {
    fn classes(&self) -> &[String] {
        ImageFolder::classes(self)
    }

    fn len(&self) -> usize {
        ImageFolder::len(self)
    }

    fn images(
        &self,
        _epoch: usize,
        indices: &[usize],
        transform: &EvalTransform,
    ) -> Result<(Tensor, Vec<usize>)> {
        self.batch(indices, transform)
    }

    fn augmented_images(
        &self,
        _epoch: usize,
        indices: &[usize],
        transform: &TrainTransform,
        seed: u64,
    ) -> Result<(Tensor, Vec<usize>)> {
        self.train_batch(indices, transform, seed)
    }
}

/// The augmentation seed of image `index` in a batch augmented with `seed`: every image set
/// derives it the same way, so a folder and the canvases written into it augment alike.
pub(crate) fn image_seed(seed: u64, index: usize) -> u64 {
    seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The images of `indices`, each made by `load(index)` as `(3, side, side)` with its label,
/// in parallel on the current rayon pool, stacked into `(batch, 3, side, side)`. Each image
/// keeps its batch position, so the batch, and the first error in batch order, are the
/// same on any number of threads.
pub(crate) fn load_batch(
    indices: &[usize],
    side: usize,
    load: impl Fn(usize) -> Result<(Tensor, usize)> + Sync,
) -> Result<(Tensor, Vec<usize>)> {
    let values = batch_values(indices.len(), side)?;
    let loaded: Vec<Result<(Tensor, usize)>> = indices.par_iter().map(|&i| load(i)).collect();
    let mut pixels = Vec::with_capacity(values);
    let mut labels = Vec::with_capacity(indices.len());
    for image in loaded {
        let (image, label) = image?;
        pixels.extend(image.into_vec());
        labels.push(label);
    }
    Ok((
        Tensor::from_vec(vec![indices.len(), 3, side, side], pixels)?,
        labels,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digits::{DigitsOptions, write_image_folder};
    use crate::tasks::{DigitsTask, task_split};

    #[test]
    fn a_folder_is_an_image_set_of_its_own_images() {
        let dir = tempfile::tempdir().unwrap();
        let split = task_split(DigitsTask::Digit, &DigitsOptions::default(), Some(30)).unwrap();
        write_image_folder(&split.drawn(0).unwrap(), dir.path()).unwrap();
        // The validation half holds every class.
        let folder = ImageFolder::open(&dir.path().join("val")).unwrap();
        let set: &dyn ImageSet = &folder;
        assert_eq!((set.len(), set.is_empty()), (449, false));
        let names: Vec<String> = (0..10).map(|c| c.to_string()).collect();
        assert_eq!(set.classes(), names.as_slice());
        // Every epoch of a folder is the folder itself.
        let transform = EvalTransform::for_size(64);
        let (images, labels) = set.images(3, &[0, 448], &transform).unwrap();
        let (expected, expected_labels) = folder.batch(&[0, 448], &transform).unwrap();
        assert_eq!(images.to_vec(), expected.to_vec());
        assert_eq!(labels, expected_labels);
        let augment = TrainTransform::for_size(64);
        let (views, _) = set.augmented_images(5, &[1, 2], &augment, 9).unwrap();
        let (expected, _) = folder.train_batch(&[1, 2], &augment, 9).unwrap();
        assert_eq!(views.to_vec(), expected.to_vec());
        // A set with no canvases says so.
        assert!(split.val.first(0).is_empty());
    }

    #[test]
    fn tasks_are_named_as_on_the_command_line() {
        let names: Vec<&str> = DigitsTask::ALL.iter().map(|t| t.name()).collect();
        assert_eq!(names, ["digits", "larger-digit"]);
    }
}
