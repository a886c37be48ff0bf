//! `idlevit logits`: a model's logits on a tensor of images, and optionally the tokens each
//! selection layer chose.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;
use idlevit_checkpoint::Checkpoint;
use idlevit_data::files::{NamedPath, check_distinct, write_atomically};
use idlevit_tensor::Tensor;

use serde_json::json;

use super::{Globals, named, print_json, read_input, resolve_model, zoo_model};
use crate::args::{ModelArgs, PolicyArgs};
use crate::policy::Mode;

/// The arguments of `logits`.
#[derive(Args)]
pub struct Logits {
    #[command(flatten)]
    model: ModelArgs,
    /// Run the linear layers and attention in bfloat16 (f32 accumulation); see docs/bf16.md.
    #[arg(long)]
    bf16: bool,
    /// Weights: safetensors with timm names, a PyTorch .pth checkpoint, or a timm hub
    /// snapshot directory (config.json + model.safetensors; --model/--config not needed).
    #[arg(long, value_name = "W")]
    weights: PathBuf,
    /// safetensors file holding tensor `input` of shape (batch, 3, img_size, img_size).
    #[arg(long, value_name = "X.safetensors")]
    input: PathBuf,
    /// Where to write tensor `logits` (batch, num_classes).
    #[arg(long, value_name = "Y.safetensors")]
    output: PathBuf,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Also write each selection layer's chosen tokens as I64 tensors
    /// `selected.layer{i}` (batch, K+1), original token indices, CLS first.
    #[arg(long, value_name = "F.safetensors")]
    selected_out: Option<PathBuf>,
    /// Print one JSON object on stdout instead of text (its fields: README).
    #[arg(long)]
    json: bool,
}

/// Runs `logits`.
pub fn run(args: Logits, globals: &Globals) -> Result<()> {
    let snapshot = super::snapshot_files(&[("--weights", Some(&args.weights))]);
    let mut inputs = args.model.config_input();
    inputs.extend([
        NamedPath::new("--weights", &args.weights),
        NamedPath::new("--input", &args.input),
    ]);
    inputs.extend(
        snapshot
            .iter()
            .map(|(flag, path)| NamedPath::new(flag, path)),
    );
    let mut outputs = vec![NamedPath::new("--output", &args.output)];
    outputs.extend(named("--selected-out", &args.selected_out));
    check_distinct(&inputs, &outputs)?;
    let images = read_input(&args.input, globals.strict)?;
    let batch = images.shape().first().copied().unwrap_or(0);
    let resolved = resolve_model(&args.model, Some(&args.weights))?;
    let model = zoo_model(&resolved, &args.policy, args.bf16, batch, globals)?;
    let run =
        idlevit_train::inspect::run_logits(&model, args.policy.mode == Mode::Masked, &images)?;
    let rows = non_finite_rows(&run.logits);
    if rows > 0 {
        eprintln!(
            "warning: {rows} of {batch} images' logits hold NaN or infinity: the model's \
             weights or input are not finite"
        );
    }
    // Both files are written before either is reported, so a failure leaves no claim of a
    // file that is not there.
    write_logits(&run.logits, &args.output)?;
    if let Some(path) = &args.selected_out {
        write_selections(&run.selections, path)?;
    }
    if args.json {
        let layers: Vec<usize> = run.selections.iter().map(|(layer, _)| *layer).collect();
        let selected = args
            .selected_out
            .as_ref()
            .map(|path| json!({"path": path.display().to_string(), "layers": layers}));
        return print_json(&json!({
            "output": args.output.display().to_string(),
            "shape": run.logits.shape(),
            "non_finite_rows": rows,
            "selected_out": selected,
        }));
    }
    println!(
        "wrote logits {:?} to {}",
        run.logits.shape(),
        args.output.display()
    );
    if let Some(path) = args.selected_out {
        println!(
            "wrote {} layers' selections to {}",
            run.selections.len(),
            path.display()
        );
    }
    Ok(())
}

/// How many rows of `(rows, columns)` values hold NaN or infinity.
fn non_finite_rows(values: &Tensor) -> usize {
    let columns = values.shape().last().copied().unwrap_or(1).max(1);
    values
        .to_vec()
        .chunks(columns)
        .filter(|row| !row.iter().all(|v| v.is_finite()))
        .count()
}

/// Writes tensor `logits` to `path` (atomically).
fn write_logits(logits: &Tensor, path: &Path) -> Result<()> {
    let mut out = Checkpoint::default();
    out.insert("logits", logits.clone());
    Ok(write_atomically(path, &out.to_safetensors_bytes()?)?)
}

/// Writes each selecting layer's tokens as I64 tensor `selected.layer{i}` `(batch, K + 1)`.
fn write_selections(selections: &[(usize, Vec<Vec<usize>>)], path: &Path) -> Result<()> {
    let encoded: Vec<(String, Vec<usize>, Vec<u8>)> = selections
        .iter()
        .map(|(layer, tokens)| {
            let width = tokens.first().map_or(0, Vec::len);
            let bytes = tokens
                .iter()
                .flatten()
                .flat_map(|&t| (t as i64).to_le_bytes())
                .collect();
            (
                format!("selected.layer{layer}"),
                vec![tokens.len(), width],
                bytes,
            )
        })
        .collect();
    let views = encoded
        .iter()
        .map(|(name, shape, bytes)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::I64, shape.clone(), bytes)
                .map(|v| (name.as_str(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let bytes = safetensors::serialize(views, None)?;
    Ok(write_atomically(path, &bytes)?)
}
