//! ImageNet: top-1 / top-5 of the user's checkpoint on an image folder (`DIR/<synset>/*`,
//! folders in name order = class index, as ImageNet's val set is usually laid out), dense
//! and under each policy, beside the paper's dense figures.

use std::path::PathBuf;

use anyhow::{Result, bail};
use idlevit_data::ImageFolder;
use idlevit_train::evaluate::evaluate;
use idlevit_train::models::load_model;
use idlevit_zoo::{DeiTConfig, TokenPolicy, ZooConfig, ZooModel};

use super::cost::ZOO;
use super::speed::{POLICIES, deit_policy, policy_name};
use super::table::{Table, cell};

/// What to evaluate.
#[derive(Clone, Debug)]
pub struct ImagenetOptions {
    /// The image folder.
    pub dir: PathBuf,
    /// The checkpoint (safetensors or `.pth`).
    pub weights: PathBuf,
    /// A named model (`deit_small`, ...).
    pub model: Option<String>,
    /// Or a config file.
    pub config: Option<PathBuf>,
    /// Base keep rates.
    pub rates: Vec<f64>,
    /// Images per forward pass.
    pub batch: usize,
}

/// Evaluates the checkpoint dense and under every policy at every rate.
pub fn imagenet_table(options: &ImagenetOptions) -> Result<Table> {
    let config = deit_config(options)?;
    let dense = load_model(&config, Some(&options.weights), "weights", false)?;
    let dense = ZooModel::DeiT(Box::new(dense));
    let data = ImageFolder::open(&options.dir)?;
    let name = options.model.clone().unwrap_or_else(|| "custom".into());
    let paper = ZOO
        .iter()
        .find(|(n, _, _)| name.trim_end_matches("_patch16_224") == *n)
        .map(|z| z.2);
    let mut table = Table::new(
        &format!(
            "{name} on {} ({} images, {} classes): top-1 / top-5 (%)",
            options.dir.display(),
            data.len(),
            data.classes().len()
        ),
        &["policy", "r", "top-1", "top-5", "paper dense top-1"],
    );
    let mut forms = vec![("dense".to_string(), None, TokenPolicy::Dense)];
    for &rate in &options.rates {
        for kind in POLICIES {
            forms.push((
                policy_name(kind).to_string(),
                Some(rate),
                deit_policy(kind, rate)?,
            ));
        }
    }
    for (label, rate, policy) in forms {
        let model = dense.clone().with_policy(policy)?;
        let acc = evaluate(&model, &data, options.batch, false)?;
        table.push(vec![
            label,
            cell(rate, 1),
            format!("{:.2}", 100.0 * acc.top1),
            format!("{:.2}", 100.0 * acc.top5),
            cell(paper, 1),
        ]);
    }
    Ok(table)
}

/// The DeiT config of `--config FILE` or `--model NAME` (exactly one must be given).
fn deit_config(options: &ImagenetOptions) -> Result<DeiTConfig> {
    let config = match (&options.config, &options.model) {
        (Some(path), None) => ZooConfig::from_file(path)?,
        (None, Some(name)) => ZooConfig::named(name)?,
        (Some(_), Some(_)) => bail!("give either --config or --model, not both"),
        (None, None) => bail!("give --config CFG.json or --model NAME"),
    };
    match config {
        ZooConfig::DeiT(config) => Ok(config),
        other => bail!(
            "this runs DeiT models ({}), not the {} model given",
            idlevit_zoo::model_names()[..3].join(", "),
            other.family()
        ),
    }
}
