//! Converting f32 operands to bf16 pairs in the layouts the micro-kernels read.

use super::amx_driver::padded_steps;
use super::{Bf16Kernel, KC, KCP, MR, PANEL, to_bf16};
use crate::KernelError;
use crate::simd::{Isa, SimdKernel, dispatch};
use std::ops::Range;

/// 32-bit words starting on a 64-byte boundary, so every vector load of a panel or an
/// activation row stays within one cache line.
#[derive(Debug, Default)]
pub(crate) struct AlignedWords {
    words: Vec<u32>,
    offset: usize,
}

/// Words per 64-byte line.
const LINE_WORDS: usize = 16;

impl AlignedWords {
    /// The first `len` aligned words, growing (and zeroing new space) as needed.
    pub(crate) fn resize(&mut self, len: usize) -> &mut [u32] {
        if self.words.len() < len + LINE_WORDS {
            self.words = vec![0; len + LINE_WORDS];
            let misalign = (self.words.as_ptr() as usize / 4) % LINE_WORDS;
            self.offset = (LINE_WORDS - misalign) % LINE_WORDS;
        }
        &mut self.words[self.offset..self.offset + len]
    }

    pub(crate) fn as_slice(&self, len: usize) -> &[u32] {
        &self.words[self.offset..self.offset + len]
    }
}

impl Clone for AlignedWords {
    // A derived clone would copy the offset into a buffer with a different alignment.
    fn clone(&self) -> Self {
        let len = self.words.len().saturating_sub(LINE_WORDS);
        let mut copy = AlignedWords::default();
        copy.resize(len).copy_from_slice(self.as_slice(len));
        copy
    }
}

/// Two bf16 values as one 32-bit word, `lo` in the low half (the order `vdpbf16ps` pairs them).
#[inline(always)]
pub(crate) fn pair(lo: f32, hi: f32) -> u32 {
    u32::from(to_bf16(lo)) | (u32::from(to_bf16(hi)) << 16)
}

/// Converts `src` to pairs in `dst` (`dst.len() == src.len().div_ceil(2)`), the odd last value
/// paired with zero.
#[inline(always)]
fn convert_pairs(dst: &mut [u32], src: &[f32]) {
    let mut chunks = src.chunks_exact(2);
    for (d, c) in dst.iter_mut().zip(&mut chunks) {
        *d = pair(c[0], c[1]);
    }
    if let [last] = chunks.remainder() {
        dst[src.len() / 2] = pair(*last, 0.0);
    }
}

/// A `(N, K)` weight rounded to bf16 and packed once for [`linear_bf16`](super::linear_bf16).
///
/// Panel `p` holds output features `32p..32p + 32` (zero beyond N); within it, step `s` holds
/// the 32 features' pairs of inputs `(2s, 2s + 1)` (zero beyond K, up to a multiple of 16
/// steps).
#[derive(Clone, Debug)]
pub struct PackedBf16 {
    n: usize,
    k: usize,
    data: AlignedWords,
}

impl PackedBf16 {
    /// Packs a row-major `(n, k)` weight (`nn.Linear`'s `(out, in)`).
    pub fn pack(w: &[f32], n: usize, k: usize) -> Result<Self, KernelError> {
        let expected = n.saturating_mul(k);
        if w.len() != expected {
            return Err(KernelError::BufferLength {
                op: "PackedBf16::pack",
                operand: "w",
                expected,
                found: w.len(),
            });
        }
        Self::pack_strided(w, n, k, k, 1)
    }

    /// Packs an `(n, k)` weight whose element `(j, p)` is `w[j * row_stride + p * col_stride]`
    /// (a `(k, n)` row-major matrix is its own transpose with strides `(1, n)`).
    pub fn pack_strided(
        w: &[f32],
        n: usize,
        k: usize,
        row_stride: usize,
        col_stride: usize,
    ) -> Result<Self, KernelError> {
        let needed = crate::matrix::extent(n, k, row_stride, col_stride);
        if needed.is_none_or(|needed| needed > w.len()) {
            return Err(KernelError::OutOfBounds {
                op: "PackedBf16::pack",
                operand: "w",
                rows: n,
                cols: k,
                row_stride,
                col_stride,
                needed: needed.unwrap_or(usize::MAX),
                found: w.len(),
            });
        }
        let pairs = k.div_ceil(2);
        let steps = padded_steps(k);
        let mut data = AlignedWords::default();
        let words = data.resize(n.div_ceil(PANEL) * steps * PANEL);
        // Pair-major, so a weight stored column-wise (row_stride 1) is read in order too.
        for s in 0..pairs {
            let (p0, p1) = (2 * s * col_stride, (2 * s + 1) * col_stride);
            let odd_tail = 2 * s + 1 == k;
            for j in 0..n {
                let lo = w[j * row_stride + p0];
                let hi = if odd_tail {
                    0.0
                } else {
                    w[j * row_stride + p1]
                };
                words[(j / PANEL) * steps * PANEL + s * PANEL + j % PANEL] = pair(lo, hi);
            }
        }
        Ok(Self { n, k, data })
    }

    /// Output features N.
    pub fn out_features(&self) -> usize {
        self.n
    }

    /// Input features K.
    pub fn in_features(&self) -> usize {
        self.k
    }

    /// Pair-steps per panel: the K pairs padded with zero steps to a multiple of 16, so the
    /// AMX kernel reads whole tiles (the other kernels stop at the last real pair).
    pub(crate) fn steps(&self) -> usize {
        padded_steps(self.k)
    }

    /// Every panel, [`steps`](Self::steps) x `PANEL` words each.
    pub(crate) fn words(&self) -> &[u32] {
        self.data
            .as_slice(self.n.div_ceil(PANEL) * self.steps() * PANEL)
    }

    /// Steps `start..start + pairs` of panel `panel`, `PANEL` words each.
    pub(crate) fn panel(&self, panel: usize, start: usize, pairs: usize) -> &[u32] {
        let at = (panel * self.steps() + start) * PANEL;
        &self.words()[at..at + pairs * PANEL]
    }
}

/// Packs rows `rows` of the row-major `x` (`k` columns) into `a`: for each group of `MR` rows
/// and each `KC` block of features, `MR` rows of `KCP` pairs (rows past the end are zero).
pub(crate) fn pack_rows(
    kernel: Bf16Kernel,
    a: &mut [u32],
    x: &[f32],
    k: usize,
    rows: Range<usize>,
) {
    #[cfg(target_arch = "x86_64")]
    if kernel == Bf16Kernel::Avx512Bf16 {
        // SAFETY: the caller's kernel runs on this CPU.
        unsafe { super::x86::pack_rows(a, x, k, rows) };
        return;
    }
    let _ = kernel;
    dispatch(Isa::detected(), PackRows { a, x, k, rows });
}

struct PackRows<'a> {
    a: &'a mut [u32],
    x: &'a [f32],
    k: usize,
    rows: Range<usize>,
}

impl SimdKernel for PackRows<'_> {
    type Output = ();

    fn run<const FMA: bool>(self) {
        let k_blocks = self.k.div_ceil(KC);
        let groups = self.rows.len().div_ceil(MR);
        for g in 0..groups {
            for kb in 0..k_blocks {
                let (f0, f1) = (kb * KC, (kb * KC + KC).min(self.k));
                let pairs = (f1 - f0).div_ceil(2);
                let block = (g * k_blocks + kb) * MR * KCP;
                for r in 0..MR {
                    let dst = &mut self.a[block + r * KCP..block + r * KCP + pairs];
                    let row = self.rows.start + g * MR + r;
                    if row < self.rows.end {
                        convert_pairs(dst, &self.x[row * self.k + f0..row * self.k + f1]);
                    } else {
                        dst.fill(0);
                    }
                }
            }
        }
    }
}
