//! The object graph a pickle builds.
//!
//! Objects live in one arena ([`Heap`]) and refer to each other by [`ObjId`]. Pickles share
//! objects through the memo and mutate containers after memoizing them (a dict is memoized
//! empty, then filled), so values must be references, not copies; an arena gives that without
//! reference counting, and a cycle built by a hostile pickle is just an index pointing back.

use std::collections::HashMap;
use std::fmt;

use super::budget::{Budget, block_bytes, table_bytes, vec_bytes};
use super::error::PthError;
use super::globals::{DType, Known};

/// Index of an object in the [`Heap`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ObjId(usize);

/// A global as a pickle names it (`GLOBAL module name`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Global {
    pub module: String,
    pub name: String,
}

impl Global {
    /// The global `module.name`.
    pub fn new(module: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            module: module.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for Global {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.module, self.name)
    }
}

/// A storage named by a persistent id: the archive entry `data/<key>` read as `numel`
/// elements of `dtype`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Storage {
    pub key: String,
    pub dtype: DType,
    pub numel: usize,
}

impl Storage {
    /// Bytes the storage declares, or `None` when that overflows.
    pub fn nbytes(&self) -> Option<usize> {
        self.numel.checked_mul(self.dtype.size())
    }
}

/// A tensor as `_rebuild_tensor*` describes it: a strided view of elements of `dtype` into a
/// storage. Nothing is read until the weights are materialized.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TensorView {
    pub storage: Storage,
    pub dtype: DType,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

/// The inert stand-in for anything built from a global this reader does not understand.
/// Calls, `BUILD`s and item insertions on it are recorded, never performed.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Unknown {
    pub global: Global,
    /// The argument tuple of the call that made it, if any.
    pub args: Option<ObjId>,
    pub state: Option<ObjId>,
    pub items: Vec<ObjId>,
}

/// Keys of the kinds a dict can look up in constant time; other keys (tuples, floats) are kept
/// but never deduplicated.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum DictKey {
    None,
    Int(i64),
    Str(String),
    Bytes(Vec<u8>),
}

/// An insertion-ordered dict. Re-setting a key replaces the value in place, as Python does.
///
/// Keys are matched first by object identity, so that a pickle re-using one memoized key many
/// times costs one hash of its contents, not one per use.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Dict {
    entries: Vec<(ObjId, ObjId)>,
    by_value: HashMap<DictKey, usize>,
    by_id: HashMap<ObjId, usize>,
    /// Heap bytes of the key contents copied into `by_value`.
    key_bytes: usize,
}

impl Dict {
    /// Sets `key` to `value` in a dict that is not (yet) in the heap; it is charged whole when
    /// it is stored.
    pub fn insert(&mut self, heap: &Heap, key: ObjId, value: ObjId) {
        if !self.set_by_id(key, value) {
            self.insert_new(heap.dict_key(key), key, value);
        }
    }

    /// Sets `key` to `value`, charging `budget` for any growth before it happens.
    fn insert_charged(
        &mut self,
        budget: &Budget,
        lookup: Option<DictKey>,
        key: ObjId,
        value: ObjId,
        offset: Option<usize>,
    ) -> Result<(), PthError> {
        if self.set_by_id(key, value) {
            return Ok(());
        }
        budget.reserve_entry(&mut self.by_id, offset)?;
        let known = lookup
            .as_ref()
            .is_some_and(|l| self.by_value.contains_key(l));
        if !known {
            budget.reserve(&mut self.entries, 1, offset)?;
            if let Some(lookup) = &lookup {
                budget.reserve_entry(&mut self.by_value, offset)?;
                budget.charge(block_bytes(lookup.content_len()), offset)?;
            }
        }
        self.insert_new(lookup, key, value);
        Ok(())
    }

    /// Heap bytes of the entries, both indexes and the copied key contents.
    fn heap_bytes(&self) -> usize {
        vec_bytes::<(ObjId, ObjId)>(self.entries.capacity())
            .saturating_add(table_bytes(
                self.by_value.capacity(),
                size_of::<(DictKey, usize)>(),
            ))
            .saturating_add(table_bytes(
                self.by_id.capacity(),
                size_of::<(ObjId, usize)>(),
            ))
            .saturating_add(self.key_bytes)
    }

    /// Replaces the value of the entry whose key is the object `key`, if there is one.
    fn set_by_id(&mut self, key: ObjId, value: ObjId) -> bool {
        match self.by_id.get(&key).and_then(|&i| self.entries.get_mut(i)) {
            Some(entry) => {
                entry.1 = value;
                true
            }
            None => false,
        }
    }

    /// Sets `key`, which is not among the keys by identity and whose lookup form is `lookup`.
    fn insert_new(&mut self, lookup: Option<DictKey>, key: ObjId, value: ObjId) {
        let existing = lookup.as_ref().and_then(|l| self.by_value.get(l)).copied();
        match existing.and_then(|i| Some((i, self.entries.get_mut(i)?))) {
            Some((i, entry)) => {
                entry.1 = value;
                self.by_id.insert(key, i);
            }
            None => {
                let i = self.entries.len();
                if let Some(lookup) = lookup {
                    self.key_bytes = self
                        .key_bytes
                        .saturating_add(block_bytes(lookup.content_len()));
                    self.by_value.insert(lookup, i);
                }
                self.by_id.insert(key, i);
                self.entries.push((key, value));
            }
        }
    }

    /// The entries in insertion order.
    pub fn entries(&self) -> &[(ObjId, ObjId)] {
        &self.entries
    }

    /// The value stored under the string key `key`.
    pub fn get_str(&self, key: &str) -> Option<ObjId> {
        let i = *self.by_value.get(&DictKey::Str(key.to_owned()))?;
        self.entries.get(i).map(|&(_, v)| v)
    }
}

impl DictKey {
    /// Bytes of contents the key owns.
    fn content_len(&self) -> usize {
        match self {
            DictKey::Str(s) => s.len(),
            DictKey::Bytes(b) => b.len(),
            DictKey::None | DictKey::Int(_) => 0,
        }
    }
}

/// Every kind of value the interpreter produces.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Object {
    None,
    Bool(bool),
    Int(i64),
    /// An integer that does not fit in 64 bits; its value is never needed.
    BigInt,
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<ObjId>),
    List(Vec<ObjId>),
    Dict(Box<Dict>),
    Set(Vec<ObjId>),
    /// A global reference, with what it means when it is one this reader understands.
    Global(Box<Global>, Option<Known>),
    DType(DType),
    Device(String),
    // The larger kinds are boxed to keep every object small: a pickle can make one per byte.
    Storage(Box<Storage>),
    Tensor(Box<TensorView>),
    Unknown(Box<Unknown>),
}

const NONE: Object = Object::None;

/// The arena holding every object of one pickle.
///
/// It holds the checkpoint's memory [`Budget`], charged for every object and every item added
/// to a container, so that no sequence of opcodes can turn a small pickle into an unbounded
/// allocation (calls that copy their arguments, such as `set(list)`, applied many times to one
/// memoized object, or a long memoized key inserted into many dicts). What is built from the
/// objects later (names, lists, the returned weights) is charged to the same budget.
#[derive(Debug)]
pub(crate) struct Heap {
    objects: Vec<Object>,
    budget: Budget,
}

impl Default for Heap {
    fn default() -> Self {
        Self::with_budget(usize::MAX)
    }
}

impl Heap {
    /// An empty heap whose objects, and everything built from them, may take at most `budget`
    /// bytes.
    pub fn with_budget(budget: usize) -> Self {
        Self {
            objects: Vec::new(),
            budget: Budget::new(budget),
        }
    }

    /// The memory budget everything built from this heap is charged to.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Stores `object` and returns its id; `offset` locates the opcode building it.
    pub fn alloc(&mut self, object: Object, offset: usize) -> Result<ObjId, PthError> {
        self.budget.reserve(&mut self.objects, 1, Some(offset))?;
        self.budget.charge(object.heap_bytes(), Some(offset))?;
        self.objects.push(object);
        Ok(ObjId(self.objects.len() - 1))
    }

    /// Appends `items` to the list (or, with `set`, the set) `target`, or records them on an
    /// inert object; `Ok(false)` when `target` is none of these.
    pub fn extend(
        &mut self,
        target: ObjId,
        items: &[ObjId],
        set: bool,
        offset: usize,
    ) -> Result<bool, PthError> {
        let existing = match (self.objects.get_mut(target.0), set) {
            (Some(Object::List(existing)), false) | (Some(Object::Set(existing)), true) => existing,
            (Some(Object::Unknown(unknown)), _) => &mut unknown.items,
            _ => return Ok(false),
        };
        self.budget.reserve(existing, items.len(), Some(offset))?;
        existing.extend_from_slice(items);
        Ok(true)
    }

    /// Sets `dict[key] = value`; `Ok(false)` when `dict` is not a dict.
    pub fn dict_set(
        &mut self,
        dict: ObjId,
        key: ObjId,
        value: ObjId,
        offset: usize,
    ) -> Result<bool, PthError> {
        let Object::Dict(d) = self.get(dict) else {
            return Ok(false);
        };
        let known_id = d.by_id.contains_key(&key);
        let lookup = if known_id { None } else { self.dict_key(key) };
        let Some(Object::Dict(d)) = self.objects.get_mut(dict.0) else {
            return Ok(false);
        };
        d.insert_charged(&self.budget, lookup, key, value, Some(offset))?;
        Ok(true)
    }

    /// The object behind `id`.
    pub fn get(&self, id: ObjId) -> &Object {
        // Ids only come from `alloc` and the arena never shrinks, so the fallback is unreachable;
        // it exists so that no lookup can panic.
        self.objects.get(id.0).unwrap_or(&NONE)
    }

    /// The object behind `id`, for mutation.
    pub fn get_mut(&mut self, id: ObjId) -> Option<&mut Object> {
        self.objects.get_mut(id.0)
    }

    /// The string behind `id`, if it is one.
    pub fn as_str(&self, id: ObjId) -> Option<&str> {
        match self.get(id) {
            Object::Str(s) => Some(s),
            _ => None,
        }
    }

    /// How `id` is looked up when used as a dict key.
    pub fn dict_key(&self, id: ObjId) -> Option<DictKey> {
        match self.get(id) {
            Object::None => Some(DictKey::None),
            Object::Bool(b) => Some(DictKey::Int(i64::from(*b))),
            Object::Int(i) => Some(DictKey::Int(*i)),
            Object::Str(s) => Some(DictKey::Str(s.clone())),
            Object::Bytes(b) => Some(DictKey::Bytes(b.clone())),
            _ => None,
        }
    }

    /// A short description of `id` for error messages ("int 3", "tuple of 2 items").
    pub fn describe(&self, id: ObjId) -> String {
        match self.get(id) {
            Object::None => "None".into(),
            Object::Bool(b) => if *b { "True" } else { "False" }.into(),
            Object::Int(i) => format!("int {i}"),
            Object::BigInt => "an integer wider than 64 bits".into(),
            Object::Float(x) => format!("float {x}"),
            Object::Str(s) => format!("str {}", quoted(s)),
            Object::Bytes(b) => format!("bytes of length {}", b.len()),
            Object::Tuple(items) => format!("tuple of {} items", items.len()),
            Object::List(items) => format!("list of {} items", items.len()),
            Object::Dict(dict) => format!("dict of {} entries", dict.entries().len()),
            Object::Set(items) => format!("set of {} items", items.len()),
            Object::Global(global, _) => format!("global `{global}`"),
            Object::DType(dtype) => format!("dtype torch.{}", dtype.name()),
            Object::Device(device) => format!("device {device:?}"),
            Object::Storage(s) => format!("storage `{}` of {} {}", s.key, s.numel, s.dtype.name()),
            Object::Tensor(t) => format!("{} tensor of shape {:?}", t.dtype.name(), t.shape),
            Object::Unknown(u) => format!("object of unknown global `{}`", u.global),
        }
    }
}

impl Object {
    /// The inert result of calling `global`, which is not understood, with the tuple `args`.
    pub fn inert(global: Global, args: ObjId) -> Self {
        Object::Unknown(Box::new(Unknown {
            global,
            args: Some(args),
            state: None,
            items: Vec::new(),
        }))
    }

    /// Heap bytes the object owns, beyond its slot in the arena: every block it points to, as
    /// the allocator sizes it, and every vector at its capacity.
    fn heap_bytes(&self) -> usize {
        let text = |s: &String| block_bytes(s.capacity());
        let global = |g: &Global| text(&g.module).saturating_add(text(&g.name));
        match self {
            Object::Str(s) | Object::Device(s) => text(s),
            Object::Bytes(b) => block_bytes(b.capacity()),
            Object::Tuple(items) | Object::List(items) | Object::Set(items) => {
                vec_bytes::<ObjId>(items.capacity())
            }
            Object::Dict(dict) => block_bytes(size_of::<Dict>()).saturating_add(dict.heap_bytes()),
            Object::Global(g, _) => block_bytes(size_of::<Global>()).saturating_add(global(g)),
            Object::Storage(storage) => {
                block_bytes(size_of::<Storage>()).saturating_add(text(&storage.key))
            }
            Object::Tensor(view) => block_bytes(size_of::<TensorView>())
                .saturating_add(text(&view.storage.key))
                .saturating_add(vec_bytes::<usize>(view.shape.capacity()))
                .saturating_add(vec_bytes::<usize>(view.stride.capacity())),
            Object::Unknown(unknown) => block_bytes(size_of::<Unknown>())
                .saturating_add(global(&unknown.global))
                .saturating_add(vec_bytes::<ObjId>(unknown.items.capacity())),
            Object::None
            | Object::Bool(_)
            | Object::Int(_)
            | Object::BigInt
            | Object::Float(_)
            | Object::DType(_) => 0,
        }
    }
}

/// `s` quoted, cut to its first characters so that a megabyte string does not end up in an
/// error message.
pub(crate) fn quoted(s: &str) -> String {
    const MAX_CHARS: usize = 40;
    if s.chars().count() <= MAX_CHARS {
        format!("{s:?}")
    } else {
        let short: String = s.chars().take(MAX_CHARS).collect();
        format!("{short:?}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dict_replaces_values_in_place() {
        let mut heap = Heap::default();
        let mut alloc = |o| heap.alloc(o, 0).unwrap();
        let a = alloc(Object::Str("a".into()));
        let a_again = alloc(Object::Str("a".into()));
        let b = alloc(Object::Str("b".into()));
        let one = alloc(Object::Int(1));
        let two = alloc(Object::Int(2));
        let dict = alloc(Object::Dict(Box::default()));
        assert!(heap.dict_set(dict, a, one, 0).unwrap());
        assert!(heap.dict_set(dict, b, one, 0).unwrap());
        assert!(heap.dict_set(dict, a_again, two, 0).unwrap());
        let Object::Dict(d) = heap.get(dict) else {
            panic!("not a dict")
        };
        assert_eq!(d.entries(), &[(a, two), (b, one)]);
        assert_eq!(d.get_str("a"), Some(two));
        assert_eq!(d.get_str("c"), None);
        assert!(!heap.dict_set(one, a, one, 0).unwrap());
    }

    #[test]
    fn unhashable_keys_are_kept_in_order() {
        let mut heap = Heap::default();
        let key = heap.alloc(Object::Tuple(vec![]), 0).unwrap();
        let other_key = heap.alloc(Object::Tuple(vec![]), 0).unwrap();
        let value = heap.alloc(Object::None, 0).unwrap();
        let mut dict = Dict::default();
        dict.insert(&heap, key, value);
        dict.insert(&heap, other_key, value);
        dict.insert(&heap, key, value);
        assert_eq!(dict.entries().len(), 2);
    }

    #[test]
    fn descriptions_are_short() {
        let mut heap = Heap::default();
        let long = heap.alloc(Object::Str("x".repeat(1000)), 0).unwrap();
        assert!(heap.describe(long).len() < 60);
        let int = heap.alloc(Object::Int(-3), 0).unwrap();
        assert_eq!(heap.describe(int), "int -3");
    }

    #[test]
    fn objects_stay_small() {
        assert!(size_of::<Object>() <= 32, "{}", size_of::<Object>());
    }

    #[test]
    fn budget_limits_total_memory() {
        // Four slots of the arena, and two strings of one 32-byte block each.
        let arena = vec_bytes::<Object>(4);
        let mut heap = Heap::with_budget(arena + 2 * 32);
        assert!(heap.alloc(Object::Str("abcd".into()), 0).is_ok());
        assert!(heap.alloc(Object::Str("abcd".into()), 0).is_ok());
        assert_eq!(heap.budget().used(), arena + 64);
        let err = heap.alloc(Object::Str("abcd".into()), 7).unwrap_err();
        assert!(err.to_string().contains("offset 7"), "{err}");
        // Growing a dict is charged too.
        let mut heap = Heap::with_budget(1000);
        let dict = heap.alloc(Object::Dict(Box::default()), 0).unwrap();
        let key = heap.alloc(Object::Str("k".repeat(500)), 0).unwrap();
        let err = heap.dict_set(dict, key, key, 9).unwrap_err();
        assert!(err.to_string().contains("offset 9"), "{err}");
    }
}
