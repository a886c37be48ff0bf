//! Finetuning an idle model: the objective (`docs/algorithm.md`), and the optimiser around it.
//!
//! [`Objective`] computes `CE + cut_weight * cut / L_idle + w * KL + 100 w * F` on the
//! student's masked forward (any [`Backend`](idlevit_nn::Backend); on the
//! [`Tape`](idlevit_autodiff::Tape) it yields gradients), [`AdamW`] updates a model in place
//! with decoupled weight decay, and [`CosineSchedule`] gives the learning rate of each step.
//! Every zoo family trains: the functions take any [`Trainable`] model (DeiT, LV-ViT,
//! PVT-v2, or a [`ZooModel`](idlevit_zoo::ZooModel)). The cut loss needs a CLS attention map,
//! so an idle PVT-v2 trains with a cut weight of 0 ([`Objective::check`]).
//!
//! Around them: [`finetune`] runs the whole loop on an [`ImageFolder`](idlevit_data::ImageFolder)
//! (a checkpoint per epoch, resume, validation) with its batches prepared ahead on a producer
//! thread ([`pipeline`]), [`evaluate`] scores a model, [`bench`] times
//! one, [`inspect`] looks into one batch, [`models`] reads models from weight files, and
//! [`distributed`] splits the work across the ranks of an MPI job (the `mpi` feature).
//!
//! ```
//! use idlevit_train::CosineSchedule;
//!
//! let schedule = CosineSchedule { base_lr: 1e-3, min_lr: 1e-5, warmup_lr: 1e-6, warmup_steps: 10, total_steps: 100 };
//! assert!((schedule.lr(10) - 1e-3).abs() < 1e-12);
//! assert!((schedule.lr(100) - 1e-5).abs() < 1e-12);
//! ```

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
