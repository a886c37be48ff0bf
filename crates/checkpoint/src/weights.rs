//! The in-memory checkpoint and the reader a model pulls its weights from.

use std::collections::{BTreeMap, BTreeSet};

use idlevit_tensor::Tensor;

use crate::names::clip;
use crate::{CheckpointError, NameList, Result};

/// Named f32 tensors, ordered by name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Checkpoint {
    tensors: BTreeMap<String, Tensor>,
    skipped: BTreeMap<String, String>,
}

impl Checkpoint {
    /// Adds or replaces a tensor.
    pub fn insert(&mut self, name: impl Into<String>, tensor: Tensor) {
        self.tensors.insert(name.into(), tensor);
    }

    /// Records an entry that was present in the file but is not a float tensor, and why.
    pub fn skip(&mut self, name: impl Into<String>, reason: impl Into<String>) {
        self.skipped.insert(name.into(), reason.into());
    }

    /// The tensor stored under `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    /// Removes and returns the tensor stored under `name`.
    pub fn remove(&mut self, name: &str) -> Option<Tensor> {
        self.tensors.remove(name)
    }

    /// Tensor names and tensors, ordered by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.tensors.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Entries that were not float tensors, with the reason each was skipped.
    pub fn skipped(&self) -> impl Iterator<Item = (&str, &str)> {
        self.skipped.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether there are no tensors.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Looks up a tensor that must exist, with an error naming it otherwise.
    pub fn require(&self, name: &str) -> Result<&Tensor> {
        self.tensors.get(name).ok_or_else(|| self.missing(name))
    }

    fn missing(&self, name: &str) -> CheckpointError {
        let hint = if let Some(reason) = self.skipped.get(name) {
            format!(
                "; `{}` is stored as {}, which is not a float type",
                clip(name),
                clip(reason)
            )
        } else if let Some(near) = self
            .tensors
            .keys()
            .find(|k| k.ends_with(&format!(".{name}")))
        {
            format!(
                "; did you mean `{}`? (a prefix may need stripping)",
                clip(near)
            )
        } else {
            String::new()
        };
        CheckpointError::Missing {
            name: name.to_string(),
            available: self.tensors.len(),
            hint,
        }
    }
}

/// Hands a checkpoint's tensors to a model by name and expected shape, remembering which were
/// used so that [`WeightReader::finish`] can name the ones left over.
#[derive(Debug)]
pub struct WeightReader {
    checkpoint: Checkpoint,
    used: BTreeSet<String>,
}

impl WeightReader {
    /// Starts reading from a checkpoint.
    pub fn new(checkpoint: Checkpoint) -> Self {
        Self {
            checkpoint,
            used: BTreeSet::new(),
        }
    }

    /// The tensor `name`, which must have exactly `shape`.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let tensor = self.checkpoint.require(name)?;
        if tensor.shape() != shape {
            return Err(CheckpointError::Shape {
                name: name.to_string(),
                expected: shape.to_vec(),
                found: tensor.shape().to_vec(),
            });
        }
        self.used.insert(name.to_string());
        Ok(tensor.clone())
    }

    /// Whether the checkpoint holds `name` (for optional tensors such as a qkv bias).
    pub fn contains(&self, name: &str) -> bool {
        self.checkpoint.get(name).is_some()
    }

    /// Ends reading; an error names the tensors the model did not ask for (the first few, and
    /// how many more).
    pub fn finish(self) -> Result<()> {
        let unused = NameList::new(
            self.checkpoint
                .iter()
                .map(|(name, _)| name)
                .filter(|name| !self.used.contains(*name)),
        );
        if unused.is_empty() {
            Ok(())
        } else {
            Err(CheckpointError::Unexpected(unused))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_names_missing_misshaped_and_unexpected() {
        let mut ckpt = Checkpoint::default();
        ckpt.insert("module.head.weight", Tensor::zeros(&[2, 3]).unwrap());
        ckpt.insert("norm.weight", Tensor::zeros(&[3]).unwrap());
        let mut reader = WeightReader::new(ckpt);
        let missing = reader.take("head.weight", &[2, 3]).unwrap_err().to_string();
        assert!(
            missing.contains("head.weight") && missing.contains("module.head.weight"),
            "{missing}"
        );
        let shape = reader.take("norm.weight", &[4]).unwrap_err().to_string();
        assert_eq!(shape, "norm.weight: expected [4], found [3]");
        reader.take("norm.weight", &[3]).unwrap();
        let unexpected = reader.finish().unwrap_err().to_string();
        assert!(unexpected.contains("module.head.weight"), "{unexpected}");
    }
}
