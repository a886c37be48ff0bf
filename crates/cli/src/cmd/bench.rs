//! `idlevit bench`: median images/s of a model, dense against a token policy, or f32 against
//! bf16.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use idlevit_train::bench::{BenchReport, PrecisionBench, bench, bench_precision};
use idlevit_train::models::load_zoo_model;
use idlevit_zoo::{PolicyKind, TokenPolicy};

use serde_json::json;

use super::{Globals, check_model_memory, inference_use, print_json};
use crate::args::{ModelArgs, PolicyChoice};
use crate::checks;
use crate::policy::compared_policy;

/// The arguments of `bench`.
#[derive(Args)]
pub struct Bench {
    #[command(flatten)]
    model: ModelArgs,
    /// Run the linear layers and attention in bfloat16 (f32 accumulation); see docs/bf16.md.
    #[arg(long)]
    bf16: bool,
    /// The selection policy compared with dense.
    #[arg(long, value_enum, default_value_t = PolicyChoice::Idle)]
    policy: PolicyChoice,
    /// Base keep rate r of the policy (see `logits --help`); dense only when absent.
    #[arg(long, value_name = "R")]
    keep_rate: Option<f64>,
    /// Weights, or a timm hub snapshot directory (optional: seeded random weights by
    /// default; speed does not depend on them).
    #[arg(long, value_name = "W")]
    weights: Option<PathBuf>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 32, value_parser = checks::at_least_one, allow_negative_numbers = true)]
    batch: usize,
    /// Untimed passes first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed passes.
    #[arg(long, default_value_t = 5, value_parser = checks::at_least_one, allow_negative_numbers = true)]
    runs: usize,
    /// Print one JSON object on stdout instead of text (its fields: README).
    #[arg(long)]
    json: bool,
}

/// Runs `bench`.
pub fn run(args: Bench, globals: &Globals) -> Result<()> {
    let Bench {
        batch,
        warmup,
        runs,
        policy,
        keep_rate,
        ..
    } = args;
    let policy = PolicyKind::from(policy);
    let resolved = super::resolve_model(&args.model, args.weights.as_deref())?;
    let (name, config) = (resolved.name, resolved.config);
    check_model_memory(&config, batch, inference_use(args.bf16), globals.max_memory)?;
    let dense = load_zoo_model(
        &config,
        resolved.weights.as_deref(),
        "weights",
        globals.strict,
    )?;
    dense.pack_for_inference();
    let threads = rayon::current_num_threads();
    let token_policy = compared_policy(&config, policy, keep_rate)?;
    let side = config.img_size();
    let label = format!(
        "{policy} r={}",
        keep_rate.map_or("config".into(), |r| r.to_string())
    )
    .to_lowercase();
    // What every form of the report states first.
    let mut json = json!({
        "model": name,
        "batch": batch,
        "threads": threads,
        "warmup": warmup,
        "runs": runs,
    });
    if args.bf16 {
        let report = bench_precision(&dense, &token_policy, &label, batch, warmup, runs)?;
        let kernel = idlevit_kernels::bf16_kernel_name();
        let expected_faster = idlevit_kernels::bf16_expected_faster_than_f32();
        let amx = idlevit_kernels::amx_status();
        let macs_ratio = if token_policy == TokenPolicy::Dense {
            None
        } else {
            Some(config.macs(&TokenPolicy::Dense)? / config.macs(&token_policy)?)
        };
        if args.json {
            json["bf16_kernel"] = json!(kernel);
            json["bf16_expected_faster"] = json!(expected_faster);
            json["amx_status"] = json!(amx);
            json["rows"] = report
                .rows
                .iter()
                .zip(&report.agreement)
                .map(|((label, f32_ips, bf16_ips), agreement)| {
                    json!({
                        "label": label,
                        "f32_images_per_second": f32_ips,
                        "bf16_images_per_second": bf16_ips,
                        "bf16_over_f32": bf16_ips / f32_ips,
                        "bf16_top1_same_as_f32": agreement.top1_same,
                        "images_compared": agreement.images,
                        "bf16_max_abs_logit_difference": agreement.max_abs_diff,
                        "f32_max_abs_logit": agreement.max_abs_reference,
                    })
                })
                .collect();
            if let (Some(ratio), Some((f32_speedup, bf16_speedup))) =
                (macs_ratio, report.speedups())
            {
                json["gmac_ratio"] = json!(ratio);
                json["speedup_f32"] = json!(f32_speedup);
                json["speedup_bf16"] = json!(bf16_speedup);
            }
            return print_json(&json);
        }
        println!(
            "{name} batch {batch} threads {threads}, bf16 kernel {kernel}, medians of {runs} \
             interleaved runs:"
        );
        if let Some(amx) = amx {
            // Says "bf16" so that logs filtered for precision lines keep it.
            println!("  bf16 on {amx}");
        }
        print_precision(&report, macs_ratio);
        if !expected_faster {
            println!(
                "  (on this CPU the other commands run f32 when given --bf16: its bf16 \
                 kernel is not expected to win)"
            );
        }
    } else if token_policy == TokenPolicy::Dense {
        let report = bench(&[&dense], side, batch, warmup, runs)?;
        let dense_ips = report.images_per_second(0);
        if args.json {
            json["rows"] = json!([{"label": "dense", "images_per_second": dense_ips}]);
            json["memory"] = memory_json(&report);
            return print_json(&json);
        }
        println!(
            "{name} dense batch {batch} threads {threads}: {dense_ips:.2} images/s (median of {runs})"
        );
        print_memory(&report);
    } else {
        let selecting = dense.clone().with_policy(token_policy.clone())?;
        let report = bench(&[&dense, &selecting], side, batch, warmup, runs)?;
        let (dense_ips, policy_ips) = (report.images_per_second(0), report.images_per_second(1));
        let macs_ratio = config.macs(&TokenPolicy::Dense)? / config.macs(&token_policy)?;
        let speedup = policy_ips / dense_ips;
        if args.json {
            json["rows"] = json!([
                {"label": "dense", "images_per_second": dense_ips},
                {"label": label, "images_per_second": policy_ips},
            ]);
            json["speedup"] = json!(speedup);
            json["gmac_ratio"] = json!(macs_ratio);
            json["memory"] = memory_json(&report);
            return print_json(&json);
        }
        println!("{name} batch {batch} threads {threads}, medians of {runs} interleaved runs:");
        println!("  dense      {dense_ips:8.2} images/s");
        println!("  {label:<10} {policy_ips:8.2} images/s");
        println!(
            "  speed-up {speedup:.3}x over dense; GMAC ratio {macs_ratio:.3}x; speed-up / GMAC ratio {:.3}",
            speedup / macs_ratio
        );
        print_memory(&report);
    }
    Ok(())
}

/// The memory of a benchmark in bytes, as JSON (null where the platform does not report it).
fn memory_json(report: &BenchReport) -> serde_json::Value {
    report.memory.map_or(serde_json::Value::Null, |memory| {
        json!({
            "peak_bytes": memory.peak,
            "resident_after_warmup_bytes": memory.after_warmup,
            "resident_after_runs_bytes": memory.after_runs,
        })
    })
}

/// Prints the table of `bench --bf16`: one line per model with both speeds and their ratio,
/// the policy's speed-up over dense in each precision against its GMAC ratio (when
/// `macs_ratio` is given), and how closely the bf16 logits follow the f32 ones.
fn print_precision(report: &PrecisionBench, macs_ratio: Option<f64>) {
    for (label, f32_ips, bf16_ips) in &report.rows {
        println!(
            "  {label:<10} f32 {f32_ips:8.2} images/s   bf16 {bf16_ips:8.2} images/s   \
             bf16/f32 speed ratio {:.3}x",
            bf16_ips / f32_ips
        );
    }
    if let (Some(ratio), Some((f32_speedup, bf16_speedup)), Some((label, ..))) =
        (macs_ratio, report.speedups(), report.rows.get(1))
    {
        println!(
            "  speed-up of {label} over dense: f32 {f32_speedup:.3}x, bf16 {bf16_speedup:.3}x; \
             GMAC ratio {ratio:.3}x; speed-up / GMAC ratio f32 {:.3}, bf16 {:.3}",
            f32_speedup / ratio,
            bf16_speedup / ratio
        );
    }
    for ((label, ..), agreement) in report.rows.iter().zip(&report.agreement) {
        println!(
            "  bf16 against f32, {label}: top-1 the same on {}/{} images, largest logit \
             difference {:.4} (largest |logit| {:.4})",
            agreement.top1_same,
            agreement.images,
            agreement.max_abs_diff,
            agreement.max_abs_reference
        );
    }
}

/// Prints the peak memory of a benchmark and its resident memory before and after the timed
/// runs (equal when repeated runs do not grow the process).
fn print_memory(report: &BenchReport) {
    if let Some(memory) = report.memory {
        let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
        println!(
            "memory: peak {:.1} MiB; resident {:.1} MiB after warm-up, {:.1} MiB after the runs",
            mib(memory.peak),
            mib(memory.after_warmup),
            mib(memory.after_runs)
        );
    }
}
