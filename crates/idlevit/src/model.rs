//! [`Model`]: a zoo model with its preprocessing, class names, token policy and precision.

use std::path::{Path, PathBuf};

use idlevit_data::labels::default_names;
use idlevit_data::preprocess::{EvalTransform, batch_values, load_image, preprocess};
use idlevit_nn::{Eager, Precision};
use idlevit_tensor::Tensor;
use idlevit_train::hub::{Snapshot, named_transform};
use idlevit_train::models::{DEFAULT_LABELS, default_model, load_zoo_model};
use idlevit_zoo::{PolicyKind, Schedule, TokenPolicy, ZooConfig, ZooModel};
use image::DynamicImage;

use crate::error::Context;
use crate::{Error, Result};

/// One class of an image's top classes.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    /// The class index (the row of the model's head).
    pub index: usize,
    /// The class name, when the model has names ([`Model::labels`]).
    pub label: Option<String>,
    /// The softmax probability of the class.
    pub probability: f32,
}

/// A model ready to classify: weights of any zoo family, the preprocessing its checkpoint
/// expects, its class names, the token policy it runs (dense until told otherwise) and the
/// precision of its linear layers (f32 until told otherwise).
#[derive(Clone, Debug)]
pub struct Model {
    model: ZooModel,
    name: String,
    transform: EvalTransform,
    labels: Option<Vec<String>>,
    precision: Precision,
}

impl Model {
    /// The model of a timm hub snapshot directory (`config.json` + `model.safetensors`, as
    /// `huggingface-cli download timm/NAME` fetches one and timm's `save_for_hf` writes one):
    /// its architecture, classes and preprocessing come from `config.json`.
    pub fn from_hub_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let snapshot = Snapshot::open(dir.as_ref())?;
        let model = load_zoo_model(&snapshot.config, Some(&snapshot.weights), "weights", false)?;
        Ok(Self::assemble(
            model,
            snapshot.architecture,
            snapshot.transform,
        ))
    }

    /// The published model `name` with the weights of file `weights` (safetensors with timm's
    /// names, or a PyTorch `.pth` checkpoint; LV-ViT release checkpoints as they are). `name`
    /// is a zoo name (`deit_small`, `lvvit_s`, `pvt_v2_b0`) or timm's, with or without a
    /// pretrained tag (`deit_small_patch16_224.fb_in1k`); timm's `vit_*` checkpoints get
    /// their own normalisation (mean = std = 0.5), every other name DeiT's.
    pub fn from_file(name: &str, weights: impl AsRef<Path>) -> Result<Self> {
        let config = ZooConfig::named(name)?;
        let transform = named_transform(name, config.img_size());
        Self::load(config, weights.as_ref(), name, transform)
    }

    /// A model of `config` (any family, e.g. read by [`ZooConfig::from_file`]) with the
    /// weights of file `weights`, preprocessed as DeiT evaluates (crop 0.875, bicubic,
    /// ImageNet mean and std; [`Model::with_transform`] changes it).
    pub fn from_config(config: impl Into<ZooConfig>, weights: impl AsRef<Path>) -> Result<Self> {
        let config = config.into();
        let transform = EvalTransform::for_size(config.img_size());
        Self::load(config, weights.as_ref(), "custom", transform)
    }

    /// The model embedded in the library: a small DeiT trained on the digits task (64x64
    /// canvases of handwritten digits, classes "0" to "9"); it needs no file.
    pub fn digits() -> Result<Self> {
        let model = default_model()?;
        let transform = EvalTransform::for_size(model.config().img_size);
        let labels = DEFAULT_LABELS.map(String::from).to_vec();
        Ok(Self::assemble(model.into(), "digits".into(), transform).with_labels(labels))
    }

    /// Reads `weights` for a model of `config` named `name` in errors.
    fn load(
        config: ZooConfig,
        weights: &Path,
        name: &str,
        transform: EvalTransform,
    ) -> Result<Self> {
        if weights.is_dir() {
            return Err(Error::Invalid(format!(
                "{} is a directory; a timm hub snapshot (config.json + model.safetensors) \
                 names its own model: load it with Model::from_hub_dir",
                weights.display()
            )));
        }
        let model = load_zoo_model(&config, Some(weights), "weights", false)
            .context(|| format!("cannot load model {name}"))?;
        Ok(Self::assemble(model, name.into(), transform))
    }

    /// A model from its parts; 1000-class models are named by ImageNet-1k's classes.
    fn assemble(model: ZooModel, name: String, transform: EvalTransform) -> Self {
        let labels = default_names(model.num_classes())
            .map(|names| names.into_iter().map(String::from).collect());
        model.pack_for_inference();
        Self {
            model,
            name,
            transform,
            labels,
            precision: Precision::F32,
        }
    }

    /// The same model running the token policy `kind` at base keep rate `keep_rate` in
    /// (0, 1], on the family's own schedule: DeiT idle and prune layers 4..11 keep
    /// r, r^2, r^3 of the tokens (LV-ViT and PVT-v2: theirs), EViT layers 3, 6, 9 keep r of
    /// those present. A model too shallow for the schedule is refused; give it one with
    /// [`Model::with_schedule`].
    pub fn with_policy(self, kind: PolicyKind, keep_rate: f64) -> Result<Self> {
        let schedule = self
            .model
            .config()
            .schedule(kind, keep_rate)
            .context(|| format!("{kind} at keep rate {keep_rate} on {}", self.name))?;
        self.with_schedule(kind, schedule)
    }

    /// The same model idling tokens (IdleViT) at base keep rate `keep_rate`: unselected
    /// tokens skip the selection layers and stay for later ones. See [`Model::with_policy`].
    pub fn with_idling(self, keep_rate: f64) -> Result<Self> {
        self.with_policy(PolicyKind::Idle, keep_rate)
    }

    /// The same model running the token policy `kind` at the layers and keep ratios of
    /// `schedule` (for models the family's schedule does not fit).
    pub fn with_schedule(self, kind: PolicyKind, schedule: Schedule) -> Result<Self> {
        self.with_token_policy(TokenPolicy::select(kind, schedule))
    }

    /// The same model running `policy` ([`TokenPolicy::Dense`]: every token in every layer).
    pub fn with_token_policy(self, policy: TokenPolicy) -> Result<Self> {
        let name = self.name;
        let model = self
            .model
            .with_policy(policy)
            .context(|| format!("the token policy does not fit {name}"))?;
        Ok(Self {
            model,
            name,
            ..self
        })
    }

    /// The same model, dense: every token in every layer.
    pub fn dense(self) -> Result<Self> {
        self.with_token_policy(TokenPolicy::Dense)
    }

    /// The same model running its linear layers and attention products in `precision`.
    /// bf16 accumulates in f32 and runs on any CPU; it is faster than f32 only where the CPU
    /// has AMX or AVX-512 BF16 (`idlevit::kernels::bf16_expected_faster_than_f32`).
    pub fn with_precision(self, precision: Precision) -> Result<Self> {
        let model = self.model.with_precision(precision)?;
        if precision == Precision::F32 {
            model.pack_for_inference();
        }
        Ok(Self {
            model,
            precision,
            ..self
        })
    }

    /// The same model in bfloat16; see [`Model::with_precision`].
    pub fn with_bf16(self) -> Result<Self> {
        self.with_precision(Precision::Bf16)
    }

    /// The same model preparing images by `transform`; its crop must be the model's input
    /// size.
    pub fn with_transform(self, transform: EvalTransform) -> Result<Self> {
        if transform.crop as usize != self.model.img_size() {
            return Err(Error::Invalid(format!(
                "the transform crops {} pixels but {} takes {}",
                transform.crop,
                self.name,
                self.model.img_size()
            )));
        }
        Ok(Self { transform, ..self })
    }

    /// The same model naming its classes by `labels` (one per class, in index order).
    pub fn with_labels(self, labels: Vec<String>) -> Self {
        Self {
            labels: Some(labels),
            ..self
        }
    }

    /// The model's name: timm's architecture, the name it was loaded by, or "custom".
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The zoo model underneath, under its token policy and precision.
    pub fn zoo_model(&self) -> &ZooModel {
        &self.model
    }

    /// The token policy the model runs.
    pub fn policy(&self) -> &TokenPolicy {
        self.model.policy()
    }

    /// The precision of its linear layers.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// How images are prepared for it.
    pub fn transform(&self) -> &EvalTransform {
        &self.transform
    }

    /// The class names, when it has them.
    pub fn labels(&self) -> Option<&[String]> {
        self.labels.as_deref()
    }

    /// Side of the square input images, in pixels.
    pub fn img_size(&self) -> usize {
        self.model.img_size()
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.model.num_classes()
    }

    /// Multiply-accumulates per image under the model's token policy, in billions (GMACs).
    pub fn gmacs(&self) -> Result<f64> {
        Ok(self.model.config().macs(self.model.policy())? / 1e9)
    }

    /// An image (a file path or a decoded image) prepared as the model's checkpoint expects:
    /// resized, cropped and normalised into a `(3, side, side)` tensor.
    pub fn preprocess(&self, image: impl ImageInput) -> Result<Tensor> {
        image.to_tensor(&self.transform)
    }

    /// The logits `(batch, classes)` of images `(batch, 3, side, side)`, already prepared.
    pub fn logits(&self, images: &Tensor) -> Result<Tensor> {
        Ok(self.model.forward(&Eager, images)?)
    }

    /// The `k` most probable classes of one image (a file path or a decoded image), most
    /// probable first.
    pub fn classify(&self, image: impl ImageInput, k: usize) -> Result<Vec<Prediction>> {
        let mut all = self.classify_batch(std::slice::from_ref(&image), k)?;
        Ok(all.pop().unwrap_or_default())
    }

    /// The `k` most probable classes of each image, run as one batch.
    pub fn classify_batch<I: ImageInput>(
        &self,
        images: &[I],
        k: usize,
    ) -> Result<Vec<Vec<Prediction>>> {
        if images.is_empty() {
            return Err(Error::Invalid("no images given".into()));
        }
        let side = self.img_size();
        let mut values = Vec::with_capacity(batch_values(images.len(), side)?);
        for image in images {
            values.extend(self.preprocess(image)?.into_vec());
        }
        let batch = Tensor::from_vec(vec![images.len(), 3, side, side], values)?;
        self.top_k(&self.logits(&batch)?, k)
    }

    /// The `k` most probable classes of each row of `(batch, classes)` logits.
    pub fn top_k(&self, logits: &Tensor, k: usize) -> Result<Vec<Vec<Prediction>>> {
        let rows = idlevit_train::evaluate::top_classes(logits, k)?;
        let name = |index: usize| self.labels.as_ref()?.get(index).cloned();
        Ok(rows
            .into_iter()
            .map(|row| {
                row.into_iter()
                    .map(|(index, probability)| Prediction {
                        index,
                        label: name(index),
                        probability,
                    })
                    .collect()
            })
            .collect())
    }
}

impl From<ZooModel> for Model {
    /// A model built in code (say, [`ZooModel::random`] or a finetuned one), preprocessed as
    /// DeiT evaluates; 1000-class models are named by ImageNet-1k's classes.
    fn from(model: ZooModel) -> Self {
        let transform = EvalTransform::for_size(model.img_size());
        Self::assemble(model, "custom".into(), transform)
    }
}

/// An image [`Model::classify`] takes: a file (decoded by its content, errors naming it) or
/// an image already decoded.
pub trait ImageInput {
    /// The image prepared by `transform` as a `(3, side, side)` tensor.
    fn to_tensor(&self, transform: &EvalTransform) -> Result<Tensor>;
}

impl<T: ImageInput + ?Sized> ImageInput for &T {
    fn to_tensor(&self, transform: &EvalTransform) -> Result<Tensor> {
        (**self).to_tensor(transform)
    }
}

impl ImageInput for Path {
    fn to_tensor(&self, transform: &EvalTransform) -> Result<Tensor> {
        Ok(load_image(self, transform)?)
    }
}

impl ImageInput for PathBuf {
    fn to_tensor(&self, transform: &EvalTransform) -> Result<Tensor> {
        self.as_path().to_tensor(transform)
    }
}

impl ImageInput for str {
    fn to_tensor(&self, transform: &EvalTransform) -> Result<Tensor> {
        Path::new(self).to_tensor(transform)
    }
}

impl ImageInput for String {
    fn to_tensor(&self, transform: &EvalTransform) -> Result<Tensor> {
        Path::new(self).to_tensor(transform)
    }
}

impl ImageInput for DynamicImage {
    fn to_tensor(&self, transform: &EvalTransform) -> Result<Tensor> {
        Ok(preprocess(self, transform)?)
    }
}

impl ImageInput for image::RgbImage {
    fn to_tensor(&self, transform: &EvalTransform) -> Result<Tensor> {
        DynamicImage::ImageRgb8(self.clone()).to_tensor(transform)
    }
}
