//! The learning-rate schedule: linear warm-up, then cosine decay to a floor.

/// Linear warm-up from `warmup_lr` to `base_lr` over `warmup_steps`, then a cosine from
/// `base_lr` down to `min_lr` at `total_steps` (timm's `CosineLRScheduler`, per step).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CosineSchedule {
    /// Peak learning rate, reached at the end of warm-up.
    pub base_lr: f64,
    /// Floor the cosine decays to.
    pub min_lr: f64,
    /// Learning rate of the first warm-up step.
    pub warmup_lr: f64,
    /// Steps of linear warm-up.
    pub warmup_steps: usize,
    /// Steps of the whole run.
    pub total_steps: usize,
}

impl CosineSchedule {
    /// The learning rate of step `step` (0-based); past the end it stays at `min_lr`.
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            let t = step as f64 / self.warmup_steps as f64;
            return self.warmup_lr + t * (self.base_lr - self.warmup_lr);
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let t = ((step - self.warmup_steps) as f64 / span as f64).min(1.0);
        self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1.0 + (std::f64::consts::PI * t).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_then_decays_monotonically() {
        let s = CosineSchedule {
            base_lr: 1.0,
            min_lr: 0.1,
            warmup_lr: 0.0,
            warmup_steps: 4,
            total_steps: 20,
        };
        assert_eq!(s.lr(0), 0.0);
        assert_eq!(s.lr(2), 0.5);
        assert_eq!(s.lr(4), 1.0);
        assert!((s.lr(12) - 0.55).abs() < 1e-12, "half way is the mid point");
        assert!((4..20).all(|i| s.lr(i + 1) <= s.lr(i)));
        assert_eq!(s.lr(25), 0.1);
    }
}
