//! Names echoed in messages, kept short: a hostile file can hold names of megabytes and
//! millions of keys, and an error or warning must stay one readable line.

use std::borrow::Cow;
use std::fmt;

/// Characters of one name (a key, a tensor, a global, an archive entry) an error message
/// shows; longer names are cut there and end with `…`.
pub const MAX_ECHOED_CHARS: usize = 120;

/// Names a [`NameList`] shows before saying how many more there are.
pub const MAX_LISTED_NAMES: usize = 20;

/// `text` cut to [`MAX_ECHOED_CHARS`] characters, with `…` when something was cut.
pub fn clip(text: &str) -> Cow<'_, str> {
    match text.char_indices().nth(MAX_ECHOED_CHARS) {
        Some((end, _)) => Cow::Owned(format!("{}…", &text[..end])),
        None => Cow::Borrowed(text),
    }
}

/// A list of names for a message: the first [`MAX_LISTED_NAMES`], each clipped, then
/// "and N more". It displays as `a, b, c and 17 more`, and as nothing when empty.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NameList {
    shown: Vec<String>,
    total: usize,
}

impl NameList {
    /// Keeps the first names of `names` and counts the rest without storing them.
    pub fn new<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> Self {
        let mut list = Self::default();
        for name in names {
            if list.shown.len() < MAX_LISTED_NAMES {
                list.shown.push(clip(name.as_ref()).into_owned());
            }
            list.total += 1;
        }
        list
    }

    /// How many names there were, shown or not.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Whether there were no names at all.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The names shown, each clipped.
    pub fn shown(&self) -> &[String] {
        &self.shown
    }
}

impl fmt::Display for NameList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown.join(", "))?;
        match self.total - self.shown.len() {
            0 => Ok(()),
            more => write!(f, " and {more} more"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_are_clipped_on_a_character_boundary() {
        assert_eq!(clip("short"), "short");
        let exact = "é".repeat(MAX_ECHOED_CHARS);
        assert_eq!(clip(&exact), exact);
        let long = format!("{exact}xyz");
        assert_eq!(clip(&long), format!("{exact}…"));
    }

    #[test]
    fn lists_show_a_bounded_prefix_and_count_the_rest() {
        assert_eq!(NameList::new(["a", "b"]).to_string(), "a, b");
        let empty = NameList::new(Vec::<String>::new());
        assert!(empty.is_empty());
        assert_eq!(empty.to_string(), "");
        let many = NameList::new((0..4_000_000).map(|i| format!("k{i}")));
        assert_eq!(many.total(), 4_000_000);
        let text = many.to_string();
        assert!(text.starts_with("k0, k1, "), "{text}");
        assert!(text.ends_with("k19 and 3999980 more"), "{text}");
        let huge = NameList::new(["x".repeat(1 << 20)]).to_string();
        assert_eq!(huge.chars().count(), MAX_ECHOED_CHARS + 1);
    }
}
