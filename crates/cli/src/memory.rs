//! Refusing work that cannot fit in memory before allocating it: a config inside the
//! documented limits, or a large `--batch`, can still ask for more memory than the machine
//! has, and an allocation that fails aborts the process with no message. Commands estimate
//! what they need from the config and the batch and compare it with the memory they may use.

use anyhow::{Result, bail};

/// Where the memory a command may use comes from, for the error message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitSource {
    /// `--max-memory`.
    Argument,
    /// The process's address-space limit (`ulimit -v`, RLIMIT_AS).
    AddressSpace,
    /// The memory the operating system reports available (MemAvailable).
    Available,
}

/// The memory a command may use, in bytes, and what set it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryLimit {
    /// Bytes.
    pub bytes: u64,
    /// What set it.
    pub source: LimitSource,
}

/// The room left under the address-space limit (RLIMIT_AS) beside what the process has
/// mapped already, where one is set.
#[cfg(unix)]
fn address_space_room() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct, which `limit` is.
    let status = unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) };
    if status != 0 || limit.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    let mapped = idlevit_train::bench::status_field("VmSize:").unwrap_or(0);
    // rlim_t is u64 on Linux and every 64-bit Unix Rust supports.
    Some(limit.rlim_cur.saturating_sub(mapped))
}

#[cfg(not(unix))]
fn address_space_room() -> Option<u64> {
    None
}

/// The tightest of `--max-memory`, the address-space limit and the available memory; `None`
/// when none is known.
pub fn memory_limit(max_memory: Option<u64>) -> Option<MemoryLimit> {
    [
        max_memory.map(|bytes| (bytes, LimitSource::Argument)),
        address_space_room().map(|bytes| (bytes, LimitSource::AddressSpace)),
        idlevit_zoo::available_memory().map(|bytes| (bytes, LimitSource::Available)),
    ]
    .into_iter()
    .flatten()
    .min_by_key(|&(bytes, _)| bytes)
    .map(|(bytes, source)| MemoryLimit { bytes, source })
}

/// Bytes as GiB with two decimals.
pub fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / f64::from(1u32 << 30))
}

/// Refuses `what` when its estimated need (`None`: too large to count) exceeds `limit`.
pub fn check_fits(what: &str, estimate: Option<u64>, limit: Option<MemoryLimit>) -> Result<()> {
    let Some(need) = estimate else {
        bail!("{what} needs more memory than can be counted");
    };
    let Some(limit) = limit.filter(|limit| need > limit.bytes) else {
        return Ok(());
    };
    let source = match limit.source {
        LimitSource::Argument => "--max-memory",
        LimitSource::AddressSpace => "the process's address-space limit (ulimit -v)",
        LimitSource::Available => "the memory available on this machine",
    };
    bail!(
        "{what} needs about {} of memory, more than the {} allowed by {source}; use a smaller \
         model or batch{}",
        gib(need),
        gib(limit.bytes),
        if limit.source == LimitSource::Argument {
            ""
        } else {
            ", or raise the limit with --max-memory if the estimate is wrong"
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tightest_limit_wins() {
        let limit = memory_limit(Some(1 << 20)).expect("an argument is a limit");
        assert_eq!(limit.bytes, 1 << 20);
        assert_eq!(limit.source, LimitSource::Argument);
        if let Some(available) = idlevit_zoo::available_memory() {
            let limit = memory_limit(Some(u64::MAX)).expect("limit");
            assert!(limit.bytes <= available);
        }
    }

    #[test]
    fn estimates_beyond_the_limit_are_refused_with_both_figures() {
        let limit = Some(MemoryLimit {
            bytes: 4 << 30,
            source: LimitSource::Argument,
        });
        check_fits("the model", Some(4 << 30), limit).expect("fits exactly");
        let err = check_fits("the model", Some(5 << 30), limit).expect_err("too large");
        let text = err.to_string();
        assert!(
            text.contains("5.00 GiB") && text.contains("4.00 GiB"),
            "{text}"
        );
        assert!(text.contains("--max-memory"), "{text}");
        assert!(check_fits("the model", None, limit).is_err());
        assert!(check_fits("the model", None, None).is_err());
        check_fits("the model", Some(u64::MAX), None).expect("no limit known");
    }
}
