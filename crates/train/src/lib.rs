#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod bench;
pub mod convert;
pub mod distributed;
mod error;
pub mod evaluate;
pub mod finetune;
pub mod hub;
pub mod inspect;
mod mixup;
pub mod models;
mod objective;
mod optim;
pub mod pipeline;
mod schedule;
mod step;
mod trainable;

pub use error::TrainError;
pub use mixup::{Mixing, Mixup};
pub use objective::{
    LossParts, Objective, ObjectiveForm, Teacher, check_targets, smoothed_targets,
};
pub use optim::{AdamW, all_finite, clip_grad_norm, decays, describe_values, whole_count};
pub use schedule::CosineSchedule;
pub use step::{StepSettings, apply_gradients, parameter_gradients, step_gradients, train_step};
pub use trainable::Trainable;

/// Result type of this crate.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;
