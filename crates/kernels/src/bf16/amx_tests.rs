//! The AMX driver against a naive evaluation of the tile semantics, bit for bit, on the
//! software model everywhere and on the real tiles where the CPU has them; and the model
//! itself against hand-worked cases of the instruction's definition.

use super::amx_driver::{STEP_PAIRS, padded_steps};
use super::pack::pair;
use super::tests::{bound, kernels};
use super::tile::{self, TileConfig, TileUnit};
use super::tile_check;
use super::tile_model::{TileModel, fold, pair_step};
use super::*;
use crate::testutil::{f32_vec, pool};
use proptest::prelude::*;

/// The tile kernels to hold to the naive evaluation: the model, and the CPU's tiles if any.
fn tile_kernels() -> Vec<Bf16Kernel> {
    [Bf16Kernel::AmxModel, Bf16Kernel::Amx]
        .into_iter()
        .filter(|k| k.is_supported())
        .collect()
}

/// Pair `s` of `row`, rounded, zero past its end.
fn pair_at(row: &[f32], s: usize) -> u32 {
    let at = |i: usize| row.get(i).copied().unwrap_or(0.0);
    pair(at(2 * s), at(2 * s + 1))
}

/// What the driver computes, written as plainly as possible: per output, one `tdpbf16ps`
/// rule per 16 pair-steps (zero past K) in order over K, then `base + (sum + bias)`.
#[allow(clippy::too_many_arguments)]
fn naive(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    (m, k): (usize, usize),
    cols: Range<usize>,
    start: &[f32],
    accumulate: bool,
) -> Vec<f32> {
    let width = cols.len();
    let mut y = vec![0.0; m * width];
    for i in 0..m {
        let xr = &x[i * k..(i + 1) * k];
        for (jj, j) in cols.clone().enumerate() {
            let wr = &w[j * k..(j + 1) * k];
            let mut sum = 0.0f32;
            for step in (0..padded_steps(k)).step_by(STEP_PAIRS) {
                let mut sums = (0.0, 0.0);
                for s in step..step + STEP_PAIRS {
                    sums = pair_step(sums, pair_at(xr, s), pair_at(wr, s));
                }
                sum = fold(sum, sums);
            }
            let b = bias.map_or(0.0, |b| b[j]);
            let base = if accumulate {
                start[i * width + jj]
            } else {
                0.0
            };
            y[i * width + jj] = base + (sum + b);
        }
    }
    y
}

/// Runs every tile kernel on `threads` threads and checks it bit for bit against [`naive`],
/// and within the f32 accumulation bound of the f64 reference.
#[allow(clippy::too_many_arguments)]
fn check_bits(
    threads: usize,
    (m, k, n): (usize, usize, usize),
    cols: Range<usize>,
    with_bias: bool,
    accumulate: bool,
    seed: u64,
) -> Result<(), TestCaseError> {
    let x = f32_vec(seed, m * k);
    let w = f32_vec(seed ^ 7, n * k);
    let bias = with_bias.then(|| f32_vec(seed ^ 11, n));
    let packed = PackedBf16::pack(&w, n, k).expect("sizes match");
    let width = cols.len();
    let start = if accumulate {
        f32_vec(seed ^ 13, m * width)
    } else {
        vec![f32::NAN; m * width]
    };
    let want = naive(
        &x,
        &w,
        bias.as_deref(),
        (m, k),
        cols.clone(),
        &start,
        accumulate,
    );
    let reference = crate::reference::linear_bf16(&x, &w, bias.as_deref(), m, k, n);
    for kernel in tile_kernels() {
        let mut y = start.clone();
        let call = Bf16Call {
            cols: cols.clone(),
            bias: bias.as_ref().map(|b| &b[cols.clone()]),
            m,
            accumulate,
        };
        pool(threads).install(|| run(kernel, threads, &mut y, &x, &packed, call));
        for i in 0..m {
            for (jj, j) in cols.clone().enumerate() {
                let (got, exact) = (y[i * width + jj], want[i * width + jj]);
                // A failure here on real tiles, with the bound below holding, would mean the
                // CPU differs from the model, not that the driver is wrong.
                prop_assert!(
                    got.to_bits() == exact.to_bits(),
                    "{kernel:?} {threads}t m={m} k={k} n={n} cols={cols:?}: y[{i},{j}] = {got:e}, \
                     naive tile semantics {exact:e}"
                );
                let before = if accumulate {
                    start[i * width + jj]
                } else {
                    0.0
                };
                let close = before + reference[i * n + j];
                let tol =
                    bound(&x, &w, bias.as_deref(), i, j, k) + 4.0 * f32::EPSILON * close.abs();
                prop_assert!(
                    (got - close).abs() <= tol,
                    "y[{i},{j}] = {got}, f64 {close}"
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    #[test]
    fn tile_driver_matches_naive_tile_semantics(
        m in prop_oneof![1usize..40, 40usize..100],
        k in prop_oneof![1usize..70, 200usize..600],
        n in 1usize..100,
        start_frac in 0.0f64..1.0,
        len_frac in 0.0f64..=1.0,
        with_bias in any::<bool>(),
        accumulate in any::<bool>(),
        threads in 1usize..=3,
        seed in any::<u64>(),
    ) {
        let start = ((n as f64 * start_frac) as usize).min(n - 1);
        let end = (start + ((n - start) as f64 * len_frac).ceil().max(1.0) as usize).min(n);
        check_bits(threads, (m, k, n), start..end, with_bias, accumulate, seed)?;
    }
}

#[test]
fn tile_driver_matches_naive_on_edge_shapes() {
    // Row groups of exactly 16, 17, 32 and 33 rows (the lower half on and off), K at a tile
    // step and one past it, several cache blocks, a range inside one panel, row blocks split
    // across tasks.
    for (m, k, n) in [
        (16, 32, 16),
        (17, 33, 17),
        (32, 31, 33),
        (33, 64, 64),
        (1, 1, 1),
    ] {
        for threads in [1, 3] {
            check_bits(threads, (m, k, n), 0..n, true, false, 1).unwrap();
            check_bits(threads, (m, k, n), n / 3..n, false, true, 2).unwrap();
        }
    }
    let (m, k, n) = (2 * MC + 17, 2 * KC + 9, 3 * PANEL + 5);
    check_bits(2, (m, k, n), 7..n - 3, true, true, 3).unwrap();
    check_bits(3, (m, k, n), 40..50, false, false, 4).unwrap();
    // Three cache blocks of pair-steps (192, 192 and 176), the last one padded.
    check_bits(2, (37, 1100, 40), 0..40, true, true, 5).unwrap();
}

#[test]
fn tile_kernels_run_attention_close_to_the_portable_kernel() {
    // One head per shape: odd widths, keys in several panels and steps, queries in a partial
    // row group, q, k and v as strided thirds of a qkv row.
    for (nq, nk, d) in [(1, 1, 1), (17, 50, 33), (40, 70, 64), (5, 3, 7)] {
        let qkv = f32_vec(nq as u64 * 131 + d as u64, nk.max(nq) * 3 * d);
        let view = |rows: usize, third: usize| crate::MatRef {
            data: &qkv[third * d..],
            rows,
            cols: d,
            row_stride: 3 * d,
            col_stride: 1,
        };
        let (q, k, v) = (view(nq, 0), view(nk, 1), view(nk, 2));
        let scale = (d as f32).powf(-0.5);
        let head = |kernel: Bf16Kernel| {
            let mut scores = vec![0.0; nq * nk];
            let mut out = vec![f32::NAN; nq * d];
            let out_view = crate::MatMut {
                data: &mut out,
                rows: nq,
                cols: d,
                row_stride: d,
                col_stride: 1,
            };
            let isa = crate::Isa::detected();
            attention::head(kernel, isa, q, k, v, scale, &mut scores, out_view);
            out
        };
        let expected = head(Bf16Kernel::Portable);
        let v_max = (0..nk * d).fold(0.0f32, |a, i| a.max(v.data[(i / d) * 3 * d + i % d].abs()));
        for kernel in tile_kernels() {
            let found = head(kernel);
            for (i, (&f, &e)) in found.iter().zip(&expected).enumerate() {
                // Sums in another order can flip a weight's bf16 rounding: one step (2^-8) of
                // weights summing to 1, each times a value.
                let tol = v_max / 128.0 + 1e-6;
                assert!(
                    (f - e).abs() <= tol,
                    "{kernel:?} {nq}x{nk}x{d} [{i}]: {f} vs {e}"
                );
            }
        }
    }
}

#[test]
fn every_kernel_gives_the_same_products_closely() {
    // The f64-bound checks in `tests` already cover the tile kernels; this pins that the
    // padded weight layout left the other kernels' answers alone.
    let (m, k, n) = (MC + 5, 99, 2 * PANEL + 3);
    let x = f32_vec(1, m * k);
    let packed = PackedBf16::pack(&f32_vec(2, n * k), n, k).unwrap();
    let outputs: Vec<Vec<f32>> = kernels()
        .into_iter()
        .map(|kernel| {
            let mut y = vec![0.0; m * n];
            let call = Bf16Call {
                cols: 0..n,
                bias: None,
                m,
                accumulate: false,
            };
            run(kernel, 1, &mut y, &x, &packed, call);
            y
        })
        .collect();
    for y in &outputs[1..] {
        for (a, b) in y.iter().zip(&outputs[0]) {
            assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }
}

/// A model configured with one shape for C (tile 0), A (tile 1) and B (tile 2).
fn model(rows: u8, pairs: u16, cols: u16) -> TileModel {
    let mut cfg = TileConfig {
        rows: [0; 8],
        colsb: [0; 8],
    };
    (cfg.rows[0], cfg.colsb[0]) = (rows, 4 * cols);
    (cfg.rows[1], cfg.colsb[1]) = (rows, 4 * pairs);
    (cfg.rows[2], cfg.colsb[2]) = (pairs as u8, 4 * cols);
    let mut unit = TileModel::default();
    unit.configure(&cfg);
    unit
}

/// `tdpbf16ps` on one row of A pairs and a column of B pairs (1 x 1 output, C starting at
/// `c`).
fn dot(c: f32, a: &[u32], b: &[u32]) -> f32 {
    let mut unit = model(1, a.len() as u16, 1);
    let mut out = [c];
    // SAFETY: each load reads the configured bytes of arrays that long; the store writes the
    // one f32 of `out`.
    unsafe {
        unit.load::<0>(out.as_ptr().cast(), 4);
        unit.load::<1>(a.as_ptr().cast(), 4 * a.len());
        unit.load::<2>(b.as_ptr().cast(), 4);
        unit.dpbf16ps::<0, 1, 2>();
        unit.store::<0>(out.as_mut_ptr().cast(), 4);
    }
    out[0]
}

/// A pair of bf16 bit patterns.
fn bits(lo: u16, hi: u16) -> u32 {
    u32::from(lo) | (u32::from(hi) << 16)
}

#[test]
fn model_sums_lower_and_upper_halves_apart() {
    // Lower halves: 2^24 then -2^24; upper halves: 1 then 0; B all ones. Summed in pair order
    // the 1 would vanish into 2^24; the instruction keeps two sums, so it survives.
    let big = to_bf16(16_777_216.0);
    let (one, zero) = (to_bf16(1.0), 0);
    let a = [bits(big, one), bits(big | 0x8000, zero)];
    let b = [bits(one, one), bits(one, one)];
    assert_eq!(dot(0.0, &a, &b), 1.0);
    // C is added after the pair sums: 1 + (2^24 + 0) rounds to 2^24 (ties to even).
    assert_eq!(
        dot(1.0, &[bits(big, zero)], &[bits(one, one)]),
        16_777_216.0
    );
}

#[test]
fn model_treats_subnormals_as_zero() {
    let one = to_bf16(1.0);
    let tiny = 0x0001; // the smallest bf16 subnormal
    let huge = to_bf16(2.0f32.powi(100));
    // Subnormal inputs are zero: tiny · 2^100 would be 2^-33.
    assert_eq!(dot(0.0, &[bits(tiny, 0)], &[bits(huge, 0)]), 0.0);
    // A subnormal product is flushed: 2^-70 · 2^-70 = 2^-140.
    let small = to_bf16(2.0f32.powi(-70));
    assert_eq!(dot(0.0, &[bits(small, 0)], &[bits(small, 0)]), 0.0);
    // A subnormal C is read as zero.
    assert_eq!(
        dot(f32::from_bits(1), &[bits(one, 0)], &[bits(one, 0)]),
        1.0
    );
    assert_eq!(dot(f32::from_bits(1), &[0], &[0]), 0.0);
}

#[test]
fn model_loads_only_the_configured_bytes_and_zeroes_the_rest() {
    let mut unit = model(2, 1, 2);
    let src: Vec<u8> = (1..=64).collect();
    let mut out = [0xAAu8; 3 * 16];
    // SAFETY: 2 rows of 8 bytes at stride 16 lie in `src` (64 bytes) and in `out` (48 bytes).
    unsafe {
        unit.load::<0>(src.as_ptr(), 16);
        unit.store::<0>(out.as_mut_ptr(), 16);
    }
    assert_eq!(&out[..8], &src[..8]);
    assert_eq!(&out[16..24], &src[16..24]);
    assert!(out[8..16].iter().chain(&out[24..]).all(|&b| b == 0xAA));
}

#[test]
#[should_panic(expected = "pairs per row of A and rows of B")]
fn model_rejects_mismatched_shapes() {
    let mut unit = model(4, 2, 3);
    let mut cfg = TileConfig::FULL;
    cfg.rows[2] = 3;
    unit.configure(&cfg);
    unit.dpbf16ps::<0, 1, 2>();
}

#[test]
#[should_panic(expected = "unconfigured")]
fn model_faults_after_release() {
    let mut unit = model(1, 1, 1);
    unit.release();
    unit.zero::<0>();
}

#[test]
fn tile_config_bytes() {
    let mut cfg = TileConfig::FULL;
    cfg.rows[7] = 3;
    cfg.colsb[1] = 0x0120;
    let bytes = cfg.to_bytes();
    assert_eq!(bytes[0], 1, "palette 1");
    assert_eq!(bytes[1..16], [0; 15]);
    assert_eq!(bytes[16..20], [64, 0, 0x20, 0x01]);
    assert_eq!(bytes[48..56], [16, 16, 16, 16, 16, 16, 16, 3]);
    assert_eq!(bytes[56..], [0; 8]);
}

#[test]
fn packed_panels_are_padded_to_whole_tile_steps() {
    // K = 33 is 17 pairs: the panel stride is 32 steps, steps 17..32 zero.
    let (n, k) = (40, 33);
    let packed = PackedBf16::pack(&f32_vec(9, n * k), n, k).unwrap();
    assert_eq!(packed.steps(), 32);
    let words = packed.words();
    assert_eq!(words.len(), 2 * 32 * PANEL);
    for panel in words.chunks_exact(32 * PANEL) {
        assert!(panel[17 * PANEL..].iter().all(|&w| w == 0));
    }
    // Columns 40..64 of the second panel are zero too.
    let second = &words[32 * PANEL..];
    assert!((0..17).all(|s| {
        second[s * PANEL + 8..(s + 1) * PANEL]
            .iter()
            .all(|&w| w == 0)
    }));
}

#[test]
fn stale_non_finite_activations_never_reach_the_padding() {
    // A wide call leaves NaN words in this thread's activation buffer; a narrow call reuses
    // it, and its padding pairs (times the weight's zero padding) must not turn into NaN.
    let (m, n) = (20, 5);
    for kernel in tile_kernels() {
        for k in [64, 3] {
            let x = if k == 64 {
                vec![f32::NAN; m * k]
            } else {
                f32_vec(5, m * k)
            };
            let w = f32_vec(6, n * k);
            let packed = PackedBf16::pack(&w, n, k).unwrap();
            let mut y = vec![0.0; m * n];
            let call = Bf16Call {
                cols: 0..n,
                bias: None,
                m,
                accumulate: false,
            };
            run(kernel, 1, &mut y, &x, &packed, call);
            if k == 3 {
                let want = naive(&x, &w, None, (m, k), 0..n, &[], false);
                assert_eq!(y, want, "{kernel:?}");
            }
        }
    }
}

/// The tile model with one fault, standing for tiles whose instructions are wrong (or, for
/// `LastBit`, tiles that round differently from the model).
#[derive(Default)]
struct FaultyTiles {
    model: TileModel,
    fault: Fault,
}

#[derive(Clone, Copy, Default)]
enum Fault {
    /// No fault: the model itself.
    #[default]
    None,
    /// `tdpbf16ps` overwrites C instead of adding onto it.
    DropsAccumulator,
    /// Every stored sum has its lowest bit flipped.
    LastBit,
    /// Every stored sum is NaN.
    NotFinite,
}

impl TileUnit for FaultyTiles {
    fn configure(&mut self, cfg: &TileConfig) {
        self.model.configure(cfg);
    }

    unsafe fn load<const T: u8>(&mut self, base: *const u8, stride: usize) {
        // SAFETY: forwarded contract.
        unsafe { self.model.load::<T>(base, stride) };
    }

    fn zero<const T: u8>(&mut self) {
        self.model.zero::<T>();
    }

    fn dpbf16ps<const C: u8, const A: u8, const B: u8>(&mut self) {
        if let Fault::DropsAccumulator = self.fault {
            self.model.zero::<C>();
        }
        self.model.dpbf16ps::<C, A, B>();
    }

    unsafe fn store<const T: u8>(&mut self, base: *mut u8, stride: usize) {
        // SAFETY: forwarded contract.
        unsafe { self.model.store::<T>(base, stride) };
        let change = |word: u32| match self.fault {
            Fault::LastBit => word ^ 1,
            Fault::NotFinite => f32::NAN.to_bits(),
            Fault::None | Fault::DropsAccumulator => word,
        };
        for r in 0..tile::TILE_ROWS {
            for col in 0..tile::TILE_BYTES / 4 {
                let at = base.wrapping_add(r * stride + 4 * col).cast::<u32>();
                // SAFETY: the store above wrote these bytes of full tiles (the driver only
                // configures full ones), so they are ours to rewrite.
                unsafe { at.write_unaligned(change(at.read_unaligned())) };
            }
        }
    }

    fn release(&mut self) {
        self.model.release();
    }
}

#[test]
fn start_up_check_accepts_the_model_and_last_bit_differences() {
    let check = tile_check::check_tiles(&mut FaultyTiles::default());
    assert!(check.passed(), "{check:?}");
    assert_eq!(check.differing, 0);
    assert_eq!(check.sums, 1600);
    // A real comparison happened: the f32 sums are not exact. The operands are fixed, so the
    // worst error is too (0.004222 of the bound `(K + 2) 2^-24 sum |x w|`); pinning it keeps
    // the bound's scale honest, which the faults below, far outside it, cannot.
    assert!((check.worst - 0.004222).abs() < 2e-6, "{check:?}");
    let check = tile_check::check_tiles(&mut FaultyTiles {
        fault: Fault::LastBit,
        ..FaultyTiles::default()
    });
    assert!(check.passed(), "{check:?}");
    // Most sums differ: a flipped bit in an accumulator staged between cache blocks can
    // round away in the rest of the sum.
    assert!(check.differing > 1000, "{check:?}");
    let text = check.describe();
    assert!(
        text.contains(&format!(
            "{} differing from the tile model",
            check.differing
        )),
        "{text}"
    );
}

#[test]
fn start_up_check_rejects_wrong_sums() {
    for fault in [Fault::DropsAccumulator, Fault::NotFinite] {
        let check = tile_check::check_tiles(&mut FaultyTiles {
            fault,
            ..FaultyTiles::default()
        });
        assert!(!check.passed(), "{check:?}");
        assert!(check.differing > 1000, "{check:?}");
    }
}

#[test]
fn start_up_check_passes_on_the_real_tiles_where_they_exist() {
    // Everywhere else this is the NoInstructions (or refused) branch, tested in `select`.
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    if let Some(text) = amx_status() {
        assert!(
            Bf16Kernel::Amx.is_supported(),
            "AMX present but unusable: {text}"
        );
    }
}
