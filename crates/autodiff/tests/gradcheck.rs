//! Finite-difference checks of every operation's backward pass, over random odd shapes.

mod common;

use common::{Ops, Rng};
use idlevit_autodiff::Tensor;
use idlevit_autodiff::ops::Conv2dSpec;
use proptest::prelude::*;

/// A shape of `rank` axes, each of size 1 to 4.
fn shape(rank: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..5, rank)
}

/// The shape `b` of a broadcast operand of `a`: `drop` leading axes removed, and the axes
/// whose bit is set in `ones` shrunk to 1.
fn broadcast_shape(a: &[usize], drop: usize, ones: u32) -> Vec<usize> {
    a[drop.min(a.len())..]
        .iter()
        .enumerate()
        .map(|(i, &d)| if ones >> i & 1 == 1 { 1 } else { d })
        .collect()
}

/// Per batch item, `count` row indices below `rows` (repeats allowed).
fn row_indices(rng: &mut Rng, batch: usize, rows: usize, count: usize) -> Vec<Vec<usize>> {
    (0..batch)
        .map(|_| (0..count).map(|_| rng.below(rows)).collect())
        .collect()
}

proptest! {
    #[test]
    fn linear(lead in shape(1..=3), inp in 1usize..6, out in 1usize..6, bias in any::<bool>(),
              x_leaf in any::<bool>(), seed in any::<u64>()) {
        let mut rng = Rng(seed);
        let mut xs = lead.clone();
        xs.push(inp);
        let mut inputs = vec![rng.tensor(&xs, 1.0), rng.tensor(&[out, inp], 1.0)];
        let mut leaves = vec![x_leaf, true];
        if bias {
            inputs.push(rng.tensor(&[out], 1.0));
            leaves.push(true);
        }
        check!("linear", inputs, leaves, seed, |o, x| o.linear(&x[0], &x[1], x.get(2)))?;
    }

    /// A weight that is a row slice of a bigger one (the fused qkv case) and a strided input.
    #[test]
    fn linear_on_views(rows in 1usize..5, inp in 1usize..6, out in 1usize..5, seed in any::<u64>()) {
        let mut rng = Rng(seed);
        let inputs = vec![rng.tensor(&[inp, rows], 1.0), rng.tensor(&[3 * out, inp], 1.0), rng.tensor(&[3 * out], 1.0)];
        check!("linear on views", inputs, [true, true, true], seed, |o, x| {
            let w = o.slice(&x[1], 0, out, 2 * out);
            let b = o.slice(&x[2], 0, out, 2 * out);
            o.linear(&o.permute(&x[0], &[1, 0]), &w, Some(&b))
        })?;
    }

    #[test]
    fn layer_norm(lead in shape(0..=2), n in 2usize..9, eps in prop_oneof![Just(1e-5f32), Just(0.1)],
                  offset in -2.0f32..2.0, seed in any::<u64>()) {
        let mut rng = Rng(seed);
        let mut xs = lead.clone();
        xs.push(n);
        let x = rng.tensor(&xs, 1.5).map(|v| v + offset);
        let gamma = rng.tensor(&[n], 1.0).map(|v| v + 1.0);
        let inputs = vec![x, gamma, rng.tensor(&[n], 1.0)];
        check!("layer_norm", inputs, [true, true, true], seed, |o, x| o.layer_norm(&x[0], &x[1], &x[2], eps))?;
    }

    #[test]
    fn gelu(s in shape(1..=3), seed in any::<u64>()) {
        let inputs = vec![Rng(seed).tensor(&s, 4.0)];
        check!("gelu", inputs, [true], seed, |o, x| o.gelu(&x[0]))?;
    }

    #[test]
    fn add_sub_mul(a in shape(1..=4), drop in 0usize..3, ones in any::<u32>(), b_leaf in any::<bool>(),
                   a_leaf in any::<bool>(), seed in any::<u64>()) {
        let mut rng = Rng(seed);
        let b = broadcast_shape(&a, drop, ones);
        let inputs = vec![rng.tensor(&a, 1.0), rng.tensor(&b, 1.0)];
        let leaves = [a_leaf || !b_leaf, b_leaf];
        check!("add", inputs, leaves, seed, |o, x| o.add(&x[0], &x[1]))?;
        check!("sub", inputs, leaves, seed, |o, x| o.sub(&x[0], &x[1]))?;
        check!("mul", inputs, leaves, seed, |o, x| o.mul(&x[0], &x[1]))?;
    }

    #[test]
    fn scale(s in shape(0..=3), factor in -3.0f32..3.0, seed in any::<u64>()) {
        let inputs = vec![Rng(seed).tensor(&s, 1.0)];
        check!("scale", inputs, [true], seed, |o, x| o.scale(&x[0], factor))?;
    }

    /// Batched products, with either operand possibly a transposed (strided) view.
    #[test]
    fn matmul(lead in shape(0..=2), m in 1usize..5, k in 1usize..5, n in 1usize..5,
              ta in any::<bool>(), tb in any::<bool>(), leaves in prop_oneof![Just([true, true]), Just([true, false]), Just([false, true])],
              seed in any::<u64>()) {
        let mut rng = Rng(seed);
        let r = lead.len();
        let dims = |rows: usize, cols: usize, t: bool| {
            let mut s = lead.clone();
            s.extend(if t { [cols, rows] } else { [rows, cols] });
            s
        };
        let inputs = vec![rng.tensor(&dims(m, k, ta), 1.0), rng.tensor(&dims(k, n, tb), 1.0)];
        let mut swap: Vec<usize> = (0..r).collect();
        swap.extend([r + 1, r]);
        check!("matmul", inputs, leaves, seed, |o, x| {
            let a = if ta { o.permute(&x[0], &swap) } else { x[0].clone() };
            let b = if tb { o.permute(&x[1], &swap) } else { x[1].clone() };
            o.matmul(&a, &b)
        })?;
    }

    #[test]
    fn softmax_and_log_softmax(s in shape(1..=3), spread in prop_oneof![Just(1.0f32), Just(4.0)], seed in any::<u64>()) {
        let inputs = vec![Rng(seed).tensor(&s, spread)];
        check!("softmax", inputs, [true], seed, |o, x| o.softmax(&x[0]))?;
        check!("log_softmax", inputs, [true], seed, |o, x| o.log_softmax(&x[0]))?;
    }

    /// Softmax after an additive mask, as masked attention uses it.
    #[test]
    fn masked_softmax(rows in 1usize..4, n in 2usize..7, seed in any::<u64>()) {
        let mut rng = Rng(seed);
        let keep = rng.below(n);
        let mask = Tensor::from_vec(vec![1, n], (0..n).map(|j| if j == keep || rng.below(2) == 0 { 0.0 } else { -1e5 }).collect()).unwrap();
        let inputs = vec![rng.tensor(&[rows, n], 2.0), mask];
        check!("masked softmax", inputs, [true, false], seed, |o, x| o.softmax(&o.add(&x[0], &x[1])))?;
    }

    /// Reshape of contiguous and of permuted (strided) values.
    #[test]
    fn reshape(s in shape(2..=3), seed in any::<u64>()) {
        let inputs = vec![Rng(seed).tensor(&s, 1.0)];
        let numel: usize = s.iter().product();
        let rev: Vec<usize> = (0..s.len()).rev().collect();
        check!("reshape", inputs, [true], seed, |o, x| o.reshape(&x[0], &[numel]))?;
        check!("reshape of a view", inputs, [true], seed, |o, x| {
            let p = o.permute(&x[0], &rev);
            o.reshape(&p, &[s[s.len() - 1], numel / s[s.len() - 1]])
        })?;
    }

    #[test]
    fn permute(s in shape(1..=4), order in any::<u64>(), seed in any::<u64>()) {
        let mut axes: Vec<usize> = (0..s.len()).collect();
        let mut rng = Rng(order);
        for i in (1..axes.len()).rev() {
            axes.swap(i, rng.below(i + 1));
        }
        let inputs = vec![Rng(seed).tensor(&s, 1.0)];
        check!("permute", inputs, [true], seed, |o, x| o.permute(&x[0], &axes))?;
    }

    #[test]
    fn slice_and_select(s in shape(1..=3), pick in any::<u64>(), seed in any::<u64>()) {
        let mut rng = Rng(pick);
        let axis = rng.below(s.len());
        let start = rng.below(s[axis]);
        let end = start + 1 + rng.below(s[axis] - start);
        let index = rng.below(s[axis]);
        let inputs = vec![Rng(seed).tensor(&s, 1.0)];
        check!("slice", inputs, [true], seed, |o, x| o.slice(&x[0], axis, start, end))?;
        check!("select", inputs, [true], seed, |o, x| o.select(&x[0], axis, index))?;
        // Two overlapping slices of one value accumulate into one gradient.
        check!("two slices", inputs, [true], seed, |o, x| {
            let a = o.slice(&x[0], axis, start, end);
            let b = o.slice(&x[0], axis, 0, end - start);
            o.mul(&a, &b)
        })?;
    }

    #[test]
    fn broadcast_to(target in shape(1..=4), drop in 0usize..3, ones in any::<u32>(), seed in any::<u64>()) {
        let s = broadcast_shape(&target, drop, ones);
        let inputs = vec![Rng(seed).tensor(&s, 1.0)];
        check!("broadcast_to", inputs, [true], seed, |o, x| o.broadcast_to(&x[0], &target))?;
    }

    #[test]
    fn concat(s in shape(1..=3), sizes in prop::collection::vec(1usize..4, 1..4), pick in any::<u64>(), seed in any::<u64>()) {
        let mut rng = Rng(seed);
        let axis = Rng(pick).below(s.len());
        let inputs: Vec<Tensor> = sizes.iter().map(|&n| {
            let mut shape = s.clone();
            shape[axis] = n;
            rng.tensor(&shape, 1.0)
        }).collect();
        // The first part is always a parameter; the others alternate.
        let leaves: Vec<bool> = (0..sizes.len()).map(|i| i % 2 == 0).collect();
        check!("concat", inputs, leaves, seed, |o, x| o.concat(x, axis))?;
    }

    #[test]
    fn gather_rows(batch in 1usize..4, rows in 1usize..6, width in 1usize..5, count in 0usize..7, seed in any::<u64>()) {
        let mut rng = Rng(seed);
        let idx = row_indices(&mut rng, batch, rows, count);
        let inputs = vec![rng.tensor(&[batch, rows, width], 1.0)];
        check!("gather_rows", inputs, [true], seed, |o, x| o.gather_rows(&x[0], &idx))?;
    }

    /// Scatter with repeated indices too: the last write to a row wins, and the overwritten
    /// rows get no gradient.
    #[test]
    fn scatter_rows(batch in 1usize..4, rows in 1usize..6, width in 1usize..5, count in 0usize..5,
                    leaves in prop_oneof![Just([true, true]), Just([true, false]), Just([false, true])], seed in any::<u64>()) {
        let mut rng = Rng(seed);
        let idx = row_indices(&mut rng, batch, rows, count);
        let inputs = vec![rng.tensor(&[batch, rows, width], 1.0), rng.tensor(&[batch, count, width], 1.0)];
        check!("scatter_rows", inputs, leaves, seed, |o, x| o.scatter_rows(&x[0], &idx, &x[1]))?;
    }

    #[test]
    fn sums(s in shape(1..=4), pick in any::<u64>(), keepdim in any::<bool>(), seed in any::<u64>()) {
        let axis = Rng(pick).below(s.len());
        let inputs = vec![Rng(seed).tensor(&s, 1.0)];
        check!("sum_axis", inputs, [true], seed, |o, x| o.sum_axis(&x[0], axis, keepdim))?;
        check!("sum_all", inputs, [true], seed, |o, x| o.sum_all(&x[0]))?;
        // A rank-0 value feeding further operations.
        check!("sum_all then scale", inputs, [true], seed, |o, x| o.broadcast_to(&o.scale(&o.sum_all(&x[0]), 0.5), &s))?;
    }

    /// `|x|` away from its kink at 0, where the difference quotient would straddle it.
    #[test]
    fn abs(s in shape(1..=3), seed in any::<u64>()) {
        let x = Rng(seed).tensor(&s, 1.0).map(|v| v.signum() * (0.05 + v.abs()));
        check!("abs", [x], [true], seed, |o, x| o.abs(&x[0]))?;
    }

    #[test]
    fn square(s in shape(1..=3), seed in any::<u64>()) {
        let inputs = vec![Rng(seed).tensor(&s, 2.0)];
        check!("square", inputs, [true], seed, |o, x| o.square(&x[0]))?;
    }

    /// Both regimes of `x / max(||x||, eps)`: rows longer than eps, and rows clamped to it.
    #[test]
    fn l2_normalize(lead in shape(0..=2), n in 1usize..7, clamped in any::<bool>(), seed in any::<u64>()) {
        let mut s = lead.clone();
        s.push(n);
        let x = Rng(seed).tensor(&s, 1.0);
        let largest = x.to_vec().chunks(n).map(|r| r.iter().map(|v| v * v).sum::<f32>().sqrt()).fold(0.0f32, f32::max);
        let smallest = x.to_vec().chunks(n).map(|r| r.iter().map(|v| v * v).sum::<f32>().sqrt()).fold(f32::INFINITY, f32::min);
        // Keep every row's norm clear of eps so that no difference quotient crosses the kink.
        let eps = if clamped { largest * 1.5 + 1e-3 } else { 1e-12 };
        prop_assume!(clamped || smallest > 1e-3);
        check!("l2_normalize", [x], [true], seed, |o, x| o.l2_normalize(&x[0], eps))?;
    }

    /// Convolutions of every kind the zoo uses: strided stems, padded 3x3, grouped and
    /// depthwise, with and without bias, with the input a parameter or data.
    #[test]
    fn conv2d(batch in 1usize..3, group_in in 1usize..3, group_out in 1usize..3, groups in 1usize..4,
              size in 3usize..7, k in 1usize..4, stride in 1usize..3, padding in 0usize..2,
              bias in any::<bool>(), x_leaf in any::<bool>(), seed in any::<u64>()) {
        let mut rng = Rng(seed);
        let spec = Conv2dSpec::new(stride, padding).with_groups(groups);
        let (cin, cout) = (group_in * groups, group_out * groups);
        let mut inputs = vec![rng.tensor(&[batch, cin, size, size + 1], 1.0), rng.tensor(&[cout, group_in, k, k], 1.0)];
        let mut leaves = vec![x_leaf, true];
        if bias {
            inputs.push(rng.tensor(&[cout], 1.0));
            leaves.push(true);
        }
        check!("conv2d", inputs, leaves, seed, |o, x| o.conv2d(&x[0], &x[1], x.get(2), spec))?;
    }

    /// Depthwise 3x3 with padding 1, as PVT-v2's MLP runs it, on a non-square map.
    #[test]
    fn depthwise_conv2d(channels in 1usize..5, h in 1usize..5, w in 1usize..5, seed in any::<u64>()) {
        let mut rng = Rng(seed);
        let spec = Conv2dSpec::new(1, 1).with_groups(channels);
        let inputs = vec![rng.tensor(&[2, channels, h, w], 1.0), rng.tensor(&[channels, 1, 3, 3], 1.0), rng.tensor(&[channels], 1.0)];
        check!("depthwise conv2d", inputs, [true, true, true], seed, |o, x| o.conv2d(&x[0], &x[1], Some(&x[2]), spec))?;
    }

    /// A convolution with eval-mode batch norm folded into it, then ReLU: the folded weight
    /// `W gamma / sqrt(var + eps)` and bias `beta - mean gamma / sqrt(var + eps)` are built
    /// on the tape, so gamma and beta get gradients; the running statistics are data.
    #[test]
    fn conv_with_folded_batch_norm(cin in 1usize..4, cout in 1usize..4, seed in any::<u64>()) {
        let mut rng = Rng(seed);
        let inv_std = rng.tensor(&[cout, 1, 1, 1], 0.5).map(|v| 1.0 / (v.abs() + 0.5 + 1e-5).sqrt());
        let inputs = vec![
            rng.tensor(&[2, cin, 5, 5], 1.0),
            rng.tensor(&[cout, cin, 3, 3], 1.0),
            rng.tensor(&[cout, 1, 1, 1], 1.0),
            rng.tensor(&[cout], 1.0),
            rng.tensor(&[cout], 1.0),
            inv_std,
        ];
        let spec = Conv2dSpec::new(2, 1);
        check!("conv + folded batch norm + relu", inputs, [true, true, true, true, false, false], seed, |o, x| {
            let scale = o.mul(&x[2], &x[5]);
            let w = o.mul(&x[1], &scale);
            let flat = o.reshape(&scale, &[x[3].shape()[0]]);
            let b = o.sub(&x[3], &o.mul(&x[4], &flat));
            o.relu(&o.conv2d(&x[0], &w, Some(&b), spec))
        })?;
    }

    /// ReLU away from its kink.
    #[test]
    fn relu(s in shape(1..=3), seed in any::<u64>()) {
        let x = Rng(seed).tensor(&s, 1.0).map(|v| v.signum() * (0.05 + v.abs()));
        check!("relu", [x], [true], seed, |o, x| o.relu(&x[0]))?;
    }

    /// Maximum over an axis with distinct values (ties have no derivative).
    #[test]
    fn max_axis(s in shape(1..=3), pick in any::<u64>(), seed in any::<u64>()) {
        let axis = Rng(pick).below(s.len());
        let n: usize = s.iter().product();
        let mut order: Vec<usize> = (0..n).collect();
        let mut rng = Rng(seed);
        for i in (1..n).rev() {
            order.swap(i, rng.below(i + 1));
        }
        let x = Tensor::from_vec(s.clone(), order.iter().map(|&v| v as f32 * 0.1).collect()).unwrap();
        check!("max_axis", [x], [true], seed, |o, x| o.max_axis(&x[0], axis))?;
    }
}
