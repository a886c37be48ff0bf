//! Class names: ImageNet-1k's, shipped with the crate (source in `assets/README.md`), and
//! label files a user gives.

/// The 1000 ImageNet-1k class names, one per line, in class-index order.
const IMAGENET_1K: &str = include_str!("../assets/imagenet-1k.txt");

/// Number of ImageNet-1k classes.
pub const IMAGENET_1K_CLASSES: usize = 1000;

/// The names of the ImageNet-1k classes by index (each the WordNet lemmas of its synset,
/// comma separated: `"tench, Tinca tinca"`).
pub fn imagenet_1k() -> Vec<&'static str> {
    IMAGENET_1K.lines().collect()
}

/// The class names of a model with `classes` classes when no labels are given: ImageNet-1k's
/// for a 1000-class model (what a 1000-class head almost always predicts), none otherwise.
pub fn default_names(classes: usize) -> Option<Vec<&'static str>> {
    (classes == IMAGENET_1K_CLASSES).then(imagenet_1k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_1000_class_models_get_imagenet_names() {
        assert_eq!(default_names(1000), Some(imagenet_1k()));
        assert_eq!(default_names(10), None);
        assert_eq!(default_names(1001), None);
    }

    #[test]
    fn imagenet_names_are_in_class_order() {
        let names = imagenet_1k();
        assert_eq!(names.len(), IMAGENET_1K_CLASSES);
        assert_eq!(names[0], "tench, Tinca tinca");
        assert_eq!(names[1], "goldfish, Carassius auratus");
        assert_eq!(names[207], "golden retriever");
        assert_eq!(names[999], "toilet tissue, toilet paper, bathroom tissue");
        assert!(names.iter().all(|n| !n.is_empty() && n.trim() == *n));
    }
}
