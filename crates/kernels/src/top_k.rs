//! Selection of the highest-scoring entries (token selection keeps the top `keep_count`).

use std::cmp::Ordering;

/// Indices of the `k` largest values, in descending value order.
///
/// Equal values (including 0.0 and -0.0) go to the lower index first; NaN ranks below every
/// number, so it is picked only when `k` exceeds the count of non-NaN values. `k` larger than
/// `values.len()` returns every index.
pub fn top_k(values: &[f32], k: usize) -> Vec<usize> {
    let k = k.min(values.len());
    if k == 0 {
        return Vec::new();
    }
    // Index order breaks ties, so this is a strict total order and the unstable algorithms
    // below give the same answer as a stable sort.
    let rank = |&a: &usize, &b: &usize| -> Ordering {
        let (va, vb) = (values[a], values[b]);
        let by_value = match (va.is_nan(), vb.is_nan()) {
            (false, false) => vb.partial_cmp(&va).unwrap_or(Ordering::Equal),
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            (true, true) => Ordering::Equal,
        };
        by_value.then(a.cmp(&b))
    };
    let mut order: Vec<usize> = (0..values.len()).collect();
    if k < order.len() {
        order.select_nth_unstable_by(k - 1, rank);
        order.truncate(k);
    }
    order.sort_unstable_by(rank);
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference;
    use proptest::prelude::*;

    /// Values drawn from a small set so ties are common, with NaN, infinities and signed zeros.
    fn value() -> impl Strategy<Value = f32> {
        prop_oneof![
            8 => (-4i8..4).prop_map(|v| v as f32 * 0.5),
            4 => -1.0f32..1.0,
            1 => Just(f32::NAN),
            1 => Just(-0.0f32),
            1 => Just(f32::INFINITY),
            1 => Just(f32::NEG_INFINITY),
        ]
    }

    proptest! {
        #[test]
        fn matches_stable_sort(values in prop::collection::vec(value(), 0..70), k_frac in 0.0f64..1.3) {
            let k = (values.len() as f64 * k_frac).round() as usize;
            prop_assert_eq!(top_k(&values, k), reference::top_k(&values, k));
        }

        #[test]
        fn k_zero_and_k_len(values in prop::collection::vec(value(), 0..70)) {
            prop_assert!(top_k(&values, 0).is_empty());
            let all = top_k(&values, values.len());
            prop_assert_eq!(&all, &reference::top_k(&values, values.len()));
            let mut seen = all.clone();
            seen.sort_unstable();
            prop_assert_eq!(seen, (0..values.len()).collect::<Vec<_>>());
        }
    }

    #[test]
    fn ties_and_nan() {
        let v = [1.0, f32::NAN, 3.0, 1.0, 3.0, -0.0, 0.0];
        assert_eq!(top_k(&v, 3), [2, 4, 0]);
        assert_eq!(top_k(&v, 7), [2, 4, 0, 3, 5, 6, 1]);
        assert_eq!(top_k(&v, 100).len(), 7);
        assert_eq!(top_k(&[f32::NAN, f32::NEG_INFINITY], 1), [1]);
    }
}
