//! Choosing the dict that holds the weights and flattening it into dotted names.

use std::collections::HashSet;

use super::budget::{Budget, block_bytes, table_bytes};
use super::error::PthError;
use super::value::{Heap, ObjId, Object, quoted};
use crate::names::NameList;

/// Longest weight name accepted, in bytes, once nested dict keys are joined with dots. It also
/// bounds how deep nested dicts are followed.
pub const MAX_NAME_BYTES: usize = 4096;

/// The float tensors found (name and tensor object, in dict order) and the names of the other
/// entries.
#[derive(Debug, Default)]
pub(crate) struct Selection {
    pub tensors: Vec<(String, ObjId)>,
    pub skipped: Vec<String>,
}

/// Finds the weights under `root`: the entry `key` if given, else `model`, else `state_dict`,
/// else `root` itself.
pub(crate) fn select(heap: &Heap, root: ObjId, key: Option<&str>) -> Result<Selection, PthError> {
    let Object::Dict(top) = heap.get(root) else {
        let mut found = heap.describe(root);
        if let Object::Unknown(_) = heap.get(root) {
            found.push_str(" (a pickled Python object: save its state_dict() instead)");
        }
        return Err(PthError::NotADict {
            what: "the checkpoint's top-level object".into(),
            found,
        });
    };
    let top_keys = || {
        NameList::new(
            top.entries()
                .iter()
                .map(|&(k, _)| key_name(heap, k).unwrap_or_else(|| heap.describe(k))),
        )
    };
    let (chosen, name) = match key {
        Some(key) => match top.get_str(key) {
            Some(id) => (id, Some(key)),
            None => {
                return Err(PthError::MissingKey {
                    key: key.to_owned(),
                    available: top_keys(),
                });
            }
        },
        None => match (top.get_str("model"), top.get_str("state_dict")) {
            (Some(id), _) => (id, Some("model")),
            (None, Some(id)) => (id, Some("state_dict")),
            (None, None) => (root, None),
        },
    };
    let searched = name.map_or_else(|| "the top-level dict".to_owned(), |n| format!("`{n}`"));
    let selection = match (heap.get(chosen), name) {
        (Object::Dict(_), _) => flatten(heap, chosen)?,
        (Object::Tensor(view), Some(name)) if view.dtype.is_float() => {
            let mut selection = Selection::default();
            keep(
                heap.budget(),
                &mut selection.tensors,
                (name.to_owned(), chosen),
            )?;
            selection
        }
        _ => {
            return Err(PthError::NotADict {
                what: format!("entry {searched}"),
                found: heap.describe(chosen),
            });
        }
    };
    if selection.tensors.is_empty() {
        return Err(PthError::NoWeights {
            searched,
            keys: top_keys(),
        });
    }
    Ok(selection)
}

/// A dict key as a name component: strings as they are, integers in decimal.
fn key_name(heap: &Heap, key: ObjId) -> Option<String> {
    match heap.get(key) {
        Object::Str(s) => Some(s.clone()),
        Object::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn join(prefix: &str, part: &str) -> String {
    if prefix.is_empty() {
        part.to_owned()
    } else {
        format!("{prefix}.{part}")
    }
}

/// Appends `item`, a name and something, to `list`, charging `budget` for the slot and the
/// name's memory.
fn keep<T>(
    budget: &Budget,
    list: &mut Vec<(String, T)>,
    item: (String, T),
) -> Result<(), PthError> {
    budget.reserve(list, 1, None)?;
    budget.charge(block_bytes(item.0.capacity()), None)?;
    list.push(item);
    Ok(())
}

/// Appends the name of a skipped entry, charging `budget` for it.
fn skip(budget: &Budget, skipped: &mut Vec<String>, name: String) -> Result<(), PthError> {
    budget.reserve(skipped, 1, None)?;
    budget.charge(block_bytes(name.capacity()), None)?;
    skipped.push(name);
    Ok(())
}

/// Every float tensor under the dict `root`, nested dicts joined with dots. Walks with an
/// explicit stack, so depth costs no call stack, and enters each dict once, so a dict that
/// contains itself (or is shared) is listed as skipped instead of followed again. Every name
/// kept, and the walk's own bookkeeping, is charged to the heap's budget: a few kilobytes of
/// pickle can name one tensor under a hundred thousand names of 4 KB each.
fn flatten(heap: &Heap, root: ObjId) -> Result<Selection, PthError> {
    let budget = heap.budget();
    let mut selection = Selection::default();
    // Names kept so far, to refuse a second weight of the same name; freed at the end.
    let mut names = HashSet::new();
    let mut name_copies = 0;
    let mut entered = HashSet::new();
    budget.reserve_member(&mut entered, None)?;
    entered.insert(root);
    let Object::Dict(dict) = heap.get(root) else {
        return Ok(selection);
    };
    let mut frames = Vec::new();
    budget.reserve(&mut frames, 1, None)?;
    frames.push((String::new(), dict.entries().iter()));
    while let Some((prefix, entries)) = frames.last_mut() {
        let Some(&(key, value)) = entries.next() else {
            frames.pop();
            continue;
        };
        let Some(part) = key_name(heap, key) else {
            let name = join(prefix, &format!("<{}>", heap.describe(key)));
            skip(budget, &mut selection.skipped, name)?;
            continue;
        };
        let name = join(prefix, &part);
        if name.len() > MAX_NAME_BYTES {
            return Err(PthError::Limit {
                what: format!("length of the weight name starting {}", quoted(&name)),
                limit: MAX_NAME_BYTES,
                offset: None,
            });
        }
        match heap.get(value) {
            Object::Tensor(view) if view.dtype.is_float() => {
                if names.contains(&name) {
                    return Err(PthError::DuplicateName { name });
                }
                budget.reserve_member(&mut names, None)?;
                budget.charge(block_bytes(name.len()), None)?;
                name_copies += block_bytes(name.len());
                names.insert(name.clone());
                keep(budget, &mut selection.tensors, (name, value))?;
            }
            Object::Dict(inner) if !entered.contains(&value) => {
                budget.reserve_member(&mut entered, None)?;
                entered.insert(value);
                budget.reserve(&mut frames, 1, None)?;
                budget.charge(block_bytes(name.capacity()), None)?;
                frames.push((name, inner.entries().iter()));
            }
            _ => skip(budget, &mut selection.skipped, name)?,
        }
    }
    budget.release(table_bytes(names.capacity(), size_of::<String>()) + name_copies);
    Ok(selection)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pth::globals::DType;
    use crate::pth::value::{Storage, TensorView};

    struct Builder {
        heap: Heap,
    }

    impl Builder {
        fn new() -> Self {
            Self {
                heap: Heap::default(),
            }
        }

        fn obj(&mut self, object: Object) -> ObjId {
            self.heap.alloc(object, 0).unwrap()
        }

        fn tensor(&mut self, dtype: DType) -> ObjId {
            self.obj(Object::Tensor(Box::new(TensorView {
                storage: Storage {
                    key: "0".into(),
                    dtype,
                    numel: 1,
                },
                dtype,
                offset: 0,
                shape: vec![1],
                stride: vec![1],
            })))
        }

        fn dict(&mut self, entries: &[(&str, ObjId)]) -> ObjId {
            let dict = self.obj(Object::Dict(Box::default()));
            for &(k, v) in entries {
                let key = self.obj(Object::Str(k.into()));
                self.heap.dict_set(dict, key, v, 0).unwrap();
            }
            dict
        }
    }

    fn names(selection: &Selection) -> Vec<&str> {
        selection.tensors.iter().map(|(n, _)| n.as_str()).collect()
    }

    #[test]
    fn prefers_model_then_state_dict_then_the_top_level() {
        let mut b = Builder::new();
        let (t1, t2, t3) = (
            b.tensor(DType::F32),
            b.tensor(DType::F16),
            b.tensor(DType::F32),
        );
        let model = b.dict(&[("a", t1)]);
        let sd = b.dict(&[("b", t2)]);
        let root = b.dict(&[("state_dict", sd), ("model", model), ("c", t3)]);
        assert_eq!(names(&select(&b.heap, root, None).unwrap()), ["a"]);
        assert_eq!(
            names(&select(&b.heap, root, Some("state_dict")).unwrap()),
            ["b"]
        );
        assert_eq!(names(&select(&b.heap, root, Some("c")).unwrap()), ["c"]);
        let root = b.dict(&[("state_dict", sd), ("c", t3)]);
        assert_eq!(names(&select(&b.heap, root, None).unwrap()), ["b"]);
        let root = b.dict(&[("x", model), ("c", t3)]);
        assert_eq!(names(&select(&b.heap, root, None).unwrap()), ["x.a", "c"]);
    }

    #[test]
    fn flattens_nested_dicts_and_lists_the_rest() {
        let mut b = Builder::new();
        let (t1, t2) = (b.tensor(DType::BF16), b.tensor(DType::F64));
        let ints = b.tensor(DType::I64);
        let epoch = b.obj(Object::Int(3));
        let inner = b.dict(&[("w", t1), ("steps", ints)]);
        let root = b.dict(&[("blocks", inner), ("bias", t2), ("epoch", epoch)]);
        let selection = select(&b.heap, root, None).unwrap();
        assert_eq!(names(&selection), ["blocks.w", "bias"]);
        assert_eq!(selection.skipped, ["blocks.steps", "epoch"]);
    }

    #[test]
    fn cycles_are_skipped_not_followed() {
        let mut b = Builder::new();
        let t = b.tensor(DType::F32);
        let inner = b.dict(&[("w", t)]);
        let self_key = b.obj(Object::Str("me".into()));
        b.heap.dict_set(inner, self_key, inner, 0).unwrap();
        let root = b.dict(&[("m", inner)]);
        let selection = select(&b.heap, root, None).unwrap();
        assert_eq!(names(&selection), ["m.w"]);
        assert_eq!(selection.skipped, ["m.me"]);
    }

    #[test]
    fn reports_what_it_could_not_find() {
        let mut b = Builder::new();
        let five = b.obj(Object::Int(5));
        let root = b.dict(&[("epoch", five), ("args", five)]);
        let err = select(&b.heap, root, None).unwrap_err();
        assert!(matches!(err, PthError::NoWeights { .. }));
        assert!(err.to_string().contains("epoch, args"), "{err}");
        let err = select(&b.heap, root, Some("ema")).unwrap_err();
        assert!(
            err.to_string().contains("no top-level entry `ema`"),
            "{err}"
        );
        assert!(err.to_string().contains("epoch, args"), "{err}");
        let err = select(&b.heap, five, None).unwrap_err();
        assert!(err.to_string().contains("found int 5"), "{err}");
        let root = b.dict(&[("model", five)]);
        let err = select(&b.heap, root, None).unwrap_err();
        assert!(
            err.to_string().contains("entry `model` to be a dict"),
            "{err}"
        );
    }

    #[test]
    fn duplicate_and_overlong_names_are_refused() {
        let mut b = Builder::new();
        let t = b.tensor(DType::F32);
        let inner = b.dict(&[("b", t)]);
        let root = b.dict(&[("a.b", t), ("a", inner)]);
        assert!(matches!(
            select(&b.heap, root, None),
            Err(PthError::DuplicateName { .. })
        ));
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        let root = b.dict(&[(long.as_str(), t)]);
        assert!(matches!(
            select(&b.heap, root, None),
            Err(PthError::Limit { .. })
        ));
    }
}
