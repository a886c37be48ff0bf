//! Every numeric argument's range, checked in one place when the command line is parsed, so
//! that a NaN learning rate or a zero `--top` is refused before anything runs.
//!
//! Each function is a `clap` value parser: it takes the text the user typed and returns the
//! value or a message that clap prints after the argument's name.
//!
//! ```
//! use idlevit_cli::checks::{keep_rate, probability};
//!
//! assert_eq!(keep_rate("0.7"), Ok(0.7));
//! assert!(keep_rate("0").is_err());
//! assert!(probability("NaN").is_err());
//! ```

use std::str::FromStr;

fn parse<T: FromStr>(text: &str) -> Result<T, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("`{}` is not a number", idlevit_checkpoint::clip(text)))
}

/// A finite number that `ok` accepts; `expected` says what it should have been otherwise.
fn finite(text: &str, ok: fn(f64) -> bool, expected: &str) -> Result<f64, String> {
    let value: f64 = parse(text)?;
    if !value.is_finite() {
        Err(format!("expected a finite number, found {value}"))
    } else if ok(value) {
        Ok(value)
    } else {
        Err(format!("expected {expected}, found {value}"))
    }
}

/// A finite number >= 0 (learning rates, weight decay, loss weights, mixup alphas).
pub fn non_negative(text: &str) -> Result<f64, String> {
    finite(text, |v| v >= 0.0, "a number >= 0")
}

/// [`non_negative`] as an `f32`, refusing values too large for one.
pub fn non_negative_f32(text: &str) -> Result<f32, String> {
    let value = non_negative(text)?;
    let narrow = value as f32;
    if narrow.is_finite() {
        Ok(narrow)
    } else {
        Err(format!("{value} is too large"))
    }
}

/// A finite number > 0 (a gradient-norm bound).
pub fn positive(text: &str) -> Result<f64, String> {
    finite(text, |v| v > 0.0, "a number > 0")
}

/// A probability or a share: a number from 0 to 1.
pub fn probability(text: &str) -> Result<f32, String> {
    finite(text, |v| (0.0..=1.0).contains(&v), "a number from 0 to 1").map(|v| v as f32)
}

/// A keep rate: more than 0, at most 1.
pub fn keep_rate(text: &str) -> Result<f64, String> {
    let value = finite(text, |_| true, "")?;
    if value > 0.0 && value <= 1.0 {
        Ok(value)
    } else {
        Err(format!(
            "keep rate {value} is outside (0, 1] (0.7 keeps 70% of the tokens)"
        ))
    }
}

/// A count of at least 1 (batch sizes, epochs, runs, classes to print, threads).
pub fn at_least_one(text: &str) -> Result<usize, String> {
    let value: usize = parse(text)?;
    if value >= 1 {
        Ok(value)
    } else {
        Err("expected at least 1".into())
    }
}

/// A memory size in bytes, written as a number with an optional unit: `512M`, `8G`, `8GiB`,
/// `1T` (units are powers of 1024; no unit means bytes).
pub fn memory_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => {
            return Err(format!(
                "unknown unit in `{}`; expected a number with K, M, G or T (e.g. 8G)",
                idlevit_checkpoint::clip(text)
            ));
        }
    };
    let value = positive(number)? * (1u64 << shift) as f64;
    if value < u64::MAX as f64 {
        Ok(value as u64)
    } else {
        Err(format!("{} is too large", idlevit_checkpoint::clip(text)))
    }
}

/// Checks arguments that depend on each other: the learning-rate floor may not exceed the
/// peak.
pub fn learning_rates(lr: f64, min_lr: f64) -> anyhow::Result<()> {
    anyhow::ensure!(
        min_lr <= lr,
        "--min-lr {min_lr} is above --lr {lr}: the floor of the schedule must not exceed its peak"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_non_finite_and_out_of_range_values() {
        for bad in ["NaN", "nan", "inf", "-inf", "1e400", "abc", ""] {
            assert!(non_negative(bad).is_err(), "{bad}");
            assert!(positive(bad).is_err(), "{bad}");
            assert!(probability(bad).is_err(), "{bad}");
            assert!(keep_rate(bad).is_err(), "{bad}");
        }
        assert!(non_negative("-1e-9").is_err());
        assert_eq!(non_negative("0"), Ok(0.0));
        assert!(positive("0").is_err());
        assert_eq!(positive("0.5"), Ok(0.5));
        assert!(probability("1.0001").is_err());
        assert!(probability("-0.1").is_err());
        assert_eq!(probability("1"), Ok(1.0));
        assert!(keep_rate("0").is_err());
        assert!(keep_rate("1.5").is_err());
        assert_eq!(keep_rate("1"), Ok(1.0));
        assert!(non_negative_f32("1e300").is_err());
        assert_eq!(non_negative_f32("20"), Ok(20.0));
    }

    #[test]
    fn counts_start_at_one() {
        assert!(at_least_one("0").is_err());
        assert!(at_least_one("-3").is_err());
        assert_eq!(at_least_one("5"), Ok(5));
    }

    #[test]
    fn memory_sizes_take_binary_units() {
        assert_eq!(memory_size("512"), Ok(512));
        assert_eq!(memory_size("8G"), Ok(8 << 30));
        assert_eq!(memory_size("1.5 GiB"), Ok(3 << 29));
        assert_eq!(memory_size("64m"), Ok(64 << 20));
        assert!(memory_size("0").is_err());
        assert!(memory_size("8Q").is_err());
        assert!(memory_size("1e9G").is_err());
    }

    #[test]
    fn the_floor_may_not_exceed_the_peak() {
        assert!(learning_rates(1e-5, 1e-6).is_ok());
        assert!(learning_rates(1e-5, 1e-5).is_ok());
        assert!(learning_rates(1e-6, 1e-5).is_err());
    }
}
