//! PVT-v2 (Wang et al., "PVT v2: Improved Baselines with Pyramid Vision Transformer"), as
//! timm's `pvt_v2_b*`, with token idling in its later stages (design in `docs/pvt-idle.md`).

use idlevit_nn::{
    Backend, Conv2d, Conv2dSpec, ConvShape, Eager, Fused, LayerNorm, Linear, NnError, WeightSource,
};
use idlevit_selector::{
    AttentionParts, KeyScoring, PolicyKind, Schedule, SelectorError, TokenBlock, TokenPolicy,
    class_key_scores, keep_count, run_layers, run_layers_masked,
};
use idlevit_tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::family::family_methods;
use crate::{Family, LayerSelection, MAX_PATCHES, Result, Traced, ZooError};

/// Epsilon of timm's `LayerNorm` (block and stage norms).
const BLOCK_NORM_EPS: f32 = 1e-6;
/// Epsilon of torch's `nn.LayerNorm` (patch-embedding and spatial-reduction norms).
const TORCH_NORM_EPS: f32 = 1e-5;

/// The shape of a PVT-v2, with the keys of its `config.json`; every list has one entry per
/// stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a PVT-v2 config object")]
pub struct PvtConfig {
    /// Input image side in pixels (square images).
    pub img_size: usize,
    /// Token width of each stage.
    pub embed_dims: Vec<usize>,
    /// Blocks per stage.
    pub depths: Vec<usize>,
    /// Attention heads per stage.
    pub num_heads: Vec<usize>,
    /// Spatial-reduction ratio per stage: keys and values come from a map shrunk by a
    /// convolution of kernel and stride `sr` (1: the full map).
    pub sr_ratios: Vec<usize>,
    /// MLP hidden width as a multiple of the stage's width.
    pub mlp_ratios: Vec<f64>,
    /// Classifier outputs.
    pub num_classes: usize,
}

/// Names accepted by [`PvtConfig::named`].
pub const PVT_MODELS: &[&str] = &["pvt_v2_b0", "pvt_v2_b1", "pvt_v2_b2"];

impl PvtConfig {
    /// timm's `pvt_v2_b0`.
    pub fn b0() -> Self {
        Self::imagenet(vec![32, 64, 160, 256], vec![2, 2, 2, 2])
    }

    /// timm's `pvt_v2_b1`.
    pub fn b1() -> Self {
        Self::imagenet(vec![64, 128, 320, 512], vec![2, 2, 2, 2])
    }

    /// timm's `pvt_v2_b2`.
    pub fn b2() -> Self {
        Self::imagenet(vec![64, 128, 320, 512], vec![3, 4, 6, 3])
    }

    fn imagenet(embed_dims: Vec<usize>, depths: Vec<usize>) -> Self {
        Self {
            img_size: 224,
            embed_dims,
            depths,
            num_heads: vec![1, 2, 5, 8],
            sr_ratios: vec![8, 4, 2, 1],
            mlp_ratios: vec![8.0, 8.0, 4.0, 4.0],
            num_classes: 1000,
        }
    }

    /// A published size by timm name.
    pub fn named(name: &str) -> Result<Self> {
        match name {
            "pvt_v2_b0" => Ok(Self::b0()),
            "pvt_v2_b1" => Ok(Self::b1()),
            "pvt_v2_b2" => Ok(Self::b2()),
            _ => Err(crate::config::unknown_model(name, PVT_MODELS)),
        }
    }

    /// Parses and validates a JSON config; unknown keys are an error.
    pub fn from_json(text: &str) -> Result<Self> {
        crate::config::parse_json(text, Self::validate)
    }

    /// The number of stages.
    pub fn num_stages(&self) -> usize {
        self.depths.len()
    }

    /// The number of blocks over all stages.
    pub fn depth(&self) -> usize {
        self.depths.iter().sum()
    }

    /// Side of each stage's token grid: the stem convolution (7x7, stride 4, padding 3),
    /// then a 3x3 stride-2 convolution (padding 1) before every later stage.
    pub fn grid_sides(&self) -> Vec<usize> {
        let conv = |side: usize, k: usize, s: usize| (side + 2 * (k / 2)).saturating_sub(k) / s + 1;
        let mut side = conv(self.img_size, 7, 4);
        (0..self.num_stages())
            .map(|i| {
                if i > 0 {
                    side = conv(side, 3, 2);
                }
                side
            })
            .collect()
    }

    /// The number of tokens of stage `i`.
    pub fn stage_tokens(&self, i: usize) -> usize {
        self.grid_sides().get(i).map_or(0, |s| s * s)
    }

    /// MLP hidden width of stage `i`, `int(dim * ratio)`.
    pub fn mlp_hidden(&self, i: usize) -> usize {
        (self.embed_dims[i] as f64 * self.mlp_ratios[i]) as usize
    }

    /// The number of learnable weights of the model, or `None` when it overflows `usize`.
    pub fn parameter_count(&self) -> Option<usize> {
        // A patch embedding: convolution weight and bias, then a norm's scale and shift.
        let embed = |cin: usize, cout: usize, k: usize| {
            cout.checked_mul(cin)?
                .checked_mul(k.checked_mul(k)?)?
                .checked_add(cout.checked_mul(3)?)
        };
        let mut total = embed(3, *self.embed_dims.first()?, 7)?;
        for i in 0..self.num_stages() {
            let (c, m, sr) = (self.embed_dims[i], self.mlp_hidden(i), self.sr_ratios[i]);
            if i > 0 {
                total = total.checked_add(embed(self.embed_dims[i - 1], c, 3)?)?;
            }
            let square = c.checked_mul(c)?;
            // q, kv and proj with biases; both block norms.
            let attention = square.checked_mul(4)?.checked_add(c.checked_mul(8)?)?;
            let reduction = if sr > 1 {
                square
                    .checked_mul(sr.checked_mul(sr)?)?
                    .checked_add(c.checked_mul(3)?)?
            } else {
                0
            };
            // fc1, the depthwise 3x3 convolution and fc2, with biases.
            let mlp = m
                .checked_mul(c)?
                .checked_mul(2)?
                .checked_add(m.checked_mul(11)?)?
                .checked_add(c)?;
            let block = attention.checked_add(reduction)?.checked_add(mlp)?;
            total = total
                .checked_add(block.checked_mul(self.depths[i])?)?
                .checked_add(c.checked_mul(2)?)?;
        }
        let last = *self.embed_dims.last()?;
        total.checked_add(self.num_classes.checked_mul(last.checked_add(1)?)?)
    }

    /// The stage of global block index `layer` and the block's index inside it.
    pub fn stage_of(&self, layer: usize) -> Option<(usize, usize)> {
        let mut start = 0;
        for (i, &d) in self.depths.iter().enumerate() {
            if layer < start + d {
                return Some((i, layer - start));
            }
            start += d;
        }
        None
    }

    /// The idle schedule of base rate `r`: every block of stages 2, 3 and 4 idles, keeping
    /// `r`, `r^2` and `r^3` of its stage's tokens (the release's three-stage schedule, one
    /// pyramid stage per schedule stage). Needs four stages.
    pub fn idle_schedule(&self, rate: f64) -> Result<Schedule> {
        Ok(Schedule::pyramid(rate, &self.depths)?)
    }

    /// Checks `schedule` against the stages: every idle layer exists, is outside stage 1
    /// (whose 56x56 grid is what later stages downsample; see `docs/pvt-idle.md`), and keeps
    /// at least one token of its stage.
    pub fn validate_schedule(&self, schedule: &Schedule) -> Result<()> {
        for (&layer, &ratio) in schedule.idle_layers().iter().zip(schedule.keep_ratios()) {
            let Some((stage, _)) = self.stage_of(layer) else {
                return Err(ZooError::Config(format!(
                    "idle layer {layer} does not exist in a model of {} blocks",
                    self.depth()
                )));
            };
            if stage == 0 {
                return Err(ZooError::Config(format!(
                    "idle layer {layer} is in stage 1; PVT idles stages 2 and later"
                )));
            }
            let tokens = self.stage_tokens(stage);
            if let Err(SelectorError::NothingKept { .. }) = keep_count(tokens, ratio) {
                return Err(ZooError::Config(format!(
                    "keep ratio {ratio} at idle layer {layer} keeps no token of the {tokens} in \
                     stage {}; raise the ratio",
                    stage + 1
                )));
            }
            keep_count(tokens, ratio)?;
        }
        Ok(())
    }

    /// Checks that the numbers describe a model that can run.
    pub fn validate(&self) -> Result<()> {
        let fail = |msg: String| Err(ZooError::Config(msg));
        let n = self.num_stages();
        if n == 0
            || n > 8
            || [
                self.embed_dims.len(),
                self.num_heads.len(),
                self.sr_ratios.len(),
                self.mlp_ratios.len(),
            ]
            .iter()
            .any(|&l| l != n)
        {
            return fail(format!(
                "embed_dims, depths, num_heads, sr_ratios and mlp_ratios need one entry per \
                 stage (1 to 8 stages); found lengths {}, {n}, {}, {}, {}",
                self.embed_dims.len(),
                self.num_heads.len(),
                self.sr_ratios.len(),
                self.mlp_ratios.len()
            ));
        }
        if self.img_size == 0 || self.img_size.saturating_mul(self.img_size) > 16 * MAX_PATCHES {
            return fail(format!("img_size {} is out of range", self.img_size));
        }
        for i in 0..n {
            let (c, h) = (self.embed_dims[i], self.num_heads[i]);
            if c == 0 || c > 8192 || h == 0 || !c.is_multiple_of(h) {
                return fail(format!(
                    "stage {}: width {c} must be in 1..=8192 and a multiple of {h} heads",
                    i + 1
                ));
            }
            if self.depths[i] == 0 || self.depths[i] > 64 {
                return fail(format!(
                    "stage {}: depth {} is outside 1..=64",
                    i + 1,
                    self.depths[i]
                ));
            }
            let side = self.grid_sides()[i];
            let sr = self.sr_ratios[i];
            if sr == 0 || sr > side {
                return fail(format!(
                    "stage {}: sr_ratio {sr} must be in 1..={side} (the stage's grid side)",
                    i + 1
                ));
            }
            let r = self.mlp_ratios[i];
            if !(r.is_finite() && r > 0.0 && r <= 64.0) || self.mlp_hidden(i) == 0 {
                return fail(format!(
                    "stage {}: mlp_ratio {r} gives no hidden units",
                    i + 1
                ));
            }
        }
        if self.num_classes == 0 || self.num_classes > 1 << 20 {
            return fail(format!(
                "num_classes {} is outside 1..=1048576",
                self.num_classes
            ));
        }
        Ok(())
    }
}

/// `(batch, tokens, C)` as a `(batch, C, side, side)` feature map.
fn to_grid<B: Fused>(bk: &B, x: &B::Value, side: usize) -> Result<B::Value> {
    let &[batch, _, c] = bk.shape(x) else {
        return Err(NnError::shape("PVT tokens", "(batch, tokens, dim)", bk.shape(x)).into());
    };
    Ok(bk.reshape(&bk.permute(x, &[0, 2, 1])?, &[batch, c, side, side])?)
}

/// A `(batch, C, h, w)` feature map as `(batch, h w, C)` tokens.
fn from_grid<B: Fused>(bk: &B, x: &B::Value) -> Result<B::Value> {
    let &[batch, c, h, w] = bk.shape(x) else {
        return Err(NnError::shape("PVT feature map", "(batch, C, h, w)", bk.shape(x)).into());
    };
    Ok(bk.permute(&bk.reshape(x, &[batch, c, h * w])?, &[0, 2, 1])?)
}

/// `(batch, tokens, C)` to `(batch, heads, tokens, C / heads)`.
fn split_heads<B: Fused>(bk: &B, x: &B::Value, heads: usize) -> Result<B::Value> {
    let &[batch, tokens, c] = bk.shape(x) else {
        return Err(NnError::shape("attention tokens", "(batch, tokens, dim)", bk.shape(x)).into());
    };
    let x = bk.reshape(x, &[batch, tokens, heads, c / heads])?;
    Ok(bk.permute(&x, &[0, 2, 1, 3])?)
}

/// An overlapping patch embedding: a `k x k` convolution of stride `s` and padding `k / 2`,
/// then a layer norm over the channels.
#[derive(Clone, Debug)]
struct PatchEmbed {
    proj: Conv2d,
    norm: LayerNorm,
}

idlevit_nn::params!(PatchEmbed: proj, norm);

impl PatchEmbed {
    fn load(src: &mut dyn WeightSource, prefix: &str, shape: ConvShape) -> Result<Self> {
        Ok(Self {
            proj: Conv2d::load(src, &format!("{prefix}.proj"), shape, true)?,
            norm: LayerNorm::load(
                src,
                &format!("{prefix}.norm"),
                shape.out_channels,
                TORCH_NORM_EPS,
            )?,
        })
    }

    /// A feature map to normalised tokens `(batch, side^2, C)`.
    fn forward<B: Fused>(&self, bk: &B, x: &B::Value) -> Result<B::Value> {
        let tokens = from_grid(bk, &self.proj.forward(bk, x)?)?;
        Ok(self.norm.forward(bk, &tokens)?)
    }
}

/// A PVT-v2 block: spatial-reduction attention and the MLP with a depthwise convolution,
/// each a pre-norm residual branch.
#[derive(Clone, Debug)]
struct PvtBlock {
    norm1: LayerNorm,
    q: Linear,
    kv: Linear,
    /// The spatial reduction (convolution of kernel and stride `sr`, then a norm), if sr > 1.
    sr: Option<(Conv2d, LayerNorm)>,
    proj: Linear,
    norm2: LayerNorm,
    fc1: Linear,
    dwconv: Conv2d,
    fc2: Linear,
    heads: usize,
    side: usize,
    /// Stochastic-depth rate of both residual branches (a seeded training tape only).
    drop_path: f32,
}

/// Stage hyper-parameters a block needs.
struct StageShape {
    dim: usize,
    heads: usize,
    sr: usize,
    hidden: usize,
    side: usize,
}

idlevit_nn::params!(PvtBlock: norm1, q, kv, sr, proj, norm2, fc1, dwconv, fc2);

impl PvtBlock {
    /// Reads the block under `p` in timm's order (seeded models draw in it).
    fn load(src: &mut dyn WeightSource, p: &str, s: &StageShape) -> Result<Self> {
        let c = s.dim;
        let norm1 = LayerNorm::load(src, &format!("{p}.norm1"), c, BLOCK_NORM_EPS)?;
        let q = Linear::load(src, &format!("{p}.attn.q"), c, c, true)?;
        let kv = Linear::load(src, &format!("{p}.attn.kv"), c, 2 * c, true)?;
        let sr = (s.sr > 1)
            .then(|| -> Result<_> {
                let shape = ConvShape {
                    in_channels: c,
                    out_channels: c,
                    kernel: s.sr,
                    spec: Conv2dSpec::new(s.sr, 0),
                };
                Ok((
                    Conv2d::load(src, &format!("{p}.attn.sr"), shape, true)?,
                    LayerNorm::load(src, &format!("{p}.attn.norm"), c, TORCH_NORM_EPS)?,
                ))
            })
            .transpose()?;
        let dw = ConvShape {
            in_channels: s.hidden,
            out_channels: s.hidden,
            kernel: 3,
            spec: Conv2dSpec::new(1, 1).with_groups(s.hidden),
        };
        Ok(Self {
            norm1,
            q,
            kv,
            sr,
            proj: Linear::load(src, &format!("{p}.attn.proj"), c, c, true)?,
            norm2: LayerNorm::load(src, &format!("{p}.norm2"), c, BLOCK_NORM_EPS)?,
            fc1: Linear::load(src, &format!("{p}.mlp.fc1"), c, s.hidden, true)?,
            dwconv: Conv2d::load(src, &format!("{p}.mlp.dwconv"), dw, true)?,
            fc2: Linear::load(src, &format!("{p}.mlp.fc2"), s.hidden, c, true)?,
            heads: s.heads,
            side: s.side,
            drop_path: 0.0,
        })
    }

    fn scale(&self) -> f32 {
        ((self.q.out_features() / self.heads) as f32).powf(-0.5)
    }

    /// Keys and values `(batch, heads, reduced tokens, head_dim)` from the (reduced) map of
    /// the normalised tokens `h`.
    fn keys_values<B: Fused>(&self, bk: &B, h: &B::Value) -> Result<(B::Value, B::Value)> {
        let reduced = match &self.sr {
            Some((conv, norm)) => {
                let map = conv.forward(bk, &to_grid(bk, h, self.side)?)?;
                norm.forward(bk, &from_grid(bk, &map)?)?
            }
            None => h.clone(),
        };
        let c = self.q.out_features();
        let k = self.kv.forward_outputs(bk, &reduced, 0, c)?;
        let v = self.kv.forward_outputs(bk, &reduced, c, 2 * c)?;
        Ok((
            split_heads(bk, &k, self.heads)?,
            split_heads(bk, &v, self.heads)?,
        ))
    }

    /// `proj(softmax(s q k^T) v)` for the queries of the tokens `h_rows` `(batch, M, C)`.
    fn attend<B: Fused>(
        &self,
        bk: &B,
        h_rows: &B::Value,
        k: &B::Value,
        v: &B::Value,
    ) -> Result<B::Value> {
        let q = split_heads(bk, &self.q.forward(bk, h_rows)?, self.heads)?;
        let out = bk.attention(&q, k, v, self.scale())?;
        Ok(self.proj.forward(bk, &out)?)
    }

    /// The MLP's hidden features after the depthwise convolution and GELU, for every token
    /// of the grid `x` `(batch, side^2, C)`.
    fn mlp_hidden<B: Fused>(&self, bk: &B, x: &B::Value) -> Result<B::Value> {
        let hidden = self.fc1.forward(bk, &self.norm2.forward(bk, x)?)?;
        let mixed = self.dwconv.forward(bk, &to_grid(bk, &hidden, self.side)?)?;
        Ok(bk.gelu(&from_grid(bk, &mixed)?)?)
    }

    /// `x + drop_path(branch)`: how every form of the block closes a residual.
    fn residual<B: Fused>(&self, bk: &B, x: &B::Value, branch: &B::Value) -> Result<B::Value> {
        Ok(bk.add(x, &bk.drop_path(branch, self.drop_path)?)?)
    }

    /// The dense block over every token.
    fn dense<B: Fused>(&self, bk: &B, x: &B::Value) -> Result<B::Value> {
        let h = self.norm1.forward(bk, x)?;
        let (k, v) = self.keys_values(bk, &h)?;
        let x = self.residual(bk, x, &self.attend(bk, &h, &k, &v)?)?;
        let mlp = self.fc2.forward(bk, &self.mlp_hidden(bk, &x)?)?;
        self.residual(bk, &x, &mlp)
    }
}

/// The PVT block as a [`TokenBlock`]: no class token (every token of the grid is scored and
/// selectable), a virtual class query (the mean normalised token) for scoring, keys and
/// values from the reduced map, and an idle form whose MLP convolution reads idle tokens.
impl<B: Fused> TokenBlock<B> for PvtBlock {
    type Error = ZooError;

    fn has_class_token(&self) -> bool {
        false
    }

    fn forward(&self, bk: &B, x: B::Value) -> Result<B::Value> {
        self.dense(bk, &x)
    }

    /// Every token against the virtual class query through full-resolution keys (the
    /// attention's keys when nothing is reduced), detached: the choice carries no gradient.
    fn token_scores(&self, bk: &B, x: &B::Value) -> Result<Tensor> {
        let eager = Eager;
        let x = bk.to_tensor(x);
        let &[batch, tokens, c] = x.shape() else {
            return Err(NnError::shape("PVT tokens", "(batch, tokens, dim)", x.shape()).into());
        };
        let h = self.norm1.forward(&eager, &x)?;
        let mean = eager.scale(&eager.sum_axis(&h, 1, true)?, 1.0 / tokens as f32)?;
        let query = self.q.forward(&eager, &mean)?.reshape(&[batch, c])?;
        let key_rows = |t: &Tensor| t.slice_axis(0, 0, c);
        let key_weight = key_rows(self.kv.weight().value())?;
        let key_bias = self.kv.bias().map(|b| key_rows(b.value())).transpose()?;
        let scoring = KeyScoring {
            norm_gamma: self.norm1.weight().value(),
            norm_beta: self.norm1.bias().value(),
            norm_eps: self.norm1.eps(),
            key_weight: &key_weight,
            key_bias: key_bias.as_ref(),
            scale_per_head: self.scale() / self.heads as f32,
        };
        Ok(class_key_scores(&x, &query, &scoring)?)
    }

    /// The selected tokens' queries attend over the full reduced keys and values; then the
    /// MLP, whose depthwise convolution runs on the grid where idle tokens hold their input
    /// values.
    fn forward_rows(&self, bk: &B, x: &B::Value, rows: &[Vec<usize>]) -> Result<B::Value> {
        let h = self.norm1.forward(bk, x)?;
        let (k, v) = self.keys_values(bk, &h)?;
        let attended = self.attend(bk, &bk.gather_rows(&h, rows)?, &k, &v)?;
        let y = self.residual(bk, &bk.gather_rows(x, rows)?, &attended)?;
        let x = bk.scatter_rows(x, rows, &y)?;
        let hidden = bk.gather_rows(&self.mlp_hidden(bk, &x)?, rows)?;
        self.residual(bk, &y, &self.fc2.forward(bk, &hidden)?)
    }

    fn attention_parts(&self, bk: &B, x: &B::Value) -> Result<AttentionParts<B::Value>> {
        let h = self.norm1.forward(bk, x)?;
        let (k, v) = self.keys_values(bk, &h)?;
        let q = split_heads(bk, &self.q.forward(bk, &h)?, self.heads)?;
        let logits = bk.matmul(
            &bk.scale(&q, self.scale())?,
            &bk.permute(&k, &[0, 1, 3, 2])?,
        )?;
        Ok(AttentionParts {
            logits,
            values: v,
            scores: TokenBlock::<B>::token_scores(self, bk, x)?,
            keys_are_tokens: false,
        })
    }

    fn attention_branch(&self, bk: &B, weights: &B::Value, values: &B::Value) -> Result<B::Value> {
        let out = bk.matmul(weights, values)?;
        let &[batch, heads, tokens, head_dim] = bk.shape(&out) else {
            return Err(NnError::shape(
                "attention output",
                "(batch, heads, tokens, head_dim)",
                bk.shape(&out),
            )
            .into());
        };
        let out = bk.reshape(
            &bk.permute(&out, &[0, 2, 1, 3])?,
            &[batch, tokens, heads * head_dim],
        )?;
        Ok(self.proj.forward(bk, &out)?)
    }

    fn mlp_branch(&self, bk: &B, x: &B::Value) -> Result<B::Value> {
        Ok(self.fc2.forward(bk, &self.mlp_hidden(bk, x)?)?)
    }

    fn residual(&self, bk: &B, x: &B::Value, branch: &B::Value) -> Result<B::Value> {
        PvtBlock::residual(self, bk, x, branch)
    }
}

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

impl PvtV2 {
    /// The same model running `policy`: dense, or idle layers (stages 2 and later; top-k
    /// pruning and EViT have no pyramid form).
    pub fn with_policy(mut self, policy: TokenPolicy) -> Result<Self> {
        if let TokenPolicy::Select { kind, schedule } = &policy {
            if *kind != PolicyKind::Idle {
                return Err(ZooError::Config(format!(
                    "PVT-v2 runs the idle policy only, not {kind}: top-k pruning and EViT have \
                     no form for its pyramid of token grids"
                )));
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
            return Err(ZooError::Config(format!(
                "drop-path rate must be in [0, 1), got {rate}"
            )));
        }
        let last = self.config.depth().saturating_sub(1).max(1) as f32;
        let blocks = self.stages.iter_mut().flat_map(|s| s.blocks.iter_mut());
        for (i, block) in blocks.enumerate() {
            block.drop_path = rate * i as f32 / last;
        }
        Ok(self)
    }

    /// The model's configuration.
    pub fn config(&self) -> &PvtConfig {
        &self.config
    }

    /// The token policy the model runs.
    pub fn policy(&self) -> &TokenPolicy {
        &self.policy
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
            selections,
        })
    }
}
