//! `cargo xtask repro` on a seconds-long setting: the report is written with every section,
//! its plots decode as images, and the ImageNet section reads a tiny fake image folder.

use std::path::Path;

use idlevit_zoo::{DeiT, DeiTConfig};
use xtask::repro::{Chart, ImagenetOptions, ReproOptions, Series, run, write_chart};

/// A scratch folder of one test, removed when dropped.
fn scratch(test: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("idlevit-repro-{test}-"))
        .tempdir()
        .expect("temp dir")
}

/// Checks that `path` decodes: PNG by the image crate, SVG as an `<svg>` document.
fn assert_image(path: &Path) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    match path.extension().and_then(|e| e.to_str()) {
        Some("png") => {
            let image = image::load_from_memory(&bytes).expect("PNG decodes");
            assert!(
                image.width() >= 100 && image.height() >= 100,
                "{}",
                path.display()
            );
        }
        Some("svg") => {
            let text = String::from_utf8(bytes).expect("SVG is text");
            assert!(text.trim_start().starts_with("<svg") && text.trim_end().ends_with("</svg>"));
        }
        other => panic!("unexpected image type {other:?}"),
    }
}

/// An ImageNet-style folder of 2 classes x 2 images, a matching config and random weights.
fn fake_imagenet(dir: &Path) -> ImagenetOptions {
    for class in ["n01440764", "n01443537"] {
        std::fs::create_dir_all(dir.join("val").join(class)).unwrap();
        for i in 0..2u8 {
            let image = image::RgbImage::from_fn(40, 36, |x, y| {
                image::Rgb([(x * 6) as u8, (y * 7) as u8, i * 90 + class.len() as u8])
            });
            image
                .save(dir.join("val").join(class).join(format!("{i}.JPEG.png")))
                .unwrap();
        }
    }
    let config = DeiTConfig {
        img_size: 32,
        patch_size: 8,
        embed_dim: 16,
        num_heads: 2,
        num_classes: 3,
        ..DeiTConfig::tiny()
    };
    let config_path = dir.join("config.json");
    std::fs::write(&config_path, serde_json::to_string(&config).unwrap()).unwrap();
    let weights = dir.join("weights.safetensors");
    DeiT::random(&config, 4)
        .unwrap()
        .to_checkpoint()
        .unwrap()
        .save_safetensors(&weights)
        .unwrap();
    ImagenetOptions {
        dir: dir.join("val"),
        weights,
        model: None,
        config: Some(config_path),
        rates: vec![0.5],
        batch: 3,
    }
}

#[test]
fn a_tiny_run_writes_the_whole_report() {
    let tmp = scratch("tiny");
    let dir = tmp.path();
    let mut options = ReproOptions::tiny(dir.join("out"));
    options.imagenet = Some(fake_imagenet(dir));
    let mut lines = Vec::new();
    let outcome = run(&options, &mut |l| lines.push(l)).unwrap();
    let report = std::fs::read_to_string(&outcome.report).unwrap();
    for heading in [
        "## 1. Cost",
        "## 2. Speed",
        "## 3. Accuracy on the digits tasks",
        "### Verdicts",
        "### 3.1 Task: digits",
        "### 3.2 Task: larger-digit",
        "## 4. Token selection",
        "## 5. ImageNet",
        "- *Idling beats pruning at the same keep rate* on larger-digit: r=0.7: **",
        "- *The cut loss helps* on digits: r=0.7: **",
        "- *Idling beats EViT at r = 0.5* on digits: r=0.5: **",
    ] {
        assert!(report.contains(heading), "missing `{heading}` in\n{report}");
    }
    // The paper's DeiT-S figures sit beside ours, and ours follow the reference keep-count test vectors.
    assert!(
        report.contains("| deit_small | 4.6 | 4.599 | 4.067 |"),
        "{report}"
    );
    // Cost (2) + speed (2 batches) + per task results and claims + tokens + ImageNet.
    assert_eq!(outcome.tables.len(), 10);
    for (table, task) in [(4, "digits"), (6, "larger-digit")] {
        let accuracy = &outcome.tables[table];
        assert!(accuracy.title.starts_with(task), "{}", accuracy.title);
        assert!(accuracy.title.contains("on 20 validation canvases"));
        assert_eq!(accuracy.rows.len(), 1 + 4 * 2);
        for row in &accuracy.rows[1..] {
            // Two seeds each, every top-1 a percentage.
            let seeds: Vec<f64> = row[6].split(", ").map(|v| v.parse().unwrap()).collect();
            assert_eq!(seeds.len(), 2);
            assert!(seeds.iter().all(|v| (0.0..=100.0).contains(v)), "{row:?}");
            // The same policy's top-1 before finetuning, found for every method and rate.
            let before: f64 = row[4].parse().unwrap();
            assert!((0.0..=100.0).contains(&before), "{row:?}");
        }
        // Cut loss and pruning at both rates, EViT at 0.5: each with an interval that
        // gives its verdict.
        let claims = &outcome.tables[table + 1];
        assert_eq!(claims.rows.len(), 2 + 2 + 1, "{claims:?}");
        for row in &claims.rows {
            assert_eq!(row[3], "2");
            let bounds: Vec<f64> = row[4]
                .trim_matches(['[', ']'])
                .split(", ")
                .map(|v| v.parse().unwrap())
                .collect();
            let expected = if bounds[0] > 0.0 {
                "holds"
            } else if bounds[1] < 0.0 {
                "fails (the reverse holds)"
            } else {
                "unresolved"
            };
            assert_eq!(row[5], expected, "{row:?}");
        }
    }
    let imagenet = outcome.tables.last().unwrap();
    assert_eq!(imagenet.rows.len(), 1 + 3);
    assert!(
        imagenet.title.contains("4 images, 2 classes"),
        "{}",
        imagenet.title
    );
    let names: Vec<String> = outcome
        .images
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for name in [
        "speed.png",
        "speed.svg",
        "accuracy_vs_gmacs_digits.png",
        "accuracy_vs_gmacs_digits.svg",
        "accuracy_vs_gmacs_larger-digit.png",
        "token_selection_digits.png",
        "token_selection_larger-digit.png",
    ] {
        assert!(names.contains(&name.to_string()), "{names:?}");
        assert!(report.contains(name) || name.ends_with(".svg"), "{name}");
    }
    outcome.images.iter().for_each(|p| assert_image(p));
    assert!(lines.iter().any(|l| l.contains("wall time")));
}

#[test]
fn charts_are_written_as_png_and_svg() {
    let tmp = scratch("chart");
    let dir = tmp.path();
    let chart = Chart {
        title: "t".into(),
        x_label: "x".into(),
        y_label: "y".into(),
        series: vec![Series {
            name: "a".into(),
            points: vec![(1.0, 2.0, 0.5), (2.0, 3.0, 0.0), (3.0, 2.5, 0.1)],
        }],
    };
    let [png, svg] = write_chart(&chart, &dir.join("c")).unwrap();
    assert_image(&png);
    assert_image(&svg);
    // The chart draws: most pixels are the white background, but not all.
    let image = image::open(&png).unwrap().to_rgb8();
    let white = image.pixels().filter(|p| p.0 == [255, 255, 255]).count();
    let total = (image.width() * image.height()) as usize;
    assert!(
        white > total / 2 && white < total,
        "{white} of {total} white"
    );
}

#[test]
fn the_timm_column_parses_the_script_output() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = scratch("timm");
    let dir = tmp.path();
    // A stand-in interpreter: prints what the script prints, whatever it is asked.
    let python = dir.join("python");
    std::fs::write(
        &python,
        "#!/bin/sh\necho '{\"torch\": \"2.15.0\", \"timm\": \"1.0.31\"}'\n\
         echo '{\"model\": \"deit_small\", \"batch\": 32, \"images_per_second\": 17.5}'\n",
    )
    .unwrap();
    std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = xtask::repro::run_timm(&python, &["deit_small".into()], &[32], 1, dir).unwrap();
    assert_eq!(run.versions, "torch 2.15.0, timm 1.0.31");
    assert_eq!(run.rows, vec![("deit_small".to_string(), 32, 17.5)]);
    // The script itself is written beside, for the interpreter to run.
    assert!(dir.join("timm_throughput.py").is_file());
    std::fs::write(&python, "#!/bin/sh\necho broken >&2\nexit 3\n").unwrap();
    let err = xtask::repro::run_timm(&python, &["deit_small".into()], &[32], 1, dir).unwrap_err();
    assert!(format!("{err:#}").contains("broken"), "{err:#}");
}
