//! The processes a run takes part in: one process, or the ranks of an MPI job (`mpirun -np N
//! idlevit ...`, with the `mpi` feature). Finetuning splits each global batch across the
//! ranks and averages their gradients; evaluation splits the data set and sums the counts.

use std::collections::BTreeMap;

use idlevit_tensor::Tensor;

use crate::Result;
use crate::error::bail;

/// Values summed per collective call when gradients are reduced: 4 Mi `f32` (16 MiB), so
/// that a large model is reduced in several messages, not one buffer the size of the model.
pub const BUCKET_VALUES: usize = 1 << 22;

/// The group of processes one run takes part in.
pub trait ProcessGroup {
    /// This process's rank, `0..size`.
    fn rank(&self) -> usize;
    /// How many processes take part.
    fn size(&self) -> usize;
    /// Replaces `values` on every rank by their element-wise sum over all ranks.
    fn sum_f32(&self, values: &mut [f32]) -> Result<()>;
    /// Replaces `values` on every rank by their element-wise sum over all ranks.
    fn sum_f64(&self, values: &mut [f64]) -> Result<()>;
    /// Whether this process writes files and prints (rank 0).
    fn is_leader(&self) -> bool {
        self.rank() == 0
    }
}

/// A process running alone: rank 0 of 1, and every sum is the value itself.
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleProcess;

impl ProcessGroup for SingleProcess {
    fn rank(&self) -> usize {
        0
    }

    fn size(&self) -> usize {
        1
    }

    fn sum_f32(&self, _values: &mut [f32]) -> Result<()> {
        Ok(())
    }

    fn sum_f64(&self, _values: &mut [f64]) -> Result<()> {
        Ok(())
    }
}

/// The part of `items` that `rank` of `size` takes: contiguous, sizes differing by at most
/// one, the larger parts first, so that the ranks' parts concatenate back to `items`.
pub fn shard<T>(items: &[T], rank: usize, size: usize) -> &[T] {
    let size = size.max(1);
    let (base, extra) = (items.len() / size, items.len() % size);
    let start = rank * base + rank.min(extra);
    let len = base + usize::from(rank < extra);
    &items[start.min(items.len())..(start + len).min(items.len())]
}

/// Averages gradients over the ranks of `group`, each rank's weighted by its share of the
/// global batch: `grads` holds the mean gradient over this rank's `local` samples; on return
/// every rank holds the mean over all `global` samples. Reduced in buckets of
/// [`BUCKET_VALUES`], in name order (the same on every rank).
pub fn average_gradients(
    group: &dyn ProcessGroup,
    grads: &mut BTreeMap<String, Tensor>,
    local: usize,
    global: usize,
) -> Result<()> {
    if group.size() == 1 {
        return Ok(());
    }
    if global == 0 {
        bail!("a step with no samples on any rank");
    }
    let weight = local as f32 / global as f32;
    // A BTreeMap iterates in name order, the same on every rank.
    let mut tensors: Vec<&mut Tensor> = grads.values_mut().collect();
    let mut start = 0;
    while start < tensors.len() {
        // A bucket holds whole tensors: the next one, and those after it that still fit.
        let (mut end, mut len) = (start + 1, tensors[start].numel());
        while end < tensors.len() && len + tensors[end].numel() <= BUCKET_VALUES {
            len += tensors[end].numel();
            end += 1;
        }
        let mut bucket = Vec::with_capacity(len);
        for grad in &tensors[start..end] {
            bucket.extend(grad.to_vec().iter().map(|v| v * weight));
        }
        group.sum_f32(&mut bucket)?;
        let mut offset = 0;
        for grad in &mut tensors[start..end] {
            let values = bucket[offset..offset + grad.numel()].to_vec();
            offset += values.len();
            **grad = Tensor::from_vec(grad.shape().to_vec(), values)?;
        }
        start = end;
    }
    Ok(())
}

/// The MPI job this process belongs to, when it was started by `mpirun` (Open MPI, MPICH or
/// any launcher that sets `OMPI_COMM_WORLD_SIZE`, `PMI_SIZE` or `PMIX_RANK`).
#[cfg(feature = "mpi")]
pub mod mpi_group {
    use mpi::collective::SystemOperation;
    use mpi::traits::{Communicator, CommunicatorCollectives};

    use super::ProcessGroup;
    use crate::Result;
    use crate::error::bail;

    /// Whether the environment says an MPI launcher started this process.
    pub fn launched_by_mpi() -> bool {
        ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"]
            .iter()
            .any(|var| std::env::var_os(var).is_some())
    }

    /// The world communicator of an initialised MPI library; finalised when dropped.
    pub struct MpiGroup {
        _universe: mpi::environment::Universe,
        world: mpi::topology::SimpleCommunicator,
    }

    impl MpiGroup {
        /// Initialises MPI and joins the world communicator.
        pub fn init() -> Result<Self> {
            let Some(universe) = mpi::initialize() else {
                bail!("MPI was already initialised in this process");
            };
            let world = universe.world();
            Ok(Self {
                _universe: universe,
                world,
            })
        }

        /// Ends the whole job with `code`: the other ranks are stopped by the launcher, so
        /// none waits forever on a collective this rank will never join.
        pub fn abort(&self, code: i32) -> ! {
            self.world.abort(code)
        }
    }

    impl ProcessGroup for MpiGroup {
        fn rank(&self) -> usize {
            usize::try_from(self.world.rank()).unwrap_or(0)
        }

        fn size(&self) -> usize {
            usize::try_from(self.world.size()).unwrap_or(1)
        }

        fn sum_f32(&self, values: &mut [f32]) -> Result<()> {
            let send = values.to_vec();
            self.world
                .all_reduce_into(&send[..], values, SystemOperation::sum());
            Ok(())
        }

        fn sum_f64(&self, values: &mut [f64]) -> Result<()> {
            let send = values.to_vec();
            self.world
                .all_reduce_into(&send[..], values, SystemOperation::sum());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_items_in_order() {
        let items: Vec<usize> = (0..11).collect();
        for size in 1..6 {
            let parts: Vec<&[usize]> = (0..size).map(|r| shard(&items, r, size)).collect();
            assert_eq!(parts.concat(), items, "size {size}");
            let lens: Vec<usize> = parts.iter().map(|p| p.len()).collect();
            assert!(lens.iter().max().unwrap() - lens.iter().min().unwrap() <= 1);
        }
        assert!(shard(&items[..1], 1, 2).is_empty());
    }

    #[test]
    fn a_single_process_keeps_its_gradients() {
        let mut grads = BTreeMap::new();
        grads.insert(
            "w".to_string(),
            Tensor::from_vec(vec![2], vec![1.0, 2.0]).unwrap(),
        );
        average_gradients(&SingleProcess, &mut grads, 3, 3).unwrap();
        assert_eq!(grads["w"].to_vec(), [1.0, 2.0]);
    }

    /// Two ranks holding the same gradients: every sum doubles them. Counts its calls.
    struct Doubling(std::cell::Cell<usize>);

    impl ProcessGroup for Doubling {
        fn rank(&self) -> usize {
            0
        }

        fn size(&self) -> usize {
            2
        }

        fn sum_f32(&self, values: &mut [f32]) -> Result<()> {
            self.0.set(self.0.get() + 1);
            values.iter_mut().for_each(|v| *v *= 2.0);
            Ok(())
        }

        fn sum_f64(&self, values: &mut [f64]) -> Result<()> {
            values.iter_mut().for_each(|v| *v *= 2.0);
            Ok(())
        }
    }

    #[test]
    fn gradients_are_averaged_in_buckets_of_whole_tensors() {
        let mut grads = BTreeMap::new();
        let ramp = |n: usize| Tensor::from_vec(vec![n], (0..n).map(|i| i as f32).collect());
        grads.insert("a".to_string(), ramp(BUCKET_VALUES - 2).unwrap());
        grads.insert("b".to_string(), ramp(3).unwrap());
        grads.insert("c".to_string(), ramp(2).unwrap());
        grads.insert("d".to_string(), ramp(1).unwrap());
        let expected = grads.clone();
        let group = Doubling(std::cell::Cell::new(0));
        // Half the global batch here: each rank's share halves, the sum doubles.
        average_gradients(&group, &mut grads, 3, 6).unwrap();
        assert_eq!(group.0.get(), 2, "a alone, then b, c and d");
        for (name, grad) in &grads {
            assert_eq!(grad.shape(), expected[name].shape());
            assert_eq!(grad.to_vec(), expected[name].to_vec(), "{name}");
        }
    }
}
