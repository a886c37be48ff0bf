//! Which bf16 kernel runs: detection, the environment override, and whether bf16 should beat
//! f32 here. Every decision is a pure function of what was detected, so it is unit-tested.

use super::Bf16Kernel;
use super::tile_check::TileCheck;

/// Environment variable that forces a kernel: `amx`, `avx512` (or `avx512-bf16`) or
/// `portable`. An unknown or unavailable choice is ignored with a warning.
pub const KERNEL_ENV: &str = "IDLEVIT_BF16_KERNEL";

/// CPUID.(EAX=7, ECX=0):EDX bit of AMX-BF16 (`tdpbf16ps`).
const AMX_BF16_BIT: u32 = 1 << 22;
/// CPUID.(EAX=7, ECX=0):EDX bit of AMX-TILE (tile configuration, loads and stores).
const AMX_TILE_BIT: u32 = 1 << 24;

/// Whether this process may run the AMX kernel, and if not, why.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum AmxSupport {
    /// The CPU has the instructions, the OS granted tile data and the tiles passed the
    /// start-up check.
    Usable(TileCheck),
    /// The CPU lacks AMX-TILE or AMX-BF16 (or this is not x86-64 Linux).
    NoInstructions,
    /// The OS refused the permission request with this errno.
    Refused(i64),
    /// The request returned success but the permitted set lacks tile data.
    NotGranted,
    /// The tiles gave sums outside the accumulation bound in the start-up check.
    FailedCheck(TileCheck),
}

impl AmxSupport {
    /// Whether the AMX kernel may run.
    pub(crate) fn usable(&self) -> bool {
        matches!(self, Self::Usable(_))
    }

    /// What a user of a CPU with AMX should know about it: the check's outcome, or why the
    /// tiles are not used; `None` on a CPU without AMX.
    pub(crate) fn describe(&self) -> Option<String> {
        match self {
            Self::Usable(check) => Some(format!("AMX {}", check.describe())),
            Self::NoInstructions => None,
            Self::Refused(errno) => Some(format!(
                "AMX not used: Linux refused the process tile data (errno {errno})"
            )),
            Self::NotGranted => {
                Some("AMX not used: Linux did not grant the process tile data".to_string())
            }
            Self::FailedCheck(check) => Some(format!(
                "AMX not used: the tiles failed their {}",
                check.describe()
            )),
        }
    }
}

/// Decides AMX support from CPUID leaf 7's EDX, running `request` (the permission request,
/// returning 0 or a negative errno) only when the CPU has the instructions, then `permitted`
/// (the process's permitted XSTATE components, `None` when unreadable) to confirm it, and
/// last `check` (the tiles against the software model) once they may be used.
pub(crate) fn amx_support(
    cpuid7_edx: u32,
    request: impl FnOnce() -> i64,
    permitted: impl FnOnce() -> Option<u64>,
    check: impl FnOnce() -> TileCheck,
) -> AmxSupport {
    let needed = AMX_BF16_BIT | AMX_TILE_BIT;
    if cpuid7_edx & needed != needed {
        return AmxSupport::NoInstructions;
    }
    match request() {
        0 => {}
        err => return AmxSupport::Refused(-err),
    }
    // Tile data is component 18 (`amx::XFEATURE_XTILEDATA`).
    match permitted() {
        Some(mask) if mask & (1 << 18) != 0 => {}
        _ => return AmxSupport::NotGranted,
    }
    let check = check();
    if check.passed() {
        AmxSupport::Usable(check)
    } else {
        AmxSupport::FailedCheck(check)
    }
}

/// The fastest kernel `supported` accepts, from AMX down to the portable one.
fn best(supported: &impl Fn(Bf16Kernel) -> bool) -> Bf16Kernel {
    [Bf16Kernel::Amx, Bf16Kernel::Avx512Bf16]
        .into_iter()
        .find(|&k| supported(k))
        .unwrap_or(Bf16Kernel::Portable)
}

/// The kernel to run given the override `requested` (the environment variable's value, if
/// set): the requested one when `supported`, else the best supported one, with a warning
/// saying why the request was not followed.
pub(crate) fn choose(
    requested: Option<&str>,
    supported: impl Fn(Bf16Kernel) -> bool,
) -> (Bf16Kernel, Option<String>) {
    let Some(requested) = requested.map(str::trim).filter(|r| !r.is_empty()) else {
        return (best(&supported), None);
    };
    let kernel = match requested.to_ascii_lowercase().as_str() {
        "amx" => Bf16Kernel::Amx,
        "avx512" | "avx512-bf16" | "avx512bf16" => Bf16Kernel::Avx512Bf16,
        "portable" => Bf16Kernel::Portable,
        _ => {
            let fallback = best(&supported);
            let warning = format!(
                "{KERNEL_ENV}={requested} is not one of amx, avx512, portable; using {}",
                fallback.name()
            );
            return (fallback, Some(warning));
        }
    };
    if supported(kernel) {
        return (kernel, None);
    }
    let fallback = best(&supported);
    let warning = format!(
        "{KERNEL_ENV}={requested}: the {} kernel is not available here; using {}",
        kernel.name(),
        fallback.name()
    );
    (fallback, Some(warning))
}

/// CPU makers whose bf16 throughput differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Vendor {
    /// "GenuineIntel".
    Intel,
    /// "AuthenticAMD" (or Hygon's licensed Zen cores).
    Amd,
    /// Anything else, or not x86.
    Other,
}

/// The vendor of this CPU, from CPUID leaf 0.
pub(crate) fn vendor() -> Vendor {
    #[cfg(target_arch = "x86_64")]
    {
        let id = std::arch::x86_64::__cpuid(0);
        let mut name = [0u8; 12];
        name[..4].copy_from_slice(&id.ebx.to_le_bytes());
        name[4..8].copy_from_slice(&id.edx.to_le_bytes());
        name[8..].copy_from_slice(&id.ecx.to_le_bytes());
        match &name {
            b"GenuineIntel" => Vendor::Intel,
            b"AuthenticAMD" | b"HygonGenuine" => Vendor::Amd,
            _ => Vendor::Other,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    Vendor::Other
}

/// Whether a model should run faster in bf16 than in f32 with `kernel` on a `vendor` CPU.
///
/// - AMX: yes. A `tdpbf16ps` does 16 x 16 x 32 multiply-adds; measured elsewhere, PyTorch's
///   AMX bf16 ran 2-2.9x faster than this crate's AVX-512 BF16 kernel on a 16-core Xeon.
/// - AVX-512 BF16 on AMD (Zen 4 and later): yes. `vdpbf16ps` does twice the multiply-adds of
///   an f32 FMA per cycle there; linear layers measured 1.6-1.9x and the whole DeiT-S 1.5x
///   over f32 on a Zen 4 machine.
/// - AVX-512 BF16 on Intel (Cooper Lake, or Sapphire Rapids with AMX unavailable): no. There
///   `vdpbf16ps` gives no more multiply-adds per cycle than the two f32 FMA ports, so bf16
///   saves only memory traffic and pays for the conversions.
/// - Portable: no; it is f32 arithmetic plus the rounding.
pub(crate) fn expected_faster_than_f32(kernel: Bf16Kernel, vendor: Vendor) -> bool {
    match kernel {
        Bf16Kernel::Amx => true,
        Bf16Kernel::Avx512Bf16 => vendor == Vendor::Amd,
        Bf16Kernel::Portable => false,
        #[cfg(test)]
        Bf16Kernel::AmxModel => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: u32 = AMX_BF16_BIT | AMX_TILE_BIT;

    /// A check outcome: `worst` times the bound, `differing` sums unlike the model's.
    fn outcome(worst: f64, differing: usize) -> TileCheck {
        TileCheck {
            sums: 1600,
            differing,
            worst,
        }
    }

    /// A check that must not run.
    fn no_check() -> TileCheck {
        panic!("checked the tiles without permission")
    }

    #[test]
    fn amx_needs_both_cpuid_bits_before_asking_the_os() {
        for edx in [0, AMX_BF16_BIT, AMX_TILE_BIT, !BOTH] {
            let support = amx_support(
                edx,
                || panic!("asked without AMX"),
                || panic!("read"),
                no_check,
            );
            assert_eq!(support, AmxSupport::NoInstructions, "edx {edx:#x}");
            assert_eq!(support.describe(), None);
        }
    }

    #[test]
    fn amx_permission_outcomes() {
        // Granted, confirmed and checked.
        let good = outcome(0.02, 0);
        let support = amx_support(BOTH, || 0, || Some(0x6_0000 | 0xFF), || good);
        assert_eq!(support, AmxSupport::Usable(good));
        assert!(support.usable());
        // Refused with any errno (EINVAL from a kernel without dynamic XSTATE, or an
        // alternate signal stack too small for tile state): no permission read, fall back.
        let refused = amx_support(BOTH, || -22, || panic!("read after a refusal"), no_check);
        assert_eq!(refused, AmxSupport::Refused(22));
        assert!(!refused.usable());
        assert!(refused.describe().is_some_and(|d| d.contains("errno 22")));
        assert_eq!(
            amx_support(BOTH, || -38, || None, no_check),
            AmxSupport::Refused(38)
        );
        // Success reported but tile data missing from the permitted set, or unreadable.
        for permitted in [Some(0x2_00FF), None] {
            let support = amx_support(BOTH, || 0, || permitted, no_check);
            assert_eq!(support, AmxSupport::NotGranted);
            assert!(!support.usable());
        }
    }

    #[test]
    fn amx_tiles_outside_the_bound_are_not_used() {
        // Last-bit differences from the model within the bound are accepted.
        let close = outcome(1.0, 1600);
        let support = amx_support(BOTH, || 0, || Some(1 << 18), || close);
        assert_eq!(support, AmxSupport::Usable(close));
        let text = support.describe().expect("AMX present");
        assert!(text.contains("1600 differing"), "{text}");
        for worst in [1.0 + 1e-9, f64::INFINITY, f64::NAN] {
            let support = amx_support(BOTH, || 0, || Some(1 << 18), || outcome(worst, 7));
            assert!(
                matches!(support, AmxSupport::FailedCheck(c) if c.differing == 7),
                "{worst}"
            );
            assert!(!support.usable());
            let text = support.describe().expect("AMX present");
            assert!(text.starts_with("AMX not used: the tiles failed"), "{text}");
        }
    }

    #[test]
    fn override_picks_the_requested_kernel_or_falls_back() {
        let all = |_: Bf16Kernel| true;
        let no_amx = |k: Bf16Kernel| k != Bf16Kernel::Amx;
        let portable_only = |k: Bf16Kernel| k == Bf16Kernel::Portable;
        assert_eq!(choose(None, all), (Bf16Kernel::Amx, None));
        assert_eq!(choose(Some("  "), no_amx), (Bf16Kernel::Avx512Bf16, None));
        assert_eq!(choose(None, portable_only), (Bf16Kernel::Portable, None));
        assert_eq!(choose(Some("AVX512"), all), (Bf16Kernel::Avx512Bf16, None));
        assert_eq!(choose(Some("portable"), all), (Bf16Kernel::Portable, None));
        let (kernel, warning) = choose(Some("amx"), no_amx);
        assert_eq!(kernel, Bf16Kernel::Avx512Bf16);
        assert!(warning.is_some_and(|w| w.contains("not available")));
        let (kernel, warning) = choose(Some("tpu"), portable_only);
        assert_eq!(kernel, Bf16Kernel::Portable);
        assert!(warning.is_some_and(|w| w.contains("not one of")));
    }

    #[test]
    fn faster_than_f32_rule() {
        assert!(expected_faster_than_f32(Bf16Kernel::Amx, Vendor::Intel));
        assert!(expected_faster_than_f32(
            Bf16Kernel::Avx512Bf16,
            Vendor::Amd
        ));
        assert!(!expected_faster_than_f32(
            Bf16Kernel::Avx512Bf16,
            Vendor::Intel
        ));
        assert!(!expected_faster_than_f32(
            Bf16Kernel::Avx512Bf16,
            Vendor::Other
        ));
        assert!(!expected_faster_than_f32(Bf16Kernel::Portable, Vendor::Amd));
    }
}
