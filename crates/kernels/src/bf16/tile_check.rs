//! The check a tile unit passes before the AMX kernel is trusted with a process's products.
//!
//! The driver is tested against the software model on every machine, but the instructions it
//! issues (their encodings, the configuration block, the strides) only meet real tiles on a
//! CPU with AMX, which the test machines lack. So on first use, before the kernel is chosen,
//! one product runs through the driver on the CPU's tiles and on the model. Sums beyond the
//! accumulation bound of an f64 reference reject the tiles, and the next kernel down runs
//! instead, with a warning, rather than a model giving wrong answers. Sums within the bound
//! that differ from the model's in their last bits are accepted and counted: the model
//! follows the instruction reference's order of operations, which the hardware need not.

use super::amx_driver::{Dest, GROUP_ROWS, Packed, pack_a, product};
use super::pack::{AlignedWords, PackedBf16};
use super::tile::{TILE_ROWS, TileUnit};
use super::tile_model::TileModel;
use super::{Bf16Kernel, PANEL, from_bf16, to_bf16};
use crate::MatRef;

/// Rows of the checked product: a full group of 32 rows and a group of 8, so both the
/// two-tile and the one-tile form of the inner loop run.
const ROWS: usize = 40;
/// Input features: two cache blocks of pair-steps, the last one padded with zeros.
const FEATURES: usize = 300;
/// Output features: a full panel and a partial one.
const OUTPUTS: usize = 40;

/// What the check found on a tile unit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct TileCheck {
    /// Sums compared.
    pub(crate) sums: usize,
    /// Sums whose bits differ from the software model's.
    pub(crate) differing: usize,
    /// The largest error against the f64 reference, as a multiple of the f32 accumulation
    /// bound (infinite for a non-finite sum).
    pub(crate) worst: f64,
}

impl TileCheck {
    /// Whether every sum lies within the accumulation bound.
    pub(crate) fn passed(&self) -> bool {
        self.worst <= 1.0
    }

    /// One line for the user: what was compared and how it came out.
    pub(crate) fn describe(&self) -> String {
        let bits = if self.differing == 0 {
            "all bit for bit equal to the tile model".to_string()
        } else {
            format!("{} differing from the tile model", self.differing)
        };
        format!(
            "start-up check: {} sums, {bits}, worst error {:.3} of the bound",
            self.sums, self.worst
        )
    }
}

/// The check's operands: `ROWS x FEATURES` activations and `OUTPUTS x FEATURES` weights,
/// a fixed pseudo-random spread of signs and magnitudes in (-1, 1).
fn operands() -> (Vec<f32>, Vec<f32>) {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        // 24 random bits, then a random power of two down to 2^-7, with a sign.
        let mantissa = (state >> 40) as f32 / (1u64 << 24) as f32;
        let exponent = ((state >> 8) & 7) as i32;
        let sign = if state & 1 == 0 { 1.0 } else { -1.0 };
        sign * mantissa * 2f32.powi(-exponent)
    };
    let x = (0..ROWS * FEATURES).map(|_| next()).collect();
    let w = (0..OUTPUTS * FEATURES).map(|_| next()).collect();
    (x, w)
}

/// Runs the driver's product of the check operands on `unit`: `ROWS x OUTPUTS` sums.
fn run_product<U: TileUnit>(unit: &mut U, a: &[u32], w: &PackedBf16) -> Vec<f32> {
    let mut y = vec![0.0f32; ROWS * OUTPUTS];
    let mut acc = AlignedWords::default();
    let acc = acc.resize(ROWS.next_multiple_of(GROUP_ROWS) * PANEL);
    let ops = Packed {
        a,
        b: w.words(),
        steps: w.steps(),
    };
    let dest = Dest {
        c: y.as_mut_ptr(),
        ldc: OUTPUTS,
        rows: ROWS,
        cols: OUTPUTS,
        col0: 0,
        bias: None,
        overwrite: true,
    };
    // SAFETY: `a` holds ROWS rows padded to 16 at `steps` words (`check`), `w` holds every
    // panel of OUTPUTS columns, and `y` is ROWS x OUTPUTS, owned here; the caller vouches for
    // `unit` being usable on this thread.
    unsafe { product(unit, &ops, 0..OUTPUTS.div_ceil(PANEL), &dest, acc) };
    y
}

/// Runs the check's product on `unit` and on the software model, and compares both with an
/// f64 reference of the bf16-rounded operands.
///
/// `unit` must be usable on this thread (for the CPU's tiles: the process was granted tile
/// data); the check itself touches only memory it owns.
pub(crate) fn check_tiles<U: TileUnit>(unit: &mut U) -> TileCheck {
    let (x, w) = operands();
    let packed = PackedBf16::pack(&w, OUTPUTS, FEATURES).expect("the check's sizes agree");
    let steps = packed.steps();
    let mut a = AlignedWords::default();
    let a = a.resize(ROWS.next_multiple_of(TILE_ROWS) * steps);
    let x_mat = MatRef::row_major(&x, ROWS, FEATURES);
    pack_a(Bf16Kernel::Portable, a, steps, x_mat, 1.0);
    let on_unit = run_product(unit, a, &packed);
    let on_model = run_product(&mut TileModel::default(), a, &packed);

    let round = |v: f32| f64::from(from_bf16(to_bf16(v)));
    let mut worst = 0.0f64;
    let mut differing = 0;
    for i in 0..ROWS {
        for j in 0..OUTPUTS {
            let (xr, wr) = (
                &x[i * FEATURES..(i + 1) * FEATURES],
                &w[j * FEATURES..(j + 1) * FEATURES],
            );
            let (exact, magnitude) = xr.iter().zip(wr).fold((0.0, 0.0), |(s, m), (&a, &b)| {
                let p = round(a) * round(b);
                (s + p, m + p.abs())
            });
            let bound = (FEATURES + 2) as f64 * f64::from(f32::EPSILON) / 2.0 * magnitude;
            let got = on_unit[i * OUTPUTS + j];
            differing += usize::from(got.to_bits() != on_model[i * OUTPUTS + j].to_bits());
            let error = (f64::from(got) - exact).abs();
            let ratio = if !got.is_finite() {
                f64::INFINITY
            } else if bound > 0.0 {
                error / bound
            } else if error == 0.0 {
                0.0
            } else {
                f64::INFINITY
            };
            worst = worst.max(ratio);
        }
    }
    TileCheck {
        sums: ROWS * OUTPUTS,
        differing,
        worst,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_operands_spread_over_values_signs_and_magnitudes() {
        // A check on near-constant or one-signed operands could pass tiles that mix up rows,
        // columns or pair halves, and values of 1 or more would leave the bf16 range tested.
        let (x, w) = operands();
        assert_eq!((x.len(), w.len()), (ROWS * FEATURES, OUTPUTS * FEATURES));
        let all: Vec<f32> = x.iter().chain(&w).copied().collect();
        assert!(all.iter().all(|v| v.is_finite() && v.abs() < 1.0));
        let mut distinct: Vec<u32> = all.iter().map(|v| v.to_bits()).collect();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(distinct.len() * 100 > all.len() * 95, "{}", distinct.len());
        let share = |f: &dyn Fn(f32) -> bool| {
            all.iter().filter(|&&v| f(v)).count() as f64 / all.len() as f64
        };
        let negative = share(&|v| v < 0.0);
        assert!((0.45..0.55).contains(&negative), "{negative}");
        // Scales of 2^0 .. 2^-7, an eighth each: more small values than one scale gives.
        let small = share(&|v| v.abs() < 1.0 / 128.0);
        assert!((0.1..0.3).contains(&small), "{small}");
        let large = share(&|v| v.abs() >= 0.5);
        assert!((0.04..0.1).contains(&large), "{large}");
    }
}
