//! PVT-v2 (Wang et al., "PVT v2: Improved Baselines with Pyramid Vision Transformer"), as
//! timm's `pvt_v2_b*`, with token idling in its later stages (design in `docs/pvt-idle.md`).

mod block;
mod config;

use idlevit_nn::{Conv2dSpec, ConvShape, Fused, LayerNorm, Linear, WeightSource};
use idlevit_selector::{PolicyKind, TokenPolicy, run_layers, run_layers_masked};

use crate::error::bail;
use crate::family::family_methods;
use crate::{Family, LayerSelection, Result, Traced};
use block::{PatchEmbed, PvtBlock, StageShape, to_grid};
pub use config::{PVT_MODELS, PvtConfig};

/// Epsilon of timm's `LayerNorm` (block and stage norms).
const BLOCK_NORM_EPS: f32 = 1e-6;
/// Epsilon of torch's `nn.LayerNorm` (patch-embedding and spatial-reduction norms).
const TORCH_NORM_EPS: f32 = 1e-5;

/// One pyramid stage: an optional downsampling patch embedding, blocks, a final norm.
#[derive(Clone, Debug)]
struct Stage {
    downsample: Option<PatchEmbed>,
    blocks: Vec<PvtBlock>,
    norm: LayerNorm,
}

idlevit_nn::params!(Stage: downsample, blocks, norm);

/// A PVT-v2: an overlapping patch embedding (7x7, stride 4), stages of spatial-reduction
/// attention blocks with depthwise-convolution MLPs, each later stage downsampling (3x3,
/// stride 2), and a linear head on the mean of the last stage's tokens.
#[derive(Clone, Debug)]
pub struct PvtV2 {
    config: PvtConfig,
    patch_embed: PatchEmbed,
    stages: Vec<Stage>,
    head: Linear,
    policy: TokenPolicy,
}

idlevit_nn::params!(PvtV2: patch_embed, stages, head);
family_methods!(PvtV2, PvtConfig);

/// timm's names (`pvt_v2_b*`): `patch_embed`, then per stage `stages.{i}.downsample` (after
/// the first), `stages.{i}.blocks.{j}` and `stages.{i}.norm`, and `head`.
impl Family for PvtV2 {
    type Config = PvtConfig;

    fn build(src: &mut dyn WeightSource, config: &PvtConfig) -> Result<Self> {
        config.validate()?;
        let sides = config.grid_sides();
        let embed = |in_channels, out_channels, kernel, stride| ConvShape {
            in_channels,
            out_channels,
            kernel,
            spec: Conv2dSpec::new(stride, kernel / 2),
        };
        let patch_embed =
            PatchEmbed::load(src, "patch_embed", embed(3, config.embed_dims[0], 7, 4))?;
        let mut stages = Vec::with_capacity(config.num_stages());
        for (i, &side) in sides.iter().enumerate() {
            let p = format!("stages.{i}");
            let dim = config.embed_dims[i];
            let downsample = (i > 0)
                .then(|| {
                    let shape = embed(config.embed_dims[i - 1], dim, 3, 2);
                    PatchEmbed::load(src, &format!("{p}.downsample"), shape)
                })
                .transpose()?;
            let shape = StageShape {
                dim,
                heads: config.num_heads[i],
                sr: config.sr_ratios[i],
                hidden: config.mlp_hidden(i),
                side,
            };
            let blocks = (0..config.depths[i])
                .map(|j| PvtBlock::load(src, &format!("{p}.blocks.{j}"), &shape))
                .collect::<Result<_>>()?;
            let norm = LayerNorm::load(src, &format!("{p}.norm"), dim, BLOCK_NORM_EPS)?;
            stages.push(Stage {
                downsample,
                blocks,
                norm,
            });
        }
        let last = config.embed_dims[config.num_stages() - 1];
        let head = Linear::load(src, "head", last, config.num_classes, true)?;
        Ok(Self {
            config: config.clone(),
            patch_embed,
            stages,
            head,
            policy: TokenPolicy::Dense,
        })
    }
}

/// Why PVT-v2 runs the idle policy only: pruning drops tokens for good and EViT fuses them,
/// while its convolutions need every token of each stage's grid.
pub(crate) fn policy_refusal(kind: PolicyKind) -> String {
    format!(
        "PVT-v2 runs the idle policy only, not {kind}: its convolutions (the depthwise one in \
         every MLP, and the downsampling between stages) need every token of the grid, which \
         pruning drops and EViT fuses; use the idle policy"
    )
}

impl PvtV2 {
    /// The same model running `policy`: dense, or idle layers (stages 2 and later; top-k
    /// pruning and EViT have no pyramid form).
    pub fn with_policy(mut self, policy: TokenPolicy) -> Result<Self> {
        if let TokenPolicy::Select { kind, schedule } = &policy {
            if *kind != PolicyKind::Idle {
                bail!("{}", policy_refusal(*kind));
            }
            self.config.validate_schedule(schedule)?;
        }
        self.policy = policy;
        Ok(self)
    }

    /// The same model with stochastic depth for training: block `i` of all `n` blocks (every
    /// stage in order) drops its residual branches at `rate * i / (n - 1)`, timm's PVT-v2
    /// rule. Only a seeded training tape applies it; inference is unchanged.
    pub fn with_drop_path(mut self, rate: f32) -> Result<Self> {
        if !(0.0..1.0).contains(&rate) {
            bail!("drop-path rate must be in [0, 1), got {rate}");
        }
        let last = self.config.depth().saturating_sub(1).max(1) as f32;
        let blocks = self.stages.iter_mut().flat_map(|s| s.blocks.iter_mut());
        for (i, block) in blocks.enumerate() {
            block.drop_path = rate * i as f32 / last;
        }
        Ok(self)
    }

    /// Images `(batch, 3, img, img)` to logits `(batch, classes)`, idle layers gathered.
    pub fn forward<B: Fused>(&self, bk: &B, images: &B::Value) -> Result<B::Value> {
        Ok(self.run(bk, images, false)?.logits)
    }

    /// [`forward`](Self::forward), also returning each idle layer's selected tokens (token
    /// indices of its stage's grid, row-major, in descending score order) and the pooled
    /// features.
    pub fn forward_traced<B: Fused>(&self, bk: &B, images: &B::Value) -> Result<Traced<B::Value>> {
        self.run(bk, images, false)
    }

    /// The training form: idle layers compute every token and mask their updates (PVT has
    /// no CLS attention, hence no cut loss: the selections are all it reports).
    pub fn forward_masked<B: Fused>(&self, bk: &B, images: &B::Value) -> Result<Traced<B::Value>> {
        self.run(bk, images, true)
    }

    fn run<B: Fused>(&self, bk: &B, images: &B::Value, masked: bool) -> Result<Traced<B::Value>> {
        let shape = bk.shape(images);
        crate::model::check_images(shape, self.config.img_size)?;
        let sides = self.config.grid_sides();
        let mut x = self.patch_embed.forward(bk, images)?;
        let mut selections = Vec::new();
        let mut layer = 0;
        for (i, stage) in self.stages.iter().enumerate() {
            if let Some(d) = &stage.downsample {
                x = d.forward(bk, &to_grid(bk, &x, sides[i - 1])?)?;
            }
            let blocks = &stage.blocks;
            x = if masked {
                let (y, layers) = run_layers_masked(bk, blocks, &self.policy, layer, x)?;
                selections.extend(layers.into_iter().map(|(layer, masked)| LayerSelection {
                    layer,
                    tokens: masked.selection.indices().to_vec(),
                }));
                y
            } else {
                let (y, chosen) = run_layers(bk, blocks, &self.policy, layer, x)?;
                selections.extend(chosen);
                y
            };
            layer += blocks.len();
            x = stage.norm.forward(bk, &x)?;
        }
        let tokens = bk.shape(&x)[1];
        let features = bk.scale(&bk.sum_axis(&x, 1, false)?, 1.0 / tokens as f32)?;
        Ok(Traced {
            logits: self.head.forward(bk, &features)?,
            features,
            tokens: x,
            selections,
        })
    }
}
