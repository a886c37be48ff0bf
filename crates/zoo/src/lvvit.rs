//! LV-ViT (Jiang et al., "All Tokens Matter: Token Labeling for Training Better Vision
//! Transformers"), with the weight names of its official release (`lvvit_s`, `lvvit_m`).

use idlevit_checkpoint::Checkpoint;
use idlevit_nn::Fused;
use idlevit_nn::{
    BatchNormMode, Block, BlockConfig, Conv2d, Conv2dSpec, ConvBatchNorm, ConvShape, Init,
    LayerNorm, Linear, Param, WeightSource,
};
use idlevit_selector::{Schedule, TokenPolicy};
use serde::{Deserialize, Serialize};

use crate::error::bail;
use crate::family::family_methods;
use crate::stack::cls_stack_methods;
use crate::{Family, MAX_DEPTH, MAX_PATCHES, Result, ZooError};

/// torch's LayerNorm epsilon, which LV-ViT keeps.
const NORM_EPS: f32 = 1e-5;

/// Weight of the aux head's token maximum in the prediction.
const AUX_WEIGHT: f32 = 0.5;

/// The shape of an LV-ViT, with the keys of its `config.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "an LV-ViT config object")]
pub struct LvVitConfig {
    /// Input image side in pixels (square images).
    pub img_size: usize,
    /// Pixels per token side: the stem halves the image, the patch conv takes `patch / 2`.
    pub patch_size: usize,
    /// Channels of the convolutional stem (64 in the release's S and M).
    pub stem_channels: usize,
    /// Token width `C`.
    pub embed_dim: usize,
    /// Number of transformer blocks.
    pub depth: usize,
    /// Attention heads per block.
    pub num_heads: usize,
    /// MLP hidden width as a multiple of `embed_dim`.
    pub mlp_ratio: f64,
    /// Classifier outputs of the head and of the aux head.
    pub num_classes: usize,
    /// Divisor of every residual branch.
    pub skip_lam: f32,
    /// Idle layers (0-based block indices) of a custom idle schedule; with `keep_ratios`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_layers: Option<Vec<usize>>,
    /// Keep ratio of each idle layer of a custom schedule; with `idle_layers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_ratios: Option<Vec<f64>>,
}

/// Names accepted by [`LvVitConfig::named`].
pub const LVVIT_MODELS: &[&str] = &["lvvit_s", "lvvit_m"];

impl LvVitConfig {
    /// LV-ViT-S: C = 384, 6 heads, depth 16 (the release's `lvvit_s`).
    pub fn small() -> Self {
        Self::imagenet(384, 6, 16)
    }

    /// LV-ViT-M: C = 512, 8 heads, depth 20 (the release's `lvvit_m`).
    pub fn medium() -> Self {
        Self::imagenet(512, 8, 20)
    }

    fn imagenet(embed_dim: usize, num_heads: usize, depth: usize) -> Self {
        Self {
            img_size: 224,
            patch_size: 16,
            stem_channels: 64,
            embed_dim,
            depth,
            num_heads,
            mlp_ratio: 3.0,
            num_classes: 1000,
            skip_lam: 2.0,
            idle_layers: None,
            keep_ratios: None,
        }
    }

    /// A published size by name: `lvvit_s` or `lvvit_m`.
    pub fn named(name: &str) -> Result<Self> {
        match name {
            "lvvit_s" => Ok(Self::small()),
            "lvvit_m" => Ok(Self::medium()),
            _ => Err(crate::config::unknown_model(name, LVVIT_MODELS)),
        }
    }

    /// Parses and validates a JSON config; unknown keys are an error.
    pub fn from_json(text: &str) -> Result<Self> {
        crate::config::parse_json(text, Self::validate)
    }

    /// The release's idle schedule at base rate `r` for the model's depth: S (16 blocks)
    /// idles layers 4..15, M (20 blocks) layers 5..19 (`docs/algorithm.md`, "Keep schedules").
    pub fn idle_schedule(&self, rate: f64) -> Result<Schedule> {
        match self.depth {
            16 => Ok(Schedule::lvvit_s(rate)?),
            20 => Ok(Schedule::lvvit_m(rate)?),
            depth => Err(ZooError::Config(format!(
                "LV-ViT idle schedules exist for depth 16 (S) and 20 (M), not {depth}; set \
                 idle_layers and keep_ratios in the config"
            ))),
        }
    }

    /// The custom idle schedule of the config's `idle_layers` and `keep_ratios`, if set;
    /// one list without the other is an error.
    pub fn schedule(&self) -> Result<Option<Schedule>> {
        crate::config::schedule_lists(&self.idle_layers, &self.keep_ratios)
    }

    /// Checks that the numbers describe a model that can run.
    pub fn validate(&self) -> Result<()> {
        if self.depth == 0 || self.depth > MAX_DEPTH {
            bail!("depth {} is outside 1..={MAX_DEPTH}", self.depth);
        }
        if self.embed_dim == 0
            || self.num_heads == 0
            || !self.embed_dim.is_multiple_of(self.num_heads)
        {
            bail!(
                "embed_dim {} must be a positive multiple of num_heads {}",
                self.embed_dim,
                self.num_heads
            );
        }
        if self.patch_size < 2
            || !self.patch_size.is_multiple_of(2)
            || !self.img_size.is_multiple_of(self.patch_size)
            || self.img_size == 0
        {
            bail!(
                "img_size {} must be a positive multiple of patch_size {}, which must be even",
                self.img_size,
                self.patch_size
            );
        }
        if self.num_patches() > MAX_PATCHES {
            bail!(
                "{} patches exceed the limit of {MAX_PATCHES}",
                self.num_patches()
            );
        }
        if self.stem_channels == 0 || self.stem_channels > 4096 {
            bail!("stem_channels {} is outside 1..=4096", self.stem_channels);
        }
        if !(self.mlp_ratio.is_finite() && self.mlp_ratio > 0.0 && self.mlp_ratio <= 64.0)
            || self.mlp_hidden() == 0
        {
            bail!("mlp_ratio {} gives no hidden units", self.mlp_ratio);
        }
        if self.num_classes == 0 || self.num_classes > 1 << 20 {
            bail!(
                "num_classes {} is outside 1..=1048576 (LV-ViT predicts with its heads)",
                self.num_classes
            );
        }
        if !(self.skip_lam.is_finite() && self.skip_lam > 0.0) {
            bail!("skip_lam {} must be positive", self.skip_lam);
        }
        if let Some(schedule) = self.schedule()? {
            schedule
                .validate(self.depth, self.num_patches())
                .map_err(|e| crate::config::lists_error(e.into()))?;
        }
        Ok(())
    }

    /// The number of image tokens `N`.
    pub fn num_patches(&self) -> usize {
        self.img_size
            .checked_div(self.patch_size)
            .unwrap_or(0)
            .saturating_pow(2)
    }

    /// The MLP hidden width, `int(embed_dim * mlp_ratio)`.
    pub fn mlp_hidden(&self) -> usize {
        (self.embed_dim as f64 * self.mlp_ratio) as usize
    }

    /// The number of learnable weights of the model (not counting the stem's batch-norm
    /// running statistics), or `None` when it overflows `usize`.
    pub fn parameter_count(&self) -> Option<usize> {
        let (c, m, k) = (self.embed_dim, self.mlp_hidden(), self.num_classes);
        let mut total = 0usize;
        for shape in self.stem_shapes() {
            let kernel = shape.kernel.checked_pow(2)?;
            let weight = shape
                .out_channels
                .checked_mul(shape.in_channels)?
                .checked_mul(kernel)?;
            // Stem convolutions carry a batch norm's scale and shift; the patch conv a bias.
            total = total
                .checked_add(weight)?
                .checked_add(shape.out_channels.checked_mul(2)?)?;
        }
        // The patch convolution has one bias per channel, not two batch-norm vectors.
        total = total.checked_sub(c)?;
        let tokens = self.num_patches().checked_add(2)?.checked_mul(c)?;
        let attention = c.checked_mul(c)?.checked_mul(4)?.checked_add(c)?;
        let mlp = m
            .checked_mul(c)?
            .checked_mul(2)?
            .checked_add(m)?
            .checked_add(c)?;
        let block = attention.checked_add(mlp)?.checked_add(c.checked_mul(4)?)?;
        let heads = k.checked_mul(c.checked_add(1)?)?.checked_mul(2)?;
        block
            .checked_mul(self.depth)?
            .checked_add(total)?
            .checked_add(tokens)?
            .checked_add(c.checked_mul(2)?)?
            .checked_add(heads)
    }

    /// The stem's three convolutions and the patch convolution, in order.
    fn stem_shapes(&self) -> [ConvShape; 4] {
        let s = self.stem_channels;
        let conv = |in_channels, out_channels, kernel, stride, padding| ConvShape {
            in_channels,
            out_channels,
            kernel,
            spec: Conv2dSpec::new(stride, padding),
        };
        // The stem halves the image; the patch convolution's kernel and stride take the rest.
        let k = self.patch_size / 2;
        [
            conv(3, s, 7, 2, 3),
            conv(s, s, 3, 1, 1),
            conv(s, s, 3, 1, 1),
            conv(s, self.embed_dim, k, k, 0),
        ]
    }
}

/// An LV-ViT: convolutional stem (three conv + eval batch norm + ReLU), patch convolution,
/// CLS token and position embedding, blocks with residuals divided by `skip_lam`, final norm,
/// and the combined prediction `head(x_cls) + 0.5 max_tokens aux_head(x_patches)`.
#[derive(Clone, Debug)]
pub struct LvVit {
    config: LvVitConfig,
    stem: [ConvBatchNorm; 3],
    proj: Conv2d,
    cls_token: Param,
    pos_embed: Param,
    blocks: Vec<Block>,
    norm: LayerNorm,
    head: Linear,
    aux_head: Linear,
    policy: TokenPolicy,
}

idlevit_nn::params!(LvVit: stem, proj, cls_token, pos_embed, blocks, norm, head, aux_head);
family_methods!(LvVit, LvVitConfig);
cls_stack_methods!(LvVit);

/// The release's names (see [`LvVit::adapt`] for its checkpoint files): the stem
/// `patch_embed.conv{1,2,3}` and `patch_embed.bn{1,2,3}`, `patch_embed.proj`, `cls_token`,
/// `pos_embed`, `blocks.{i}`, `norm`, `head`, `aux_head`.
impl Family for LvVit {
    type Config = LvVitConfig;

    fn build(src: &mut dyn WeightSource, config: &LvVitConfig) -> Result<Self> {
        config.validate()?;
        let c = config.embed_dim;
        let [s1, s2, s3, proj] = config.stem_shapes();
        let mut stem_layer = |i: usize, shape| {
            let (conv, bn) = (format!("patch_embed.conv{i}"), format!("patch_embed.bn{i}"));
            ConvBatchNorm::load(src, &conv, &bn, shape)
        };
        let stem = [stem_layer(1, s1)?, stem_layer(2, s2)?, stem_layer(3, s3)?];
        let proj = Conv2d::load(src, "patch_embed.proj", proj, true)?;
        let cls_token = src.param("cls_token", &[1, 1, c], Init::EMBEDDING)?;
        let tokens = config.num_patches() + 1;
        let pos_embed = src.param("pos_embed", &[1, tokens, c], Init::EMBEDDING)?;
        let block_config = BlockConfig {
            dim: c,
            num_heads: config.num_heads,
            mlp_hidden: config.mlp_hidden(),
            qkv_bias: false,
            norm_eps: NORM_EPS,
            skip_lam: config.skip_lam,
        };
        let blocks = (0..config.depth)
            .map(|i| Block::load(src, &format!("blocks.{i}"), &block_config))
            .collect::<std::result::Result<_, _>>()?;
        let norm = LayerNorm::load(src, "norm", c, NORM_EPS)?;
        let head = Linear::load(src, "head", c, config.num_classes, true)?;
        let aux_head = Linear::load(src, "aux_head", c, config.num_classes, true)?;
        Ok(Self {
            config: config.clone(),
            stem,
            proj,
            cls_token,
            pos_embed,
            blocks,
            norm,
            head,
            aux_head,
            policy: TokenPolicy::Dense,
        })
    }
}

impl LvVit {
    /// The release's checkpoint quirks, undone: weights saved from `DistributedDataParallel`
    /// carry a `module.` prefix, which is dropped. (The `state_dict` / `model` nesting and the
    /// integer `num_batches_tracked` counters are left behind by the `.pth` reader.)
    pub fn adapt(checkpoint: Checkpoint) -> Checkpoint {
        let mut adapted = Checkpoint::default();
        for (name, tensor) in checkpoint.iter() {
            adapted.insert(name.strip_prefix("module.").unwrap_or(name), tensor.clone());
        }
        adapted
    }

    /// The stem's batch norms normalise with running statistics ([`BatchNormMode::Frozen`],
    /// the default) or with each batch's own ([`BatchNormMode::Train`], as PyTorch's train
    /// mode; then [`update_batch_norm`](Self::update_batch_norm) moves the running ones).
    pub fn set_batch_norm(&mut self, mode: BatchNormMode) {
        for layer in &mut self.stem {
            layer.set_mode(mode);
        }
    }

    /// The statistics the stem's batch norms normalise with.
    pub fn batch_norm(&self) -> BatchNormMode {
        self.stem[0].mode()
    }

    /// Moves the stem's running statistics toward the batch of the last train-mode forward
    /// (PyTorch's `momentum`, 0.1 by default); does nothing after a frozen forward.
    pub fn update_batch_norm(&mut self, momentum: f32) -> Result<()> {
        for layer in &mut self.stem {
            layer.update_running(momentum)?;
        }
        Ok(())
    }

    /// Tokens entering the first block: `[CLS; stem patches] + pos_embed`, `(batch, N+1, C)`.
    pub fn embed<B: Fused>(&self, bk: &B, images: &B::Value) -> Result<B::Value> {
        let shape = bk.shape(images);
        crate::model::check_images(shape, self.config.img_size)?;
        let batch = shape[0];
        let mut x = images.clone();
        for layer in &self.stem {
            x = bk.relu(&layer.forward(bk, &x)?)?;
        }
        let x = self.proj.forward(bk, &x)?;
        let (c, n) = (self.config.embed_dim, self.config.num_patches());
        let patches = bk.permute(&bk.reshape(&x, &[batch, c, n])?, &[0, 2, 1])?;
        let cls = bk.broadcast_to(&bk.param(&self.cls_token), &[batch, 1, c])?;
        let tokens = bk.concat(&[cls, patches], 1)?;
        Ok(bk.add(&tokens, &bk.param(&self.pos_embed))?)
    }

    /// The final normalised tokens `(batch, tokens, dim)`, their CLS row `(batch, dim)` and
    /// the combined prediction `head(cls) + 0.5 max over the other tokens of aux_head` (idle
    /// tokens included).
    pub fn features_and_logits<B: Fused>(
        &self,
        bk: &B,
        tokens: &B::Value,
    ) -> Result<(B::Value, B::Value, B::Value)> {
        let normed = self.norm.forward(bk, tokens)?;
        let rows = bk.shape(&normed)[1];
        let cls = bk.select(&normed, 1, 0)?;
        let aux = self.aux_head.forward(bk, &bk.slice(&normed, 1, 1, rows)?)?;
        let aux = bk.scale(&bk.max_axis(&aux, 1)?, AUX_WEIGHT)?;
        let logits = bk.add(&self.head.forward(bk, &cls)?, &aux)?;
        Ok((normed, cls, logits))
    }
}
