//! Image-folder data sets: one sub-folder per class, images inside.

use std::path::{Path, PathBuf};

use idlevit_tensor::Tensor;

use crate::augment::TrainTransform;
use crate::error::ensure;
use crate::preprocess::{EvalTransform, load_image, read_image};
use crate::{DataError, Result};

/// File extensions read as images.
const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "bmp", "gif", "webp", "tif", "tiff"];

/// A labelled image set laid out as `DIR/<class>/<image>`; classes are the sub-folders in
/// name order, so class `i` is the `i`-th folder name sorted.
#[derive(Clone, Debug)]
pub struct ImageFolder {
    classes: Vec<String>,
    items: Vec<(PathBuf, usize)>,
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries = std::fs::read_dir(dir)
        .map_err(|e| DataError::Io("cannot read data directory", dir.into(), e))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| DataError::Io("cannot list", dir.into(), e))?;
    entries.sort();
    Ok(entries)
}

fn folder_name(dir: &Path) -> String {
    dir.file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

impl ImageFolder {
    /// Scans `root`; an empty or unreadable directory, or a class folder with no images, is
    /// an error naming it. Classes are numbered by the sorted folder names.
    pub fn open(root: &Path) -> Result<Self> {
        Self::scan(root, None)
    }

    /// Scans `root` as a set labelled like `classes` (a training set's): each class folder
    /// takes the label of its name in `classes`, so a validation set holding only some of
    /// the classes is labelled as training labelled them. A folder whose name is not among
    /// `classes` is an error.
    pub fn open_with_classes(root: &Path, classes: &[String]) -> Result<Self> {
        Self::scan(root, Some(classes))
    }

    fn scan(root: &Path, known: Option<&[String]>) -> Result<Self> {
        let class_dirs: Vec<PathBuf> = sorted_entries(root)?
            .into_iter()
            .filter(|p| p.is_dir())
            .collect();
        ensure!(
            !class_dirs.is_empty(),
            "{} has no class sub-folders (expected DIR/<class>/<images>)",
            root.display()
        );
        let mut classes = Vec::new();
        let mut items = Vec::new();
        for (index, dir) in class_dirs.iter().enumerate() {
            let name = folder_name(dir);
            let images: Vec<PathBuf> = sorted_entries(dir)?
                .into_iter()
                .filter(|p| p.is_file() && is_image(p))
                .collect();
            ensure!(
                !images.is_empty(),
                "{}",
                empty_class_message(root, dir, &name)
            );
            let label = match known {
                None => index,
                Some(known) => known.iter().position(|k| *k == name).ok_or_else(|| {
                    DataError::Invalid(format!(
                        "class folder {} is not a class of the training set ({} classes: {})",
                        dir.display(),
                        known.len(),
                        idlevit_checkpoint::NameList::new(known)
                    ))
                })?,
            };
            classes.push(name);
            items.extend(images.into_iter().map(|p| (p, label)));
        }
        if let Some(known) = known {
            classes = known.to_vec();
        }
        Ok(Self { classes, items })
    }

    /// Class names, by label.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// The number of images.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the set has no images (never true for an opened set).
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The images at `indices`, preprocessed into `(batch, 3, crop, crop)`, and their labels.
    pub fn batch(
        &self,
        indices: &[usize],
        transform: &EvalTransform,
    ) -> Result<(Tensor, Vec<usize>)> {
        self.load_batch(indices, transform.crop as usize, |path, _| {
            load_image(path, transform)
        })
    }

    /// The images at `indices` through the training augmentation, into
    /// `(batch, 3, size, size)`, and their labels. Image `i` is augmented with a seed drawn
    /// from `seed` and `i`, so an epoch's views repeat for the same seed.
    pub fn train_batch(
        &self,
        indices: &[usize],
        transform: &TrainTransform,
        seed: u64,
    ) -> Result<(Tensor, Vec<usize>)> {
        self.load_batch(indices, transform.size as usize, |path, i| {
            let image = read_image(path)?;
            transform
                .apply(&image, crate::set::image_seed(seed, i))
                .map_err(|e| DataError::Image("cannot augment", path.into(), Box::new(e)))
        })
    }

    /// Loads the images at `indices` in parallel on the current rayon pool. Each image keeps
    /// its batch position and draws only from its own seed, so the batch, and the first error
    /// in batch order, are the same on any number of threads.
    fn load_batch(
        &self,
        indices: &[usize],
        side: usize,
        load: impl Fn(&Path, usize) -> Result<Tensor> + Sync,
    ) -> Result<(Tensor, Vec<usize>)> {
        crate::set::load_batch(indices, side, |i| {
            let (path, label) = self
                .items
                .get(i)
                .ok_or_else(|| DataError::Invalid(format!("image {i} is out of range")))?;
            Ok((load(path, i)?, *label))
        })
    }
}

/// Why class folder `dir` of `root` holding no images is an error; a `train` or `val`
/// folder there means the user gave a finetuning data set where one split was expected.
fn empty_class_message(root: &Path, dir: &Path, name: &str) -> String {
    if (name == "train" || name == "val") && root.join("train").is_dir() {
        let split = if root.join("val").is_dir() {
            "val"
        } else {
            "train"
        };
        return format!(
            "{} holds train/ and val/ splits, not class folders: give one split, e.g. {}",
            root.display(),
            root.join(split).display()
        );
    }
    format!(
        "class folder {} holds no images ({})",
        dir.display(),
        IMAGE_EXTENSIONS.join(", ")
    )
}

/// A seeded permutation of `0..n` (Fisher–Yates over SplitMix64), for per-epoch shuffles
/// that any run with the same seed repeats.
pub fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = crate::digits::SplitMix(seed);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(root: &Path, classes: &[&str]) {
        for class in classes {
            let dir = root.join(class);
            std::fs::create_dir_all(&dir).expect("class folder");
            image::RgbImage::new(4, 4)
                .save(dir.join("0.png"))
                .expect("image");
        }
    }

    #[test]
    fn a_validation_set_is_labelled_as_its_training_set() {
        let tmp = tempfile::Builder::new()
            .prefix("idlevit-data-")
            .tempdir()
            .expect("scratch folder");
        let root = tmp.path();
        folder(&root.join("train"), &["cat", "dog", "fox"]);
        folder(&root.join("val"), &["fox"]);
        let train = ImageFolder::open(&root.join("train")).expect("train");
        let val = ImageFolder::open_with_classes(&root.join("val"), train.classes()).expect("val");
        assert_eq!(val.classes(), train.classes());
        assert_eq!(val.items[0].1, 2, "fox is class 2 in training");
        // Opened on its own, the one folder would be class 0.
        assert_eq!(
            ImageFolder::open(&root.join("val")).expect("alone").items[0].1,
            0
        );

        folder(&root.join("val"), &["wolf"]);
        let err = ImageFolder::open_with_classes(&root.join("val"), train.classes())
            .expect_err("unknown class");
        assert!(err.to_string().contains("wolf"), "{err}");
    }
}
