//! Patch embedding: a stride-`p` convolution computed as a matrix product over patches.

use crate::{Fused, Init, Linear, NnError, Param, Result, WeightSource};

/// Cuts `(batch, channels, H, W)` images into `p x p` patches and projects each to `dim`,
/// equal to timm's `Conv2d(kernel = stride = p)`. Patches are flattened channel-major
/// (channel, then row, then column), the order of the conv weight.
#[derive(Clone, Debug)]
pub struct PatchEmbed {
    proj: Linear,
    img_size: usize,
    patch_size: usize,
    in_chans: usize,
}

crate::params!(PatchEmbed: proj);

impl PatchEmbed {
    /// Reads `{prefix}.proj.weight` `(dim, in_chans, p, p)` and `{prefix}.proj.bias` `(dim)`.
    pub fn load(
        src: &mut dyn WeightSource,
        prefix: &str,
        img_size: usize,
        patch_size: usize,
        in_chans: usize,
        dim: usize,
    ) -> Result<Self> {
        if patch_size == 0 || !img_size.is_multiple_of(patch_size) {
            return Err(NnError::Config(format!(
                "image size {img_size} is not a multiple of patch size {patch_size}"
            )));
        }
        // Stored as the conv weight, used as the matrix of flattened patches.
        let name = format!("{prefix}.proj.weight");
        let stored = vec![dim, in_chans, patch_size, patch_size];
        let conv = src.take(&name, &stored, Init::FanIn)?;
        let weight = Param::new(
            name,
            conv.reshape(&[dim, in_chans * patch_size * patch_size])?,
        )
        .with_stored_shape(stored);
        let bias = src.param(&format!("{prefix}.proj.bias"), &[dim], Init::Bias)?;
        Ok(Self {
            proj: Linear::from_params(weight, Some(bias))?,
            img_size,
            patch_size,
            in_chans,
        })
    }

    /// The number of patches per image.
    pub fn num_patches(&self) -> usize {
        (self.img_size / self.patch_size).pow(2)
    }

    /// Embeds images `(batch, in_chans, img, img)` into tokens `(batch, patches, dim)`.
    pub fn forward<B: Fused>(&self, bk: &B, images: &B::Value) -> Result<B::Value> {
        let (s, p, c) = (self.img_size, self.patch_size, self.in_chans);
        let shape = bk.shape(images);
        if shape.len() != 4 || shape[1..] != [c, s, s] || shape[0] == 0 {
            return Err(NnError::shape(
                "input images",
                format!("(batch >= 1, {c}, {s}, {s})"),
                shape,
            ));
        }
        let (batch, grid) = (shape[0], s / p);
        let x = bk.reshape(images, &[batch, c, grid, p, grid, p])?;
        let x = bk.permute(&x, &[0, 2, 4, 1, 3, 5])?;
        let x = bk.reshape(&x, &[batch, grid * grid, c * p * p])?;
        self.proj.forward(bk, &x)
    }
}
