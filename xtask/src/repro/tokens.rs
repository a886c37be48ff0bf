//! Which tokens the idle layers pick: the paper's picture (each idle layer's selection over
//! a few images), how often idled tokens are picked again, and how much of the selection
//! lies on the digit.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Result;
use idlevit_data::digits::Canvas;
use idlevit_data::preprocess::{EvalTransform, IMAGENET_MEAN, IMAGENET_STD, preprocess};
use idlevit_nn::Eager;
use idlevit_tensor::Tensor;
use idlevit_zoo::DeiT;
use image::{Rgb, RgbImage};

use super::{AccuracyOptions, AccuracyRun, Method, Table, pct};

/// Token statistics of one idle model over validation canvases.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenStats {
    /// The idle layers, in order.
    pub layers: Vec<usize>,
    /// Per idle layer after the first: of the image tokens the previous idle layer left
    /// idle, the fraction this layer selects.
    pub reselected: Vec<f64>,
    /// Of the tokens idled at some idle layer, the fraction selected at a later one.
    pub reselected_later: f64,
    /// Per idle layer: the fraction of its selected image tokens that touch the digit.
    pub on_digit: Vec<f64>,
    /// The fraction of all patches that touch the digit (what a random pick would get).
    pub digit_share: f64,
}

/// The report's token-selection section for the idle models of `run` over `count` of its
/// validation canvases, with the picture of the last rate's IdleViT + cut-loss model on
/// `shown` of them written to `out`: the section's markdown, its table, and the picture.
pub fn section(
    run: &AccuracyRun,
    options: &AccuracyOptions,
    (count, shown): (usize, usize),
    out: &Path,
) -> Result<(String, Table, Vec<PathBuf>)> {
    let mut md = "## 4. Token selection\n\n".to_string();
    let mut pictures = Vec::new();
    let mut table = Table::new(
        "Idled tokens picked again, and selections on the digits",
        &[
            "task",
            "model",
            "r",
            "re-selected at the next idle layer, per layer (%)",
            "re-selected at any later idle layer (%)",
            "selected tokens on a digit, per layer (%)",
            "patches on a digit (%)",
        ],
    );
    let mut evaluated = 0;
    for task in &run.tasks {
        let canvases = &task.val[..count.min(task.val.len())];
        evaluated = evaluated.max(canvases.len());
        for (method, rate, model) in &task.idle_models {
            let (stats, selected) = token_stats(model, canvases)?;
            let join = |v: &[f64]| {
                v.iter()
                    .map(|x| format!("{:.0}", 100.0 * x))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            table.push(vec![
                task.task.name().into(),
                method.name().into(),
                format!("{rate}"),
                join(&stats.reselected),
                pct(stats.reselected_later),
                join(&stats.on_digit),
                pct(stats.digit_share),
            ]);
            if *method == Method::IdleCut && Some(rate) == options.rates.last() {
                let shown = &canvases[..shown.min(canvases.len())];
                let tensor = canvases_tensor(shown, model.config().img_size)?;
                let picked: Vec<Vec<Vec<usize>>> = selected
                    .iter()
                    .map(|per_image| per_image[..shown.len()].to_vec())
                    .collect();
                let name = format!("token_selection_{}.png", task.task.name());
                let path = out.join(&name);
                selection_picture(&tensor, &picked, model.config().patch_size, 2, &path)?;
                let _ = write!(
                    md,
                    "![token selection on {task_name}]({name})\n\n{task_name}: IdleViT + cut \
                     loss at r={rate} (seed {}): each row one validation canvas; the input, \
                     then idle layers {:?} left to right. Idle tokens are dimmed blue; the \
                     rest are the layer's selection.\n\n",
                    options.seeds[0],
                    stats.layers,
                    task_name = task.task.name(),
                );
                pictures.push(path);
            }
        }
    }
    let _ = write!(
        md,
        "Over up to {evaluated} validation canvases per task (seed {} models). Re-selection: of \
         the image tokens one idle layer leaves idle, the share the next idle layer computes \
         again (the freedom pruning lacks).\n\n",
        options.seeds[0]
    );
    md += &table.markdown();
    Ok((md, table, pictures))
}

/// The canvases as the model sees them: `(batch, 3, img, img)`.
pub fn canvases_tensor(canvases: &[Canvas], img_size: usize) -> Result<Tensor> {
    let transform = EvalTransform::for_size(img_size);
    let mut data = Vec::with_capacity(canvases.len() * 3 * img_size * img_size);
    for canvas in canvases {
        let image = image::DynamicImage::ImageRgb8(canvas.image.clone());
        data.extend(preprocess(&image, &transform)?.into_vec());
    }
    Ok(Tensor::from_vec(
        vec![canvases.len(), 3, img_size, img_size],
        data,
    )?)
}

/// Which patches (row-major, `grid x grid`) the digits' boxes touch after the evaluation
/// transform (shorter side to `resize`, centred crop).
fn digit_patches(canvas: &Canvas, img_size: usize, patch: usize) -> Vec<bool> {
    let transform = EvalTransform::for_size(img_size);
    let scale = f64::from(transform.resize) / f64::from(canvas.image.width());
    let offset = (f64::from(transform.resize - transform.crop) / 2.0).round();
    let map = |v: u32| f64::from(v) * scale - offset;
    let boxes: Vec<(f64, f64, f64, f64)> = std::iter::once(canvas.digit_box)
        .chain(canvas.second_box)
        .map(|(x, y, s)| (map(x), map(y), map(x + s), map(y + s)))
        .collect();
    let grid = img_size / patch;
    (0..grid * grid)
        .map(|p| {
            let (px, py) = ((p % grid * patch) as f64, (p / grid * patch) as f64);
            boxes.iter().any(|&(x0, y0, x1, y1)| {
                px < x1 && px + patch as f64 > x0 && py < y1 && py + patch as f64 > y0
            })
        })
        .collect()
}

/// Runs `model` (an idle policy) over `canvases` and returns its statistics and, per idle
/// layer, each image's selected patch indices (CLS removed).
pub fn token_stats(
    model: &DeiT,
    canvases: &[Canvas],
) -> Result<(TokenStats, Vec<Vec<Vec<usize>>>)> {
    let config = model.config();
    let images = canvases_tensor(canvases, config.img_size)?;
    let traced = model.forward_traced(&Eager, &images)?;
    let patches = config.num_patches();
    // selected[layer][image] = patch indices.
    let selected: Vec<Vec<Vec<usize>>> = traced
        .selections
        .iter()
        .map(|s| {
            s.tokens
                .iter()
                .map(|t| t.iter().filter(|&&r| r > 0).map(|&r| r - 1).collect())
                .collect()
        })
        .collect();
    let layers: Vec<usize> = traced.selections.iter().map(|s| s.layer).collect();
    let masks: Vec<Vec<Vec<bool>>> = selected
        .iter()
        .map(|per_image| {
            per_image
                .iter()
                .map(|sel| {
                    let mut m = vec![false; patches];
                    sel.iter().for_each(|&p| m[p] = true);
                    m
                })
                .collect()
        })
        .collect();
    let mut reselected = Vec::new();
    for l in 1..masks.len() {
        let (mut idle, mut back) = (0usize, 0usize);
        for (prev, now) in masks[l - 1].iter().zip(&masks[l]) {
            for (p, n) in prev.iter().zip(now) {
                if !p {
                    idle += 1;
                    back += usize::from(*n);
                }
            }
        }
        reselected.push(back as f64 / idle.max(1) as f64);
    }
    let (mut idled, mut later) = (0usize, 0usize);
    for image in 0..canvases.len() {
        for p in 0..patches {
            if let Some(first_idle) = (0..masks.len()).find(|&l| !masks[l][image][p]) {
                idled += 1;
                later += usize::from((first_idle + 1..masks.len()).any(|l| masks[l][image][p]));
            }
        }
    }
    let digit: Vec<Vec<bool>> = canvases
        .iter()
        .map(|c| digit_patches(c, config.img_size, config.patch_size))
        .collect();
    let on_digit = selected
        .iter()
        .map(|per_image| {
            let (mut hit, mut total) = (0usize, 0usize);
            for (sel, d) in per_image.iter().zip(&digit) {
                total += sel.len();
                hit += sel.iter().filter(|&&p| d[p]).count();
            }
            hit as f64 / total.max(1) as f64
        })
        .collect();
    let digit_share = digit.iter().flatten().filter(|&&d| d).count() as f64
        / (digit.len() * patches).max(1) as f64;
    Ok((
        TokenStats {
            layers,
            reselected,
            reselected_later: later as f64 / idled.max(1) as f64,
            on_digit,
            digit_share,
        },
        selected,
    ))
}

/// The paper's picture: one row per image, the input first, then one panel per idle layer
/// where idle patches are dimmed and selected patches keep their pixels. Each panel is
/// scaled by `zoom`.
pub fn selection_picture(
    images: &Tensor,
    selected: &[Vec<Vec<usize>>],
    patch: usize,
    zoom: u32,
    path: &Path,
) -> Result<()> {
    let &[batch, _, side, _] = images.shape() else {
        anyhow::bail!(
            "expected images (batch, 3, side, side), found {:?}",
            images.shape()
        );
    };
    let data = images.to_vec();
    let panel = side as u32 * zoom;
    let gap = 4u32;
    let columns = 1 + selected.len() as u32;
    let width = columns * panel + (columns - 1) * gap;
    let height = batch as u32 * panel + (batch as u32).saturating_sub(1) * gap;
    let mut out = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    let grid = side / patch;
    for b in 0..batch {
        let pixel = |x: usize, y: usize| -> [u8; 3] {
            [0, 1, 2].map(|c| {
                let v =
                    data[((b * 3 + c) * side + y) * side + x] * IMAGENET_STD[c] + IMAGENET_MEAN[c];
                (v * 255.0).round().clamp(0.0, 255.0) as u8
            })
        };
        for column in 0..columns {
            let kept: Option<Vec<bool>> = (column > 0).then(|| {
                let mut m = vec![false; grid * grid];
                selected[column as usize - 1][b]
                    .iter()
                    .for_each(|&p| m[p] = true);
                m
            });
            let (ox, oy) = (column * (panel + gap), b as u32 * (panel + gap));
            for y in 0..panel {
                for x in 0..panel {
                    let (sx, sy) = ((x / zoom) as usize, (y / zoom) as usize);
                    let mut rgb = pixel(sx, sy);
                    if let Some(kept) = &kept
                        && !kept[(sy / patch) * grid + sx / patch]
                    {
                        // Idle: dimmed and tinted blue, so the selection stands out.
                        rgb = [rgb[0] / 5, rgb[1] / 5, rgb[2] / 5 + 60];
                    }
                    out.put_pixel(ox + x, oy + y, Rgb(rgb));
                }
            }
        }
    }
    Ok(idlevit_data::files::save_png(&out, path)?)
}
