//! The methods that run a stack of transformer blocks under a token policy, shared by the
//! families whose blocks are timm's ViT blocks over a CLS token and image tokens (DeiT,
//! LV-ViT).

/// Gives a family of ViT blocks over a CLS token (its `config`, `blocks` and `policy` fields,
/// and its `embed` and `features_and_logits`) the methods that run its stack: the policy,
/// stochastic depth, and the forward passes.
macro_rules! cls_stack_methods {
    ($model:ty) => {
        impl $model {
            /// The same model running `policy` at its selection layers; the policy is checked
            /// against the model's depth and token count.
            pub fn with_policy(mut self, policy: idlevit_selector::TokenPolicy) -> Result<Self> {
                policy.validate(self.config.depth, self.config.num_patches())?;
                self.policy = policy;
                Ok(self)
            }

            /// The same model with stochastic depth for training: block `i` of `depth` drops
            /// its residual branches at `rate * i / (depth - 1)`, timm's linear rule (the
            /// release finetunes with 0.1). Only a seeded training tape applies it; inference
            /// is unchanged.
            pub fn with_drop_path(mut self, rate: f32) -> Result<Self> {
                let last = self.blocks.len().saturating_sub(1).max(1) as f32;
                for (i, block) in self.blocks.iter_mut().enumerate() {
                    block.set_drop_path(rate * i as f32 / last)?;
                }
                Ok(self)
            }

            /// The transformer blocks, in order.
            pub fn blocks(&self) -> &[idlevit_nn::Block] {
                &self.blocks
            }

            /// Forward pass under the model's policy (idle layers in their gathered, inference
            /// form): images `(batch, 3, img, img)` to logits `(batch, classes)`.
            pub fn forward<B: idlevit_nn::Fused>(
                &self,
                bk: &B,
                images: &B::Value,
            ) -> Result<B::Value> {
                Ok(self.forward_traced(bk, images)?.logits)
            }

            /// [`forward`](Self::forward), also returning each selecting layer's choice.
            pub fn forward_traced<B: idlevit_nn::Fused>(
                &self,
                bk: &B,
                images: &B::Value,
            ) -> Result<$crate::Traced<B::Value>> {
                let x = self.embed(bk, images)?;
                let (x, selections) =
                    idlevit_selector::run_layers(bk, &self.blocks, &self.policy, 0, x)?;
                let (tokens, features, logits) = self.features_and_logits(bk, &x)?;
                Ok($crate::Traced {
                    logits,
                    features,
                    tokens,
                    selections,
                })
            }

            /// The training form: dense layers as usual, idle layers masked (all tokens kept
            /// in the tensors), returning the masks and attention logits the cut loss needs.
            /// Pruning and EViT have no masked form: they train in their gathered form
            /// (gradients flow through the kept and fused tokens, as in the EViT release) and
            /// return no idle layers.
            pub fn forward_masked<B: idlevit_nn::Fused>(
                &self,
                bk: &B,
                images: &B::Value,
            ) -> Result<$crate::MaskedForward<B::Value>> {
                use idlevit_selector::{PolicyKind, TokenPolicy, run_layers, run_layers_masked};
                let x = self.embed(bk, images)?;
                let (blocks, policy) = (&self.blocks, &self.policy);
                let (x, layers) = match policy {
                    TokenPolicy::Select { kind, .. } if *kind != PolicyKind::Idle => {
                        (run_layers(bk, blocks, policy, 0, x)?.0, Vec::new())
                    }
                    _ => run_layers_masked(bk, blocks, policy, 0, x)?,
                };
                let (tokens, features, logits) = self.features_and_logits(bk, &x)?;
                Ok($crate::MaskedForward {
                    logits,
                    features,
                    tokens,
                    layers,
                })
            }
        }
    };
}

pub(crate) use cls_stack_methods;
