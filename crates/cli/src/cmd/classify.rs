//! `idlevit classify`: the top classes of image files, by a model given or by the embedded
//! digits model.

use std::path::PathBuf;

use anyhow::{Result, ensure};
use clap::Args;
use idlevit_data::labels::default_names;
use idlevit_data::preprocess::EvalTransform;
use idlevit_data::weights::read_file;

use serde_json::json;

use super::{Globals, inference_model, packed, print_json, resolve_model};
use crate::args::ModelArgs;
use crate::checks;

/// The arguments of `classify`.
#[derive(Args)]
pub struct Classify {
    #[command(flatten)]
    model: ModelArgs,
    /// Run the linear layers and attention in bfloat16 (f32 accumulation); see docs/bf16.md.
    #[arg(long)]
    bf16: bool,
    /// Weights: safetensors with timm names, a PyTorch .pth checkpoint, or a timm hub
    /// snapshot directory (config.json + model.safetensors: the model and its preprocessing
    /// come from it) (absent: the embedded digits model).
    #[arg(long, value_name = "W")]
    weights: Option<PathBuf>,
    /// Class names, one per line, printed beside the indices [default for 1000-class
    /// models: the ImageNet-1k names].
    #[arg(long, value_name = "FILE")]
    labels: Option<PathBuf>,
    /// How many classes to print per image.
    #[arg(long, default_value_t = 5, value_parser = checks::at_least_one, allow_negative_numbers = true)]
    top: usize,
    /// Image files (PNG, JPEG, BMP, GIF, WebP, TIFF).
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
    /// Print one JSON object on stdout instead of text (its fields: README).
    #[arg(long)]
    json: bool,
}

/// Runs `classify`.
pub fn run(args: Classify, globals: &Globals) -> Result<()> {
    let bf16 = args.bf16;
    let (model, labels, transform) = match args.weights {
        Some(weights) => {
            let resolved = resolve_model(&args.model, Some(&weights))?;
            let config = &resolved.config;
            let batch = args.images.len();
            let labels = match &args.labels {
                Some(path) => Some(read_labels(path)?),
                None => default_names(config.num_classes())
                    .map(|names| names.into_iter().map(String::from).collect()),
            };
            let weights = resolved.weights.as_deref().unwrap_or(&weights);
            let model = inference_model(config, weights, bf16, batch, globals)?;
            (model, labels, resolved.transform)
        }
        None => {
            ensure!(
                args.model.config.is_none() && args.model.model.is_none(),
                "--config/--model need --weights (without both, the embedded digits model runs)"
            );
            let labels = match args.labels {
                Some(path) => read_labels(&path)?,
                None => idlevit_train::models::DEFAULT_LABELS
                    .map(String::from)
                    .to_vec(),
            };
            let model = idlevit_train::models::default_model()?
                .with_precision(crate::precision::from_flag(bf16))?;
            let transform = EvalTransform::for_size(model.config().img_size);
            (packed(model.into(), bf16), Some(labels), transform)
        }
    };
    let classified = idlevit_train::evaluate::classify(&model, &args.images, args.top, &transform)?;
    // Each unreadable file is named as soon as it is known; the others are still classified.
    for (_, err) in &classified.unreadable {
        eprintln!("error: {err}");
    }
    let label = |class: usize| labels.as_ref().and_then(|l| l.get(class));
    for prediction in &classified.predictions {
        if prediction.top.iter().any(|(_, p)| !p.is_finite()) {
            eprintln!(
                "warning: {} gave NaN or infinite logits; its classes mean nothing",
                prediction.path.display()
            );
        }
    }
    if args.json {
        let images: Vec<_> = classified
            .predictions
            .iter()
            .map(|prediction| {
                let top: Vec<_> = prediction
                    .top
                    .iter()
                    .map(|&(class, prob)| {
                        json!({"index": class, "label": label(class), "probability": prob})
                    })
                    .collect();
                json!({"path": prediction.path.display().to_string(), "top": top})
            })
            .collect();
        let unreadable: Vec<_> = classified
            .unreadable
            .iter()
            .map(
                |(path, err)| json!({"path": path.display().to_string(), "error": err.to_string()}),
            )
            .collect();
        print_json(&json!({"images": images, "unreadable": unreadable}))?;
    } else {
        for prediction in &classified.predictions {
            println!("{}", prediction.path.display());
            for &(class, prob) in &prediction.top {
                let name = label(class).map_or("", String::as_str);
                println!("  {class:>5}  {prob:.4}  {name}");
            }
        }
    }
    ensure!(
        classified.unreadable.is_empty(),
        "{} of {} image files could not be read (named above)",
        classified.unreadable.len(),
        args.images.len()
    );
    Ok(())
}

/// Reads class names, one per line.
fn read_labels(path: &std::path::Path) -> Result<Vec<String>> {
    let bytes = read_file(path, "labels")?;
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("labels file {} is not UTF-8 text", path.display()))?;
    Ok(text.lines().map(|l| l.trim().to_string()).collect())
}
