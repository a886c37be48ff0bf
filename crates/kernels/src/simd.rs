//! Run-time choice of instruction set for the row-wise kernels, made in this one place.
//!
//! Each row-wise kernel is written once as a generic body (a [`SimdKernel`]) in plain Rust over
//! `chunks_exact` lanes; [`dispatch`] compiles that body three times, once inside a function
//! with AVX-512 enabled, once with AVX2 + FMA, once for the baseline target, and picks one at
//! run time. Everything the body calls is `#[inline(always)]`, so the whole body is vectorised
//! with the wider registers.

use std::sync::OnceLock;

/// Instruction sets the row-wise kernels are compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// The compilation target's baseline features, without fused multiply-add.
    Portable,
    /// AVX2 with FMA.
    Avx2,
    /// AVX-512F with FMA.
    Avx512,
}

impl Isa {
    /// The best instruction set this CPU supports; detected on first use and cached.
    pub fn detected() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| {
            [Isa::Avx512, Isa::Avx2]
                .into_iter()
                .find(|isa| isa.is_supported())
                .unwrap_or(Isa::Portable)
        })
    }

    /// Whether this CPU can run code compiled for `self`.
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// Every instruction set this CPU supports, from the portable one up.
    pub fn supported() -> Vec<Isa> {
        [Isa::Portable, Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|isa| isa.is_supported())
            .collect()
    }
}

/// A kernel body that [`dispatch`] compiles once per instruction set.
pub(crate) trait SimdKernel {
    /// What the kernel returns.
    type Output;
    /// Runs the body; `FMA` says whether a fused multiply-add is one instruction here, so the
    /// body can use it where that is both faster and more accurate.
    fn run<const FMA: bool>(self) -> Self::Output;
}

/// Runs `kernel` compiled for `isa`, or for the portable target if this CPU lacks `isa`.
pub(crate) fn dispatch<K: SimdKernel>(isa: Isa, kernel: K) -> K::Output {
    #[cfg(target_arch = "x86_64")]
    match isa {
        Isa::Avx512 if isa.is_supported() => {
            // SAFETY: the CPU was just checked to have every feature `with_avx512` enables.
            return unsafe { x86::with_avx512(kernel) };
        }
        Isa::Avx2 if isa.is_supported() => {
            // SAFETY: the CPU was just checked to have every feature `with_avx2` enables.
            return unsafe { x86::with_avx2(kernel) };
        }
        _ => {}
    }
    let _ = isa;
    kernel.run::<false>()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::SimdKernel;

    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) fn with_avx512<K: SimdKernel>(kernel: K) -> K::Output {
        kernel.run::<true>()
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn with_avx2<K: SimdKernel>(kernel: K) -> K::Output {
        kernel.run::<true>()
    }
}
