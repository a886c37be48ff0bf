//! DeiT / ViT with a CLS token, as timm's `VisionTransformer` (`deit_*_patch16_224`).

use idlevit_checkpoint::{Checkpoint, WeightReader};
use idlevit_nn::{Backend, Block, BlockConfig, LayerNorm, Linear, Param, PatchEmbed};

use crate::{DeiTConfig, Result, random_checkpoint};

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
    head: Option<Linear>,
}

impl DeiT {
    /// Builds the model from timm-named weights; every tensor must be present with its exact
    /// shape, and a tensor the model does not use is an error too.
    pub fn load(config: &DeiTConfig, checkpoint: Checkpoint) -> Result<Self> {
        config.validate()?;
        let c = config.embed_dim;
        let mut reader = WeightReader::new(checkpoint);
        let patch_embed = PatchEmbed::load(
            &mut reader,
            "patch_embed",
            config.img_size,
            config.patch_size,
            3,
            c,
        )?;
        let cls_token = Param::load(&mut reader, "cls_token", &[1, 1, c])?;
        let pos_embed = Param::load(&mut reader, "pos_embed", &[1, config.num_patches() + 1, c])?;
        let block_config = BlockConfig {
            dim: c,
            num_heads: config.num_heads,
            mlp_hidden: config.mlp_hidden(),
            qkv_bias: config.qkv_bias,
            norm_eps: NORM_EPS,
        };
        let blocks = (0..config.depth)
            .map(|i| Block::load(&mut reader, &format!("blocks.{i}"), &block_config))
            .collect::<std::result::Result<_, _>>()?;
        let norm = LayerNorm::load(&mut reader, "norm", c, NORM_EPS)?;
        let head = (config.num_classes > 0)
            .then(|| Linear::load(&mut reader, "head", c, config.num_classes, true))
            .transpose()?;
        reader.finish()?;
        Ok(Self {
            config: config.clone(),
            patch_embed,
            cls_token,
            pos_embed,
            blocks,
            norm,
            head,
        })
    }

    /// A model with seeded random weights (for benchmarks and tests).
    pub fn random(config: &DeiTConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        Self::load(config, random_checkpoint(config, seed)?)
    }

    /// The model's configuration.
    pub fn config(&self) -> &DeiTConfig {
        &self.config
    }

    /// The transformer blocks, in order.
    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    /// Tokens entering the first block: `[CLS; patches] + pos_embed`, `(batch, N+1, C)`.
    pub fn embed<B: Backend>(&self, bk: &B, images: &B::Value) -> Result<B::Value> {
        let patches = self.patch_embed.forward(bk, images)?;
        let batch = bk.shape(&patches)[0];
        let cls = bk.broadcast_to(
            &bk.param(&self.cls_token),
            &[batch, 1, self.config.embed_dim],
        )?;
        let tokens = bk.concat(&[cls, patches], 1)?;
        Ok(bk.add(&tokens, &bk.param(&self.pos_embed))?)
    }

    /// Logits from the final tokens: final norm, CLS row, head; CLS features if there is no
    /// head.
    pub fn classify<B: Backend>(&self, bk: &B, tokens: &B::Value) -> Result<B::Value> {
        let normed = self.norm.forward(bk, tokens)?;
        let cls = bk.select(&normed, 1, 0)?;
        match &self.head {
            Some(head) => Ok(head.forward(bk, &cls)?),
            None => Ok(cls),
        }
    }

    /// Dense forward pass: images `(batch, 3, img, img)` to logits `(batch, classes)`.
    pub fn forward<B: Backend>(&self, bk: &B, images: &B::Value) -> Result<B::Value> {
        let mut x = self.embed(bk, images)?;
        for block in &self.blocks {
            x = block.forward(bk, &x)?;
        }
        self.classify(bk, &x)
    }
}
