//! Token policies: what a model does at its selection layers.

use idlevit_ops::Backend;

use crate::{Result, Schedule, TokenBlock, TokenSelection};

/// Where a selecting layer is: its keep ratio and the image tokens the stack started with.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerKeep {
    /// The schedule's keep ratio at this layer.
    pub ratio: f64,
    /// Image tokens at the stack's input (keep counts are fractions of these).
    pub image_tokens: usize,
}

/// What a selecting layer produced.
#[derive(Clone, Debug)]
pub struct PolicyStep<V> {
    /// The layer's output tokens.
    pub output: V,
    /// The rows the layer computed, in its input's row indices, if it reports them.
    pub selection: Option<TokenSelection>,
}

/// A token policy's layer form: what a selecting layer computes in inference. Each policy
/// ([`Idle`](crate::Idle), [`Prune`](crate::Prune), [`Evit`](crate::Evit)) lives in its own
/// file with its forms; [`run_layers_with`](crate::run_layers_with) runs any of them, or a
/// policy of your own, over a stack of [`TokenBlock`]s.
pub trait SelectionPolicy {
    /// Whether unselected tokens leave the stack, so that later rows no longer match the
    /// input's tokens.
    fn drops_tokens(&self) -> bool {
        false
    }

    /// The layer's inference form on `x` at `at`.
    fn gathered<B: Backend, T: TokenBlock<B>>(
        &self,
        bk: &B,
        block: &T,
        x: B::Value,
        at: LayerKeep,
    ) -> Result<PolicyStep<B::Value>, T::Error>;
}

/// How selected-away tokens are treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyKind {
    /// IdleViT: unselected tokens skip the layer and stay, selectable again later.
    Idle,
    /// Top-k pruning: unselected tokens are dropped for good.
    Prune,
    /// EViT: after attention, the least attended tokens are fused into one token.
    Evit,
}

/// The policy's name as the CLI's `--policy` spells it: `idle`, `prune` or `evit`.
impl std::fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Idle => "idle",
            Self::Prune => "prune",
            Self::Evit => "evit",
        })
    }
}

impl std::str::FromStr for PolicyKind {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "idle" => Ok(Self::Idle),
            "prune" => Ok(Self::Prune),
            "evit" => Ok(Self::Evit),
            other => Err(format!(
                "unknown policy `{other}`; expected idle, prune or evit"
            )),
        }
    }
}

/// The token policy a model is built with: dense, or a kind of selection on a schedule.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum TokenPolicy {
    /// Every layer computes every token.
    #[default]
    Dense,
    /// Selection of `kind` at the schedule's layers.
    Select {
        /// How unselected tokens are treated.
        kind: PolicyKind,
        /// Where selection happens and how much is kept.
        schedule: Schedule,
    },
}

impl TokenPolicy {
    /// A selecting policy.
    pub fn select(kind: PolicyKind, schedule: Schedule) -> Self {
        Self::Select { kind, schedule }
    }

    /// Checks the policy against a model of `depth` blocks and `tokens` image tokens.
    pub fn validate(&self, depth: usize, tokens: usize) -> Result<()> {
        match self {
            Self::Dense => Ok(()),
            Self::Select { kind, schedule } => {
                schedule.validate(depth, tokens)?;
                if *kind == PolicyKind::Prune {
                    // Pruned tokens never return, so a later layer cannot keep more.
                    let counts = schedule
                        .keep_ratios()
                        .iter()
                        .map(|&r| crate::keep_count(tokens, r))
                        .collect::<Result<Vec<_>>>()?;
                    if counts.windows(2).any(|w| w[1] > w[0]) {
                        return Err(crate::SelectorError::Schedule(format!(
                            "top-k pruning needs non-increasing keep counts, got {counts:?}"
                        )));
                    }
                }
                Ok(())
            }
        }
    }

    /// The policy kind and keep ratio at block `layer`, if it selects there.
    pub fn at(&self, layer: usize) -> Option<(PolicyKind, f64)> {
        match self {
            Self::Dense => None,
            Self::Select { kind, schedule } => schedule.ratio_at(layer).map(|r| (*kind, r)),
        }
    }
}
