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

#[cfg(test)]
mod tests {
    use super::*;

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
