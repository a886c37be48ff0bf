//! Runs one forward pass (or one training step) of a random model so that its peak memory can
//! be measured from outside (`/usr/bin/time -v`), and prints the zoo's estimate beside it.
//!
//! `cargo run --release -p idlevit-benches --example memory_probe -- MODEL BATCH MODE`, where MODE
//! is `infer`, `bf16` (DeiT only), `train` or `train-teacher`. Training runs the masked form
//! under the family's idle schedule at keep rate 0.7 (dense for PVT-v2), backpropagates the sum
//! of the logits, and then holds AdamW's two moments, as the first optimiser step does.

use idlevit_autodiff::Backend;
use idlevit_autodiff::Tape;
use idlevit_nn::{Eager, Precision, Tensor};
use idlevit_zoo::{MemoryUse, PolicyKind, TokenPolicy, ZooConfig, ZooModel, available_memory};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [name, batch, mode] = args.as_slice() else {
        return Err("usage: memory_probe MODEL BATCH infer|bf16|train|train-teacher".into());
    };
    let batch: usize = batch.parse()?;
    let config = ZooConfig::named(name)?;
    let use_ = match mode.as_str() {
        "infer" => MemoryUse::Inference,
        "bf16" => MemoryUse::InferenceBf16,
        "train" => MemoryUse::Training { teacher: false },
        "train-teacher" => MemoryUse::Training { teacher: true },
        other => return Err(format!("unknown mode {other}").into()),
    };
    let estimate = config.memory_estimate(batch, use_);
    println!(
        "estimate {:.3} GB (available {:?})",
        estimate.map_or(f64::NAN, |b| b as f64 / 1e9),
        available_memory().map(|b| b as f64 / 1e9)
    );
    let side = config.img_size();
    // Filled, not zeroed: untouched zero pages would not count in the resident set.
    let images = Tensor::full(&[batch, 3, side, side], 0.25)?;
    let model = ZooModel::random(&config, 1)?;
    match use_ {
        MemoryUse::Inference | MemoryUse::InferenceBf16 => {
            let model = if use_ == MemoryUse::InferenceBf16 {
                let ZooModel::DeiT(deit) = model else {
                    return Err("bf16 runs DeiT models only".into());
                };
                ZooModel::DeiT(Box::new(deit.with_precision(Precision::Bf16)?))
            } else {
                model.pack_for_inference();
                model
            };
            let logits = model.forward(&Eager, &images)?;
            println!("logits {:?}", logits.shape());
        }
        MemoryUse::Training { teacher } => {
            let teacher_logits = if teacher {
                let teacher = ZooModel::random(&config, 2)?;
                Some(teacher.forward(&Eager, &images)?)
            } else {
                None
            };
            let student = match &config {
                ZooConfig::Pvt(_) => model,
                _ => model.with_policy(TokenPolicy::select(
                    PolicyKind::Idle,
                    config.schedule(PolicyKind::Idle, 0.7)?,
                ))?,
            };
            let tape = Tape::new();
            let x = tape.constant(images);
            let (logits, _kept) = match &student {
                ZooModel::Pvt(m) => (m.forward_masked(&tape, &x)?.logits, Vec::new()),
                _ => {
                    let out = student.forward_masked(&tape, &x)?;
                    (out.logits, out.layers)
                }
            };
            let loss = tape.sum_all(&logits)?;
            let grads = tape.backward(&loss)?;
            let mut count = 0;
            student.visit_params(&mut |p| count += p.value().numel());
            // AdamW's two moments, written so that their pages are resident.
            let moments = [vec![1.0f32; count], vec![1.0f32; count]];
            println!(
                "gradients {}, moments {}, teacher {:?}",
                grads.iter().count(),
                moments.iter().map(Vec::len).sum::<usize>(),
                teacher_logits.map(|t| t.shape().to_vec())
            );
        }
    }
    Ok(())
}
