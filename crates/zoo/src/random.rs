//! Seeded random weights under timm's names, for benchmarks and tests without checkpoints.

use idlevit_checkpoint::Checkpoint;
use idlevit_tensor::Tensor;

use crate::{DeiTConfig, Result};

/// A small, fast, seedable generator (SplitMix64); statistical quality is ample for weights.
struct SplitMix(u64);

impl SplitMix {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A standard normal sample (Box–Muller).
    fn normal(&mut self) -> f32 {
        let u1 = ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let u2 = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }

    fn tensor(&mut self, shape: &[usize], std: f32, mean: f32) -> Result<Tensor> {
        let n = shape.iter().product();
        let values = (0..n).map(|_| mean + std * self.normal()).collect();
        Ok(Tensor::from_vec(shape.to_vec(), values)?)
    }
}

/// Every tensor of a DeiT with `config`, drawn from `seed`: linears with std `fan_in^-1/2`
/// so activations keep unit scale, norms near identity.
pub fn random_checkpoint(config: &DeiTConfig, seed: u64) -> Result<Checkpoint> {
    let mut rng = SplitMix(seed);
    let mut ckpt = Checkpoint::default();
    let c = config.embed_dim;
    let p = config.patch_size;
    let hidden = config.mlp_hidden();
    let mut linear =
        |ckpt: &mut Checkpoint, name: &str, out: usize, fan_in: usize, bias: bool| -> Result<()> {
            let std = (fan_in as f32).powf(-0.5);
            ckpt.insert(
                format!("{name}.weight"),
                rng.tensor(&[out, fan_in], std, 0.0)?,
            );
            if bias {
                ckpt.insert(format!("{name}.bias"), rng.tensor(&[out], 0.02, 0.0)?);
            }
            Ok(())
        };
    linear(&mut ckpt, "patch_embed.proj", c, 3 * p * p, true)?;
    let conv = ckpt
        .require("patch_embed.proj.weight")?
        .reshape(&[c, 3, p, p])?;
    ckpt.insert("patch_embed.proj.weight", conv);
    for i in 0..config.depth {
        let b = format!("blocks.{i}");
        linear(
            &mut ckpt,
            &format!("{b}.attn.qkv"),
            3 * c,
            c,
            config.qkv_bias,
        )?;
        linear(&mut ckpt, &format!("{b}.attn.proj"), c, c, true)?;
        linear(&mut ckpt, &format!("{b}.mlp.fc1"), hidden, c, true)?;
        linear(&mut ckpt, &format!("{b}.mlp.fc2"), c, hidden, true)?;
    }
    linear(&mut ckpt, "head", config.num_classes, c, true)?;
    let mut rng = SplitMix(seed ^ 0x5EED);
    for i in 0..config.depth {
        for norm in ["norm1", "norm2"] {
            ckpt.insert(
                format!("blocks.{i}.{norm}.weight"),
                rng.tensor(&[c], 0.05, 1.0)?,
            );
            ckpt.insert(
                format!("blocks.{i}.{norm}.bias"),
                rng.tensor(&[c], 0.05, 0.0)?,
            );
        }
    }
    ckpt.insert("norm.weight", rng.tensor(&[c], 0.05, 1.0)?);
    ckpt.insert("norm.bias", rng.tensor(&[c], 0.05, 0.0)?);
    ckpt.insert("cls_token", rng.tensor(&[1, 1, c], 0.5, 0.0)?);
    ckpt.insert(
        "pos_embed",
        rng.tensor(&[1, config.num_patches() + 1, c], 0.5, 0.0)?,
    );
    Ok(ckpt)
}

/// Seeded random weights drawn tensor by tensor under the names a family gives them (the
/// families after DeiT build their checkpoints with this).
pub(crate) struct RandomWeights {
    rng: SplitMix,
    ckpt: Checkpoint,
}

impl RandomWeights {
    /// An empty checkpoint and a generator seeded with `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            rng: SplitMix(seed),
            ckpt: Checkpoint::default(),
        }
    }

    /// `name` of `shape`, normal with `mean` and `std`.
    pub(crate) fn tensor(
        &mut self,
        name: &str,
        shape: &[usize],
        std: f32,
        mean: f32,
    ) -> Result<()> {
        let t = self.rng.tensor(shape, std, mean)?;
        self.ckpt.insert(name, t);
        Ok(())
    }

    /// A weight of `shape` whose first axis is the output (linear or convolution), with std
    /// `fan_in^-1/2` so activations keep unit scale, and a small bias `(out)` if `bias`.
    pub(crate) fn layer(&mut self, prefix: &str, shape: &[usize], bias: bool) -> Result<()> {
        let fan_in: usize = shape[1..].iter().product();
        let std = (fan_in.max(1) as f32).powf(-0.5);
        self.tensor(&format!("{prefix}.weight"), shape, std, 0.0)?;
        if bias {
            self.tensor(&format!("{prefix}.bias"), &shape[..1], 0.02, 0.0)?;
        }
        Ok(())
    }

    /// A layer norm near the identity.
    pub(crate) fn norm(&mut self, prefix: &str, c: usize) -> Result<()> {
        self.tensor(&format!("{prefix}.weight"), &[c], 0.05, 1.0)?;
        self.tensor(&format!("{prefix}.bias"), &[c], 0.05, 0.0)
    }

    /// A batch norm near the identity, with running statistics (variances near 1).
    pub(crate) fn batch_norm(&mut self, prefix: &str, c: usize) -> Result<()> {
        self.norm(prefix, c)?;
        self.tensor(&format!("{prefix}.running_mean"), &[c], 0.05, 0.0)?;
        let var = self.rng.tensor(&[c], 0.1, 0.0)?.map(|v| 1.0 + v.abs());
        self.ckpt.insert(format!("{prefix}.running_var"), var);
        Ok(())
    }

    /// A timm ViT block under `prefix`: norms, fused qkv, projection, two-layer MLP.
    pub(crate) fn vit_block(
        &mut self,
        prefix: &str,
        c: usize,
        hidden: usize,
        qkv_bias: bool,
    ) -> Result<()> {
        self.norm(&format!("{prefix}.norm1"), c)?;
        self.layer(&format!("{prefix}.attn.qkv"), &[3 * c, c], qkv_bias)?;
        self.layer(&format!("{prefix}.attn.proj"), &[c, c], true)?;
        self.norm(&format!("{prefix}.norm2"), c)?;
        self.layer(&format!("{prefix}.mlp.fc1"), &[hidden, c], true)?;
        self.layer(&format!("{prefix}.mlp.fc2"), &[c, hidden], true)
    }

    /// The weights drawn so far.
    pub(crate) fn finish(self) -> Checkpoint {
        self.ckpt
    }
}
