//! PVT-v2 hyper-parameters: timm's published sizes, free-form JSON configs, and the stage
//! arithmetic (token grids, idle schedules) the model and its cost counts share.

use idlevit_selector::{Schedule, SelectorError, keep_count};
use serde::{Deserialize, Serialize};

use crate::error::bail;
use crate::{MAX_PATCHES, Result};

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
    /// Idle layers of a custom idle schedule, as global block indices counted over all
    /// stages in order (stage 1's blocks first); with `keep_ratios`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_layers: Option<Vec<usize>>,
    /// Keep ratio of each idle layer of a custom schedule, a fraction of its stage's tokens;
    /// with `idle_layers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_ratios: Option<Vec<f64>>,
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
            idle_layers: None,
            keep_ratios: None,
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

    /// The custom idle schedule of the config's `idle_layers` and `keep_ratios`, if set;
    /// one list without the other is an error.
    pub fn schedule(&self) -> Result<Option<Schedule>> {
        crate::config::schedule_lists(&self.idle_layers, &self.keep_ratios)
    }

    /// Checks `schedule` against the stages: every idle layer exists, is outside stage 1
    /// (whose 56x56 grid is what later stages downsample; see `docs/pvt-idle.md`), and keeps
    /// at least one token of its stage.
    pub fn validate_schedule(&self, schedule: &Schedule) -> Result<()> {
        for (&layer, &ratio) in schedule.idle_layers().iter().zip(schedule.keep_ratios()) {
            let Some((stage, _)) = self.stage_of(layer) else {
                bail!(
                    "idle layer {layer} does not exist in a model of {} blocks",
                    self.depth()
                );
            };
            if stage == 0 {
                bail!("idle layer {layer} is in stage 1; PVT idles stages 2 and later");
            }
            let tokens = self.stage_tokens(stage);
            match keep_count(tokens, ratio) {
                Err(SelectorError::NothingKept { .. }) => {
                    bail!(
                        "keep ratio {ratio} at idle layer {layer} keeps no token of the {tokens} \
                         in stage {}; raise the ratio",
                        stage + 1
                    );
                }
                other => other?,
            };
        }
        Ok(())
    }

    /// Checks that the numbers describe a model that can run.
    pub fn validate(&self) -> Result<()> {
        let n = self.num_stages();
        let [dims, heads, srs, ratios] = [
            self.embed_dims.len(),
            self.num_heads.len(),
            self.sr_ratios.len(),
            self.mlp_ratios.len(),
        ];
        if n == 0 || n > 8 || [dims, heads, srs, ratios].iter().any(|&l| l != n) {
            bail!(
                "embed_dims, depths, num_heads, sr_ratios and mlp_ratios need one entry per \
                 stage (1 to 8 stages); found lengths {dims}, {n}, {heads}, {srs}, {ratios}"
            );
        }
        if self.img_size == 0 || self.img_size.saturating_mul(self.img_size) > 16 * MAX_PATCHES {
            bail!("img_size {} is out of range", self.img_size);
        }
        for (i, side) in self.grid_sides().into_iter().enumerate() {
            let stage = i + 1;
            let (c, h, depth) = (self.embed_dims[i], self.num_heads[i], self.depths[i]);
            let (sr, r) = (self.sr_ratios[i], self.mlp_ratios[i]);
            if c == 0 || c > 8192 || h == 0 || !c.is_multiple_of(h) {
                bail!("stage {stage}: width {c} must be in 1..=8192 and a multiple of {h} heads");
            }
            if depth == 0 || depth > 64 {
                bail!("stage {stage}: depth {depth} is outside 1..=64");
            }
            if sr == 0 || sr > side {
                bail!("stage {stage}: sr_ratio {sr} must be in 1..={side} (the stage's grid side)");
            }
            if !(r.is_finite() && r > 0.0 && r <= 64.0) || self.mlp_hidden(i) == 0 {
                bail!("stage {stage}: mlp_ratio {r} gives no hidden units");
            }
        }
        if self.num_classes == 0 || self.num_classes > 1 << 20 {
            bail!("num_classes {} is outside 1..=1048576", self.num_classes);
        }
        if let Some(schedule) = self.schedule()? {
            self.validate_schedule(&schedule)
                .map_err(crate::config::lists_error)?;
        }
        Ok(())
    }
}
