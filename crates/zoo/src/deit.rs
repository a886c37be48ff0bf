//! DeiT / ViT with a CLS token, as timm's `VisionTransformer` (`deit_*_patch16_224`).

use idlevit_nn::Fused;
use idlevit_nn::{
    Block, BlockConfig, Init, LayerNorm, Linear, Param, PatchEmbed, SeededInit, WeightSource,
};
use idlevit_selector::{MaskedLayer, TokenPolicy};

use crate::LayerSelection;
use crate::family::family_methods;
use crate::stack::cls_stack_methods;
use crate::{DeiTConfig, Family, Result};

/// timm's ViT layer-norm epsilon.
const NORM_EPS: f32 = 1e-6;

/// A DeiT model: patch embed, CLS token and learned position embedding, pre-norm blocks,
/// final norm, and a linear head on the CLS token.
#[derive(Clone, Debug)]
pub struct DeiT {
    config: DeiTConfig,
    patch_embed: PatchEmbed,
    cls_token: Param,
    pos_embed: Param,
    blocks: Vec<Block>,
    norm: LayerNorm,
    head: Linear,
    policy: TokenPolicy,
}

/// Logits and the selections that produced them.
#[derive(Clone, Debug)]
pub struct Traced<V> {
    /// `(batch, classes)`.
    pub logits: V,
    /// The final normalised CLS features `(batch, dim)`; PVT-v2's pooled last stage.
    pub features: V,
    /// The final normalised tokens `(batch, tokens, dim)`: the CLS token and every image token
    /// the last layer kept (all of them where no token is dropped).
    pub tokens: V,
    /// One entry per selecting layer, in layer order (empty for dense and EViT).
    pub selections: Vec<LayerSelection>,
}

/// The masked (training) form's outputs: logits, and per idle layer what the cut loss needs.
#[derive(Clone, Debug)]
pub struct MaskedForward<V> {
    /// `(batch, classes)`.
    pub logits: V,
    /// The final normalised CLS features `(batch, dim)`; PVT-v2's pooled last stage.
    pub features: V,
    /// The final normalised tokens `(batch, tokens, dim)`, idle ones included.
    pub tokens: V,
    /// `(block index, masked layer outputs)` per idle layer, in layer order.
    pub layers: Vec<(usize, MaskedLayer<V>)>,
}

idlevit_nn::params!(DeiT: patch_embed, cls_token, pos_embed, blocks, norm, head);
family_methods!(DeiT, DeiTConfig);
cls_stack_methods!(DeiT);

/// timm's names: `patch_embed.proj`, `cls_token`, `pos_embed`, `blocks.{i}`, `norm`, `head`.
impl Family for DeiT {
    type Config = DeiTConfig;

    fn build(src: &mut dyn WeightSource, config: &DeiTConfig) -> Result<Self> {
        config.validate()?;
        let c = config.embed_dim;
        let img = config.img_size;
        let patch_embed = PatchEmbed::load(src, "patch_embed", img, config.patch_size, 3, c)?;
        let block_config = BlockConfig {
            dim: c,
            num_heads: config.num_heads,
            mlp_hidden: config.mlp_hidden(),
            qkv_bias: config.qkv_bias,
            norm_eps: NORM_EPS,
            skip_lam: 1.0,
        };
        let blocks = (0..config.depth)
            .map(|i| Block::load(src, &format!("blocks.{i}"), &block_config))
            .collect::<std::result::Result<_, _>>()?;
        let norm = LayerNorm::load(src, "norm", c, NORM_EPS)?;
        let head = Linear::load(src, "head", c, config.num_classes, true)?;
        // Asked for last: seeded models have always drawn the embeddings after the norms.
        let cls_token = src.param("cls_token", &[1, 1, c], Init::EMBEDDING)?;
        let tokens = config.num_patches() + 1;
        let pos_embed = src.param("pos_embed", &[1, tokens, c], Init::EMBEDDING)?;
        Ok(Self {
            config: config.clone(),
            patch_embed,
            cls_token,
            pos_embed,
            blocks,
            norm,
            head,
            policy: TokenPolicy::Dense,
        })
    }

    /// Linear layers draw from one stream and norms and embeddings from another, as DeiT's
    /// seeded weights always have: tests and benchmarks pin seeds to them.
    fn seeded(seed: u64) -> SeededInit {
        SeededInit::split(seed, seed ^ 0x5EED)
    }
}

impl DeiT {
    /// Tokens entering the first block: `[CLS; patches] + pos_embed`, `(batch, N+1, C)`.
    pub fn embed<B: Fused>(&self, bk: &B, images: &B::Value) -> Result<B::Value> {
        let patches = self.patch_embed.forward(bk, images)?;
        let batch = bk.shape(&patches)[0];
        let cls = bk.broadcast_to(
            &bk.param(&self.cls_token),
            &[batch, 1, self.config.embed_dim],
        )?;
        let tokens = bk.concat(&[cls, patches], 1)?;
        Ok(bk.add(&tokens, &bk.param(&self.pos_embed))?)
    }

    /// The final normalised tokens `(batch, tokens, dim)`, their CLS row `(batch, dim)` (what
    /// distillation compares) and the logits from the final tokens.
    pub fn features_and_logits<B: Fused>(
        &self,
        bk: &B,
        tokens: &B::Value,
    ) -> Result<(B::Value, B::Value, B::Value)> {
        let normed = self.norm.forward(bk, tokens)?;
        let cls = bk.select(&normed, 1, 0)?;
        let logits = self.head.forward(bk, &cls)?;
        Ok((normed, cls, logits))
    }
}
