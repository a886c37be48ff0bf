//! The pre-norm transformer block.

use crate::{Attention, Fused, LayerNorm, Mlp, MlpHalf, Result, WeightSource};

/// Hyper-parameters of one transformer block.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockConfig {
    /// Token width.
    pub dim: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Hidden width of the MLP.
    pub mlp_hidden: usize,
    /// Whether the qkv projection has a bias.
    pub qkv_bias: bool,
    /// Layer-norm epsilon.
    pub norm_eps: f32,
    /// Every residual branch is divided by this before it is added (LV-ViT's `skip_lam`;
    /// 1 for timm's ViT).
    pub skip_lam: f32,
}

/// `x + attn(norm1(x))`, then `x + mlp(norm2(x))`, as timm's `Block`.
#[derive(Clone, Debug)]
pub struct Block {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    mlp: Mlp,
    skip_lam: f32,
    drop_path: f32,
}

crate::params!(Block: norm1, attn, norm2, mlp);

impl Block {
    /// Reads the block's weights under `prefix` (e.g. `blocks.3`).
    pub fn load(src: &mut dyn WeightSource, prefix: &str, cfg: &BlockConfig) -> Result<Self> {
        if !(cfg.skip_lam.is_finite() && cfg.skip_lam > 0.0) {
            return Err(crate::NnError::Config(format!(
                "skip_lam must be a positive number, found {}",
                cfg.skip_lam
            )));
        }
        Ok(Self {
            norm1: LayerNorm::load(src, &format!("{prefix}.norm1"), cfg.dim, cfg.norm_eps)?,
            attn: Attention::load(
                src,
                &format!("{prefix}.attn"),
                cfg.dim,
                cfg.num_heads,
                cfg.qkv_bias,
            )?,
            norm2: LayerNorm::load(src, &format!("{prefix}.norm2"), cfg.dim, cfg.norm_eps)?,
            mlp: Mlp::load(src, &format!("{prefix}.mlp"), cfg.dim, cfg.mlp_hidden)?,
            skip_lam: cfg.skip_lam,
            drop_path: 0.0,
        })
    }

    /// Sets the stochastic-depth rate of both residual branches, in [0, 1). It acts only
    /// on a training backend with a random stream ([`Backend::drop_path`](crate::Backend::drop_path)).
    pub fn set_drop_path(&mut self, rate: f32) -> Result<()> {
        if !(0.0..1.0).contains(&rate) {
            return Err(crate::NnError::Config(format!(
                "drop-path rate must be in [0, 1), got {rate}"
            )));
        }
        self.drop_path = rate;
        Ok(())
    }

    /// The stochastic-depth rate of the residual branches.
    pub fn drop_path(&self) -> f32 {
        self.drop_path
    }

    /// `x + drop_path(branch) / skip_lam`: how every form of the block (dense, idle,
    /// masked, pruned, fused) closes a residual. LV-ViT divides each branch by `skip_lam`
    /// (nothing is computed when that is 1); drop path acts only on a seeded training tape.
    pub fn residual<B: Fused>(&self, bk: &B, x: &B::Value, branch: &B::Value) -> Result<B::Value> {
        Ok(idlevit_ops::add_branch(
            bk,
            x,
            branch,
            1.0 / self.skip_lam,
            self.drop_path,
        )?)
    }

    /// The attention sub-layer.
    pub fn attn(&self) -> &Attention {
        &self.attn
    }

    /// The normalisation in front of attention.
    pub fn norm1(&self) -> &LayerNorm {
        &self.norm1
    }

    /// The residual branch of the MLP half: `mlp(norm2(x))`.
    pub fn mlp_branch<B: Fused>(&self, bk: &B, x: &B::Value) -> Result<B::Value> {
        self.mlp.forward(bk, &self.norm2.forward(bk, x)?)
    }

    /// `x + mlp(norm2(x))`, the block's second half, through [`Fused::mlp_half`] (fused in
    /// inference, in bf16 when the weights have packed bf16 copies, and in place when nothing
    /// else holds `x`).
    pub fn mlp_residual<B: Fused>(&self, bk: &B, x: B::Value) -> Result<B::Value> {
        let params = MlpHalf {
            norm: self.norm2.params(bk),
            fc1: self.mlp.fc1().params(bk),
            fc2: self.mlp.fc2().params(bk),
            branch_scale: 1.0 / self.skip_lam,
            drop_path: self.drop_path,
        };
        Ok(bk.mlp_half(x, &params)?)
    }

    /// The dense block over all tokens of `x` `(batch, tokens, dim)`.
    pub fn forward<B: Fused>(&self, bk: &B, x: &B::Value) -> Result<B::Value> {
        self.forward_owned(bk, x.clone())
    }

    /// [`forward`](Self::forward) taking `x`: in inference, when nothing else holds it, both
    /// residual updates are written into its storage and the layer copies no residual stream.
    pub fn forward_owned<B: Fused>(&self, bk: &B, x: B::Value) -> Result<B::Value> {
        let scale = 1.0 / self.skip_lam;
        let x = self
            .attn
            .residual_half(bk, &self.norm1, x, scale, self.drop_path)?;
        self.mlp_residual(bk, x)
    }
}
