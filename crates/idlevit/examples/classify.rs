//! Classify images with a model named on the command line:
//!
//! ```sh
//! cargo run --release -p idlevit --example classify -- [--idle R] [--bf16] MODEL IMAGE...
//! ```
//!
//! `MODEL` is a timm hub snapshot directory (`config.json` + `model.safetensors`), or
//! `NAME=FILE`: a published model's name and its weights (`deit_small=deit_small.pth`).

use std::process::ExitCode;

use idlevit::{Model, Prediction};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match classify(&args) {
        Ok(results) => {
            for (image, top) in results {
                println!("{image}");
                for class in top {
                    let label = class.label.unwrap_or_default();
                    println!("  {:>5}  {:.4}  {label}", class.index, class.probability);
                }
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Each image of `args` (`[--idle R] [--bf16] MODEL IMAGE...`) with its five top classes.
pub fn classify(args: &[String]) -> Result<Vec<(String, Vec<Prediction>)>, idlevit::Error> {
    let usage = || idlevit::Error::Invalid("usage: [--idle R] [--bf16] MODEL IMAGE...".into());
    let (mut keep_rate, mut bf16, mut rest) = (None, false, args);
    loop {
        match rest {
            [flag, rate, tail @ ..] if flag == "--idle" => {
                keep_rate = Some(rate.parse::<f64>().map_err(|_| usage())?);
                rest = tail;
            }
            [flag, tail @ ..] if flag == "--bf16" => (bf16, rest) = (true, tail),
            _ => break,
        }
    }
    let [model, images @ ..] = rest else {
        return Err(usage());
    };
    if images.is_empty() {
        return Err(usage());
    }
    let mut model = match model.split_once('=') {
        Some((name, weights)) => Model::from_file(name, weights)?,
        None => Model::from_hub_dir(model)?,
    };
    if let Some(rate) = keep_rate {
        model = model.with_idling(rate)?;
    }
    if bf16 {
        model = model.with_bf16()?;
    }
    let tops = model.classify_batch(images, 5)?;
    Ok(images.iter().cloned().zip(tops).collect())
}
