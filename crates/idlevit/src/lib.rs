#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod error;
mod model;

pub use error::Error;
pub use model::{ImageInput, Model, Prediction};

pub use idlevit_data::preprocess::EvalTransform;
pub use idlevit_nn::Precision;
pub use idlevit_tensor::Tensor;
pub use idlevit_zoo::{PolicyKind, Schedule, TokenPolicy, ZooConfig, ZooModel};

/// The f32 tensor: shape, strides, views, row gather and scatter.
pub use idlevit_tensor as tensor;

/// CPU kernels: GEMM (f32, packed, bf16), softmax, layer norm, GELU, attention, top-k.
pub use idlevit_kernels as kernels;

/// The op trait layers are written in, its eager backend, and learnable parameters.
pub use idlevit_ops as ops;

/// The reverse-mode tape that differentiates every op.
pub use idlevit_autodiff as autodiff;

/// Named-tensor checkpoints: safetensors, and PyTorch `.pth` read without executing code.
pub use idlevit_checkpoint as checkpoint;

/// ViT layers written once over the op trait.
pub use idlevit_nn as nn;

/// Token selection for any transformer block: schedules, scoring, idle / prune / EViT forms.
pub use idlevit_selector as selector;

/// The token cut loss.
pub use idlevit_cutloss as cutloss;

/// Images, image folders, the digits task, weight files and class names.
pub use idlevit_data as data;

/// Finetuning, evaluation, benchmarks, hub snapshots and model loading.
pub use idlevit_train as train;

/// The model zoo: DeiT / ViT, LV-ViT and PVT-v2 with their published names and weights.
pub use idlevit_zoo as zoo;

/// The ndarray version [`Tensor::from_array`] and [`Tensor::view`] speak.
pub use ndarray;

/// The image crate [`Model::classify`] takes decoded images of.
pub use image;

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
