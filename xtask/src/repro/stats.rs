//! Paired comparisons over seeds: the mean difference, its 95% confidence interval from
//! Student's t, and the verdict that interval gives.

/// Two-sided 95% quantiles of Student's t for 1..=30 degrees of freedom.
const T_975: [f64; 30] = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
    2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
    2.052, 2.048, 2.045, 2.042,
];

/// The 97.5% quantile of Student's t with `df` degrees of freedom (`df` >= 1); beyond 30
/// the Cornish–Fisher expansion around the normal quantile to the second term, within 1e-4
/// of the exact value there.
pub fn t_975(df: usize) -> f64 {
    const Z: f64 = 1.959_964;
    match df {
        0 => f64::INFINITY,
        1..=30 => T_975[df - 1],
        _ => {
            let v = df as f64;
            Z + (Z.powi(3) + Z) / (4.0 * v)
                + (5.0 * Z.powi(5) + 16.0 * Z.powi(3) + 3.0 * Z) / (96.0 * v * v)
        }
    }
}

/// What an interval says about "A beats B".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The whole interval lies above zero.
    Holds,
    /// The whole interval lies below zero: B beats A.
    Fails,
    /// The interval contains zero.
    Unresolved,
}

impl Verdict {
    /// The verdict in the report's words.
    pub fn words(self) -> &'static str {
        match self {
            Verdict::Holds => "holds",
            Verdict::Fails => "fails (the reverse holds)",
            Verdict::Unresolved => "unresolved",
        }
    }
}

/// The paired difference of A over B across seeds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Paired {
    /// Seeds both were run with.
    pub seeds: usize,
    /// Mean of A − B.
    pub mean: f64,
    /// Half-width of the 95% interval of the mean (infinite with fewer than two seeds).
    pub half_width: f64,
}

/// Mean and sample standard deviation (0 for one value; mean 0 for none).
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len().max(1) as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = if values.len() > 1 {
        values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

impl Paired {
    /// Compares `a` and `b`, each `(seed, value)`, over the seeds both have.
    pub fn new(a: &[(u64, f64)], b: &[(u64, f64)]) -> Self {
        let diffs: Vec<f64> = a
            .iter()
            .filter_map(|&(seed, va)| b.iter().find(|(s, _)| *s == seed).map(|&(_, vb)| va - vb))
            .collect();
        let n = diffs.len();
        let (mean, std) = mean_std(&diffs);
        let half_width = if n < 2 {
            f64::INFINITY
        } else {
            t_975(n - 1) * std / (n as f64).sqrt()
        };
        Self {
            seeds: n,
            mean,
            half_width,
        }
    }

    /// The 95% interval `(low, high)`.
    pub fn interval(&self) -> (f64, f64) {
        (self.mean - self.half_width, self.mean + self.half_width)
    }

    /// Whether A beats B by this interval.
    pub fn verdict(&self) -> Verdict {
        let (low, high) = self.interval();
        if low > 0.0 {
            Verdict::Holds
        } else if high < 0.0 {
            Verdict::Fails
        } else {
            Verdict::Unresolved
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeded(values: &[f64]) -> Vec<(u64, f64)> {
        values
            .iter()
            .enumerate()
            .map(|(i, &v)| (i as u64, v))
            .collect()
    }

    #[test]
    fn the_interval_is_students_t_over_the_paired_differences() {
        // Differences 1, 2, 3, 4, 5: mean 3, sd sqrt(2.5), t(4) = 2.776.
        let a = seeded(&[11.0, 12.0, 13.0, 14.0, 15.0]);
        let b = seeded(&[10.0; 5]);
        let p = Paired::new(&a, &b);
        assert_eq!(p.seeds, 5);
        assert!((p.mean - 3.0).abs() < 1e-12);
        let expected = 2.776 * (2.5f64 / 5.0).sqrt();
        assert!((p.half_width - expected).abs() < 1e-12, "{}", p.half_width);
        assert_eq!(p.interval(), (3.0 - p.half_width, 3.0 + p.half_width));
        assert_eq!(p.verdict(), Verdict::Holds);
        assert_eq!(Paired::new(&b, &a).verdict(), Verdict::Fails);
    }

    #[test]
    fn pairing_removes_what_the_seeds_share() {
        // Seeds move both methods together: the unpaired spread is large, the paired one zero
        // apart from a steady 0.5 gain, which pairing resolves.
        let b = seeded(&[50.0, 70.0, 60.0, 90.0, 40.0]);
        let a: Vec<(u64, f64)> = b.iter().map(|&(s, v)| (s, v + 0.5)).collect();
        let p = Paired::new(&a, &b);
        assert!((p.mean - 0.5).abs() < 1e-12 && p.half_width < 1e-9);
        assert_eq!(p.verdict(), Verdict::Holds);
    }

    #[test]
    fn only_seeds_both_ran_are_paired_and_noise_is_unresolved() {
        let a = vec![(0, 1.0), (1, -1.0), (2, 0.5), (7, 100.0)];
        let b = vec![(0, 0.0), (1, 0.0), (2, 0.0)];
        let p = Paired::new(&a, &b);
        assert_eq!(p.seeds, 3);
        assert!((p.mean - 0.5 / 3.0).abs() < 1e-12);
        assert_eq!(p.verdict(), Verdict::Unresolved);
        let one = Paired::new(&[(0, 2.0)], &[(0, 1.0)]);
        assert!(one.half_width.is_infinite());
        assert_eq!(one.verdict(), Verdict::Unresolved);
    }

    #[test]
    fn an_interval_that_touches_zero_is_unresolved() {
        // No difference at all: the interval is the single point 0.
        let same = seeded(&[70.0, 71.0, 72.0]);
        let p = Paired::new(&same, &same);
        assert_eq!(p.interval(), (0.0, 0.0));
        assert_eq!(p.verdict(), Verdict::Unresolved);
    }

    #[test]
    fn t_quantiles_decrease_towards_the_normal() {
        assert!((t_975(4) - 2.776).abs() < 1e-9);
        // Exact values 2.0395 and 1.9799.
        assert!((t_975(31) - 2.0395).abs() < 1e-4, "{}", t_975(31));
        assert!((t_975(120) - 1.9799).abs() < 1e-4, "{}", t_975(120));
        for df in 1..200 {
            assert!(t_975(df) > t_975(df + 1) && t_975(df + 1) > 1.959);
        }
    }
}
