//! The `--bf16` switch: bf16 linear layers only where they win on this CPU.

use idlevit_nn::Precision;

/// The precision a model runs in when `--bf16` is `bf16`: bf16 only where its kernel should
/// beat f32 on this CPU (AMX; AVX-512 BF16 on AMD), since `--bf16` asks for speed and must
/// never be slower. Elsewhere it says so on stderr and runs f32, the fastest correct path.
pub fn from_flag(bf16: bool) -> Precision {
    let kernel = idlevit_kernels::bf16_kernel_name();
    match choose(bf16, idlevit_kernels::bf16_expected_faster_than_f32()) {
        Some(precision) => precision,
        None => {
            // On a server whose AMX was refused or failed its check, say why it is missing.
            let amx = idlevit_kernels::amx_status().map_or(String::new(), |amx| format!("; {amx}"));
            eprintln!(
                "note: --bf16 is not faster than f32 on this CPU (its bf16 kernel, {kernel}, does \
                 no more multiply-adds per cycle than f32{amx}); running f32"
            );
            Precision::F32
        }
    }
}

/// [`from_flag`]'s decision: the precision, or `None` when bf16 was asked for where it cannot
/// win.
fn choose(bf16: bool, bf16_wins: bool) -> Option<Precision> {
    match (bf16, bf16_wins) {
        (false, _) => Some(Precision::F32),
        (true, true) => Some(Precision::Bf16),
        (true, false) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_runs_only_where_it_wins() {
        assert_eq!(choose(false, true), Some(Precision::F32));
        assert_eq!(choose(false, false), Some(Precision::F32));
        assert_eq!(choose(true, true), Some(Precision::Bf16));
        assert_eq!(choose(true, false), None);
    }
}
