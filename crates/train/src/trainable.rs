//! What the objective and the optimiser need of a model: every zoo family provides it.

use idlevit_nn::Fused;
use idlevit_nn::{BatchNormMode, Eager, ParamVisitor, ParamVisitorMut};
use idlevit_tensor::Tensor;
use idlevit_zoo::{DeiT, LvVit, MaskedForward, PvtV2, TokenPolicy, Traced, ZooModel, each_family};

use crate::Result;

/// A model the finetuning objective trains: [`DeiT`], [`LvVit`], [`PvtV2`], or any of them
/// behind [`ZooModel`].
pub trait Trainable {
    /// The family's name in messages.
    fn family(&self) -> &'static str;

    /// Whether the idle layers have a token-to-token attention map with a CLS row, which
    /// the cut loss needs (DeiT and LV-ViT; not PVT-v2, whose spatial-reduction attention
    /// relates queries to a reduced map and which has no CLS token).
    fn has_cut_graph(&self) -> bool;

    /// The token policy the model trains under.
    fn policy(&self) -> &TokenPolicy;

    /// Whether the model has batch norms (LV-ViT's stem), which
    /// [`set_batch_norm`](Self::set_batch_norm) switches.
    fn has_batch_norm(&self) -> bool {
        false
    }

    /// Normalises with running (`Frozen`) or batch (`Train`) statistics; a model without
    /// batch norms is unchanged.
    fn set_batch_norm(&mut self, _mode: BatchNormMode) {}

    /// Moves the running statistics toward the last train-mode forward's batch.
    fn update_batch_norm(&mut self, _momentum: f32) -> Result<()> {
        Ok(())
    }

    /// Whether the release's objective distils this family's whole final token map rather
    /// than its CLS features (LV-ViT).
    fn distils_token_map(&self) -> bool {
        false
    }

    /// The training form: logits, the features distillation compares, and per idle layer
    /// the masked attention the cut loss needs (none where [`has_cut_graph`] is false).
    ///
    /// [`has_cut_graph`]: Self::has_cut_graph
    fn forward_training<B: Fused>(
        &self,
        bk: &B,
        images: &B::Value,
    ) -> Result<MaskedForward<B::Value>>;

    /// The inference form without a tape (a frozen teacher): logits and features.
    fn forward_frozen(&self, images: &Tensor) -> Result<Traced<Tensor>>;

    /// Visits every learnable parameter.
    fn visit_params(&self, f: &mut ParamVisitor<'_>);

    /// Visits every learnable parameter mutably (an optimiser step).
    fn visit_params_mut(&mut self, f: &mut ParamVisitorMut<'_>);
}

/// The items every family implements alike, under its own inherent methods.
macro_rules! delegate_common {
    () => {
        fn policy(&self) -> &TokenPolicy {
            self.policy()
        }

        fn forward_frozen(&self, images: &Tensor) -> Result<Traced<Tensor>> {
            Ok(self.forward_traced(&Eager, images)?)
        }

        fn visit_params(&self, f: &mut ParamVisitor<'_>) {
            self.visit_params(f)
        }

        fn visit_params_mut(&mut self, f: &mut ParamVisitorMut<'_>) {
            self.visit_params_mut(f)
        }
    };
}

/// The families whose idle layers are ViT blocks over a CLS token: their masked form is
/// already the training form, with the cut loss's attention maps.
macro_rules! cls_family {
    ($model:ty, $name:literal $(, $($extra:item)*)?) => {
        impl Trainable for $model {
            $($($extra)*)?

            fn family(&self) -> &'static str {
                $name
            }

            fn has_cut_graph(&self) -> bool {
                true
            }

            fn forward_training<B: Fused>(
                &self,
                bk: &B,
                images: &B::Value,
            ) -> Result<MaskedForward<B::Value>> {
                Ok(self.forward_masked(bk, images)?)
            }

            delegate_common!();
        }
    };
}

cls_family!(DeiT, "DeiT");
// Braces: the extra items are whole functions, which rustfmt would split with commas.
cls_family! {
    LvVit,
    "LV-ViT",
    fn has_batch_norm(&self) -> bool {
        true
    }

    fn set_batch_norm(&mut self, mode: BatchNormMode) {
        LvVit::set_batch_norm(self, mode)
    }

    fn update_batch_norm(&mut self, momentum: f32) -> Result<()> {
        Ok(LvVit::update_batch_norm(self, momentum)?)
    }

    fn distils_token_map(&self) -> bool {
        true
    }
}

impl Trainable for PvtV2 {
    fn family(&self) -> &'static str {
        "PVT-v2"
    }

    fn has_cut_graph(&self) -> bool {
        false
    }

    fn forward_training<B: Fused>(
        &self,
        bk: &B,
        images: &B::Value,
    ) -> Result<MaskedForward<B::Value>> {
        let out = self.forward_masked(bk, images)?;
        Ok(MaskedForward {
            logits: out.logits,
            features: out.features,
            tokens: out.tokens,
            layers: Vec::new(),
        })
    }

    delegate_common!();
}

impl Trainable for ZooModel {
    fn family(&self) -> &'static str {
        each_family!(self, ZooModel, m => m.family())
    }

    fn has_cut_graph(&self) -> bool {
        each_family!(self, ZooModel, m => m.has_cut_graph())
    }

    fn has_batch_norm(&self) -> bool {
        each_family!(self, ZooModel, m => m.has_batch_norm())
    }

    fn set_batch_norm(&mut self, mode: BatchNormMode) {
        each_family!(self, ZooModel, m => Trainable::set_batch_norm(&mut **m, mode))
    }

    fn update_batch_norm(&mut self, momentum: f32) -> Result<()> {
        each_family!(self, ZooModel, m => Trainable::update_batch_norm(&mut **m, momentum))
    }

    fn distils_token_map(&self) -> bool {
        each_family!(self, ZooModel, m => m.distils_token_map())
    }

    fn forward_training<B: Fused>(
        &self,
        bk: &B,
        images: &B::Value,
    ) -> Result<MaskedForward<B::Value>> {
        each_family!(self, ZooModel, m => m.forward_training(bk, images))
    }

    delegate_common!();
}
