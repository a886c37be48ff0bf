//! The training data pipeline: a producer thread reads, decodes, augments and mixes the next
//! batches (the images of a batch in parallel) while the current step trains, through a
//! bounded queue, and the training thread measures how long it waits for them.
//!
//! Every random choice of a batch is drawn from the run's seed, the step and the image's index
//! in the data set, never from a stream shared across images, so the batches are the same
//! whatever the number of threads or how far ahead the producer runs.

use std::sync::mpsc::{Receiver, sync_channel};
use std::time::{Duration, Instant};

use idlevit_data::ImageSet;
use idlevit_data::augment::TrainTransform;
use idlevit_data::preprocess::EvalTransform;
use idlevit_tensor::Tensor;

use crate::{Mixup, Result, TrainError, smoothed_targets};

/// Batches prepared ahead of the step that trains: one waits in the queue while the producer
/// works on the next, which hides the preparation as long as it is shorter than a step, and
/// holds at most two batches more in memory.
pub const BATCHES_AHEAD: usize = 1;

/// How the training images of one rank become a step's inputs.
#[derive(Clone, Copy, Debug)]
pub struct BatchRecipe<'a> {
    /// The training set.
    pub data: &'a dyn ImageSet,
    /// Classes of the model (the width of the targets).
    pub classes: usize,
    /// Label smoothing of the targets.
    pub smoothing: f32,
    /// Random resized crops and flips, or `None` for the evaluation transform.
    pub augment: Option<TrainTransform>,
    /// The evaluation transform used when `augment` is `None`.
    pub eval: EvalTransform,
    /// Mixup / CutMix of the batch.
    pub mixup: Mixup,
}

impl BatchRecipe<'_> {
    /// The images at `indices` (in the data set's draw for `epoch`) and their soft targets,
    /// augmented with `augment_seed` per image and mixed with `mix_seed`.
    pub fn prepare(
        &self,
        epoch: usize,
        indices: &[usize],
        augment_seed: u64,
        mix_seed: u64,
    ) -> Result<(Tensor, Tensor)> {
        let (images, labels) = match &self.augment {
            Some(transform) => {
                self.data
                    .augmented_images(epoch, indices, transform, augment_seed)?
            }
            None => self.data.images(epoch, indices, &self.eval)?,
        };
        let targets = smoothed_targets(&labels, self.classes, self.smoothing)?;
        self.mixup.apply(&images, &targets, mix_seed)
    }
}

/// Runs `prepare(step)` for `steps` steps in order on a producer thread, at most `ahead`
/// prepared steps queued, and `train(step, prepared)` on the calling thread as each arrives.
/// Returns how long the calling thread waited for prepared steps.
///
/// The first error stops both sides: an error of `prepare` reaches the caller at its step, an
/// error of `train` closes the queue, which stops the producer at its next hand-over. The
/// producer has always ended when this returns.
pub fn prefetched<T: Send>(
    steps: usize,
    ahead: usize,
    mut prepare: impl FnMut(usize) -> Result<T> + Send,
    mut train: impl FnMut(usize, T) -> Result<()>,
) -> Result<Duration> {
    std::thread::scope(|scope| {
        let (sender, receiver) = sync_channel(ahead);
        let producer = std::thread::Builder::new()
            .name("idlevit-data".into())
            .spawn_scoped(scope, move || {
                for step in 0..steps {
                    let prepared = prepare(step);
                    let failed = prepared.is_err();
                    // A closed queue means the training side has stopped: nothing more is needed.
                    if sender.send(prepared).is_err() || failed {
                        break;
                    }
                }
            })
            .map_err(|e| TrainError::Invalid(format!("cannot start the data thread: {e}")))?;
        let consumed = consume(receiver, steps, &mut train);
        // The receiver is gone: a producer blocked on a full queue wakes and stops.
        // A panic of the producer is the cause of whatever the training side then saw.
        producer.join().map_err(|payload| {
            let cause = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            TrainError::Invalid(format!("the data thread panicked: {cause}"))
        })?;
        consumed
    })
}

/// The training side of [`prefetched`]; takes the receiver so that it is dropped on return.
fn consume<T>(
    receiver: Receiver<Result<T>>,
    steps: usize,
    train: &mut impl FnMut(usize, T) -> Result<()>,
) -> Result<Duration> {
    let mut waited = Duration::ZERO;
    for step in 0..steps {
        let started = Instant::now();
        let prepared = receiver.recv().map_err(|_| {
            TrainError::Invalid(format!(
                "the data thread stopped before step {} of {steps}",
                step + 1
            ))
        })?;
        waited += started.elapsed();
        train(step, prepared?)?;
    }
    Ok(waited)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_arrives_in_order_at_any_depth() {
        for ahead in [0, 1, 3] {
            let mut seen = Vec::new();
            prefetched(
                7,
                ahead,
                |step| Ok(step * 10),
                |step, value| {
                    seen.push((step, value));
                    Ok(())
                },
            )
            .unwrap();
            assert_eq!(seen, (0..7).map(|s| (s, s * 10)).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_producer_error_reaches_the_caller_at_its_step() {
        let mut trained = 0;
        let mut prepared = 0;
        let err = prefetched(
            10,
            1,
            |step| {
                prepared += 1;
                if step == 3 {
                    Err(TrainError::Invalid("bad image 3".into()))
                } else {
                    Ok(step)
                }
            },
            |_, _| {
                trained += 1;
                Ok(())
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("bad image 3"), "{err}");
        assert_eq!(trained, 3);
        assert_eq!(prepared, 4, "the producer stops at its error");
    }

    #[test]
    fn a_training_error_stops_the_producer_without_hanging() {
        let mut prepared = 0;
        let err = prefetched(
            1000,
            1,
            |step| {
                prepared += 1;
                Ok(step)
            },
            |step, _| {
                if step == 2 {
                    Err(TrainError::NonFinite(f32::NAN))
                } else {
                    Ok(())
                }
            },
        )
        .unwrap_err();
        assert!(matches!(err, TrainError::NonFinite(_)), "{err}");
        // Steps 0..=2 taken, at most one queued and one in the producer's hands.
        assert!((3..=5).contains(&prepared), "{prepared}");
    }

    #[test]
    fn a_panicking_producer_is_an_error() {
        let err = prefetched(
            4,
            1,
            |step| {
                assert!(step < 2, "deliberate test panic");
                Ok(step)
            },
            |_, _| Ok(()),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("the data thread panicked: deliberate test panic"),
            "{err}"
        );
    }
}
