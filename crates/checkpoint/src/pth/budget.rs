//! The one memory budget that everything built from a checkpoint's pickle is charged to: the
//! pickle's bytes, every object and container, the interpreter's stack and memo, the flattened
//! weight names, the lists of skipped entries and unknown globals, and the bookkeeping of the
//! returned tensors.
//!
//! Charges are what the allocations really take, as far as they can be known without asking
//! the allocator: a vector is charged for its capacity, not its length; a hash table for its
//! buckets and control bytes; every heap block for the allocator's header and rounding. Growth
//! is charged before it happens, so that a refused charge never leaves the allocation behind.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};

use super::error::PthError;

/// Bytes the system allocator takes for a block of `request` bytes: its 8-byte header, rounded
/// up to 16 bytes, at least 32 (glibc's chunk rule; other allocators are alike or tighter).
pub(crate) fn block_bytes(request: usize) -> usize {
    if request == 0 {
        return 0;
    }
    request.saturating_add(8 + 15).max(32) & !15
}

/// Bytes a vector of `capacity` elements of `T` takes on the heap.
pub(crate) fn vec_bytes<T>(capacity: usize) -> usize {
    block_bytes(capacity.saturating_mul(size_of::<T>()))
}

/// Bytes a hash table of `capacity` entries of `entry` bytes each takes: a power-of-two number
/// of buckets, filled to at most 7/8, each with a control byte, plus a group of trailing
/// control bytes (the layout of the standard library's tables).
pub(crate) fn table_bytes(capacity: usize, entry: usize) -> usize {
    let buckets = buckets_for(capacity);
    if buckets == 0 {
        return 0;
    }
    block_bytes(
        buckets
            .saturating_mul(entry.saturating_add(1))
            .saturating_add(16),
    )
}

/// Bytes an ordered map of `len` entries takes: B-tree nodes are at least half full, so each
/// entry takes at most twice its size, plus its share of a node's header.
pub(crate) fn map_bytes<K, V>(len: usize) -> usize {
    len.saturating_mul(2 * (size_of::<K>() + size_of::<V>()) + 8)
}

/// Buckets of a table that holds `capacity` entries.
fn buckets_for(capacity: usize) -> usize {
    match capacity {
        0 => 0,
        1..=3 => 4,
        4..=7 => 8,
        _ => (capacity.saturating_mul(8) / 7)
            .checked_next_power_of_two()
            .unwrap_or(usize::MAX),
    }
}

/// A memory budget in bytes, charged through shared references so that every reader of the
/// object graph can charge what it builds.
#[derive(Debug)]
pub(crate) struct Budget {
    used: Cell<usize>,
    limit: usize,
}

impl Budget {
    /// A budget of `limit` bytes, nothing used yet.
    pub fn new(limit: usize) -> Self {
        Self {
            used: Cell::new(0),
            limit,
        }
    }

    /// Bytes charged so far.
    #[cfg(test)]
    pub fn used(&self) -> usize {
        self.used.get()
    }

    /// Charges `bytes`; `offset` locates the pickle opcode responsible, when there is one.
    pub fn charge(&self, bytes: usize, offset: Option<usize>) -> Result<(), PthError> {
        let used = self.used.get().saturating_add(bytes);
        if used > self.limit {
            return Err(PthError::Limit {
                what: "memory for what the checkpoint's pickle builds (objects, names and \
                       lists, in bytes)"
                    .into(),
                limit: self.limit,
                offset,
            });
        }
        self.used.set(used);
        Ok(())
    }

    /// Refuses, without charging, what would take `bytes` more: for copies that are charged
    /// whole once built, so that a copy too large is never made.
    pub fn check(&self, bytes: usize, offset: Option<usize>) -> Result<(), PthError> {
        self.charge(bytes, offset)?;
        self.release(bytes);
        Ok(())
    }

    /// Returns `bytes` charged earlier for something since freed.
    pub fn release(&self, bytes: usize) {
        self.used.set(self.used.get().saturating_sub(bytes));
    }

    /// Makes room in `vec` for `additional` more elements, charging the growth first. Grows
    /// geometrically, as `push` would, so that appending one at a time stays linear.
    pub fn reserve<T>(
        &self,
        vec: &mut Vec<T>,
        additional: usize,
        offset: Option<usize>,
    ) -> Result<(), PthError> {
        let needed = vec.len().saturating_add(additional);
        if needed <= vec.capacity() {
            return Ok(());
        }
        let capacity = needed.max(vec.capacity().saturating_mul(2)).max(4);
        self.charge(
            vec_bytes::<T>(capacity).saturating_sub(vec_bytes::<T>(vec.capacity())),
            offset,
        )?;
        vec.reserve_exact(capacity - vec.len());
        Ok(())
    }

    /// Makes room in `map` for one more entry, charging the growth first.
    pub fn reserve_entry<K: std::hash::Hash + Eq, V>(
        &self,
        map: &mut HashMap<K, V>,
        offset: Option<usize>,
    ) -> Result<(), PthError> {
        let entry = size_of::<(K, V)>();
        self.grow_table(map.len(), map.capacity(), entry, offset)?;
        map.reserve(1);
        Ok(())
    }

    /// [`Budget::reserve_entry`] for a set.
    pub fn reserve_member<K: std::hash::Hash + Eq>(
        &self,
        set: &mut HashSet<K>,
        offset: Option<usize>,
    ) -> Result<(), PthError> {
        self.grow_table(set.len(), set.capacity(), size_of::<K>(), offset)?;
        set.reserve(1);
        Ok(())
    }

    fn grow_table(
        &self,
        len: usize,
        capacity: usize,
        entry: usize,
        offset: Option<usize>,
    ) -> Result<(), PthError> {
        if len < capacity {
            return Ok(());
        }
        let before = table_bytes(capacity, entry);
        let after = table_bytes(capacity.saturating_add(1), entry);
        self.charge(after.saturating_sub(before), offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_carry_the_allocators_overhead() {
        assert_eq!(block_bytes(0), 0);
        assert_eq!(block_bytes(1), 32);
        assert_eq!(block_bytes(24), 32);
        assert_eq!(block_bytes(25), 48);
        assert_eq!(block_bytes(4096), 4112);
        assert_eq!(vec_bytes::<u64>(3), 32);
    }

    #[test]
    fn tables_are_charged_for_their_buckets() {
        assert_eq!(table_bytes(0, 16), 0);
        // 3 entries fit in 4 buckets; 8 entries need 16 (filled to at most 7/8).
        assert_eq!(table_bytes(3, 16), block_bytes(4 * 17 + 16));
        assert_eq!(table_bytes(8, 16), block_bytes(16 * 17 + 16));
        // What the standard table really allocates is within the estimate's buckets.
        let mut map: HashMap<u64, u64> = HashMap::new();
        for i in 0..1000 {
            map.insert(i, i);
            assert!(buckets_for(map.capacity()) >= map.len(), "{}", map.len());
        }
    }

    #[test]
    fn growth_is_charged_before_it_happens() {
        let budget = Budget::new(100);
        let mut vec: Vec<u64> = Vec::new();
        budget.reserve(&mut vec, 1, None).unwrap();
        assert_eq!(vec.capacity(), 4);
        assert_eq!(budget.used(), vec_bytes::<u64>(4));
        let err = budget.reserve(&mut vec, 100, Some(7)).unwrap_err();
        assert!(err.to_string().contains("offset 7"), "{err}");
        assert_eq!(vec.capacity(), 4, "a refused charge allocates nothing");
        let mut map: HashMap<u64, u64> = HashMap::new();
        let budget = Budget::new(1 << 20);
        for i in 0..10_000 {
            budget.reserve_entry(&mut map, None).unwrap();
            map.insert(i, i);
        }
        let real = table_bytes(map.capacity(), 16);
        assert!(budget.used() >= real, "{} < {real}", budget.used());
    }
}
