//! Every AMX instruction and system call the crate issues, in one file: the tile unit of the
//! CPU ([`AmxTiles`]) and Linux's permission request for tile data.
//!
//! Tile data (XSTATE component 18) is off for a process until it asks: the first tile
//! instruction of a process without permission is killed with SIGILL. The permission is
//! process-wide and covers every thread, existing or future (inherited on fork, cleared on
//! exec), so it is requested once, on first use. Each thread's first tile instruction then
//! traps once into the kernel, which allocates that thread's larger register save area.

use std::arch::asm;
use std::sync::OnceLock;

use super::select::{AmxSupport, amx_support};
use super::tile::{TileConfig, TileUnit};
use super::tile_check::check_tiles;

/// `arch_prctl` on x86-64 Linux.
const SYS_ARCH_PRCTL: i64 = 158;
/// Reads the process's permitted XSTATE components into a `u64`.
const ARCH_GET_XCOMP_PERM: u64 = 0x1022;
/// Requests permission for the XSTATE components up to the one given.
const ARCH_REQ_XCOMP_PERM: u64 = 0x1023;
/// XSTATE component of the tile data.
pub(crate) const XFEATURE_XTILEDATA: u64 = 18;

/// `arch_prctl(code, arg)`: the raw return value (a negative errno on failure).
///
/// # Safety
/// `arg` must be what `code` expects (an integer, or a pointer the kernel may write through).
unsafe fn arch_prctl(code: u64, arg: u64) -> i64 {
    let ret: i64;
    // SAFETY: a plain system call: the kernel clobbers rcx and r11 and writes only through
    // `arg` when `code` says it is a pointer (the caller's contract); no stack is used.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") code,
            in("rsi") arg,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// Whether this process may use the tiles: CPUID says AMX-TILE and AMX-BF16, Linux granted
/// tile data, and the tiles passed the start-up check. Checked and requested once.
pub(crate) fn support() -> AmxSupport {
    static SUPPORT: OnceLock<AmxSupport> = OnceLock::new();
    *SUPPORT.get_or_init(|| {
        let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
        amx_support(
            edx,
            // SAFETY: this request takes an integer.
            || unsafe { arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) },
            || {
                let mut mask = 0u64;
                // SAFETY: this request writes one `u64` through the pointer, to `mask`.
                let ret = unsafe { arch_prctl(ARCH_GET_XCOMP_PERM, &raw mut mask as u64) };
                (ret == 0).then_some(mask)
            },
            // Runs only once the permission is confirmed, which is what a tile unit needs.
            || check_tiles(&mut AmxTiles(())),
        )
    })
}

/// The CPU's tile unit. A value exists only in a process that may use the tiles, which is
/// what makes its operations sound: with a configuration that does not fit an instruction,
/// the CPU raises #UD (the process gets SIGILL) instead of touching memory.
pub(crate) struct AmxTiles(());

impl AmxTiles {
    /// The tile unit, if this process may use it.
    pub(crate) fn new() -> Option<Self> {
        support().usable().then_some(Self(()))
    }
}

impl TileUnit for AmxTiles {
    #[inline(always)]
    fn configure(&mut self, cfg: &TileConfig) {
        let bytes = cfg.to_bytes();
        // SAFETY: reads the 64 bytes of `bytes`; tiles are permitted (see `AmxTiles`).
        unsafe { asm!("ldtilecfg [{0}]", in(reg) bytes.as_ptr(), options(nostack, readonly)) };
    }

    #[inline(always)]
    unsafe fn load<const T: u8>(&mut self, base: *const u8, stride: usize) {
        // SAFETY: reads the configured rows and bytes of tile T at `base` and `stride`, which
        // the caller guarantees are readable.
        unsafe {
            asm!(
                "tileloadd tmm{t}, [{base} + {stride} * 1]",
                t = const T,
                base = in(reg) base,
                stride = in(reg) stride,
                options(nostack, readonly),
            )
        };
    }

    #[inline(always)]
    fn zero<const T: u8>(&mut self) {
        // SAFETY: touches only tile T.
        unsafe { asm!("tilezero tmm{t}", t = const T, options(nostack, nomem)) };
    }

    #[inline(always)]
    fn dpbf16ps<const C: u8, const A: u8, const B: u8>(&mut self) {
        // SAFETY: touches only tiles C, A and B; mismatched shapes fault rather than corrupt.
        unsafe {
            asm!(
                "tdpbf16ps tmm{c}, tmm{a}, tmm{b}",
                c = const C,
                a = const A,
                b = const B,
                options(nostack, nomem),
            )
        };
    }

    #[inline(always)]
    unsafe fn store<const T: u8>(&mut self, base: *mut u8, stride: usize) {
        // SAFETY: writes the configured rows and bytes of tile T at `base` and `stride`, which
        // the caller guarantees are writable by this thread alone.
        unsafe {
            asm!(
                "tilestored [{base} + {stride} * 1], tmm{t}",
                t = const T,
                base = in(reg) base,
                stride = in(reg) stride,
                options(nostack),
            )
        };
    }

    #[inline(always)]
    fn release(&mut self) {
        // SAFETY: returns the tile state to its initial, unconfigured state.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}
