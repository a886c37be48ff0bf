//! `xtask convert` on real torch-made checkpoints: golden logits after conversion, and
//! malicious pickles that run nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

use idlevit_checkpoint::Checkpoint;
use idlevit_nn::{Eager, Tensor};
use idlevit_zoo::{DeiT, DeiTConfig, LvVit, LvVitConfig};
use xtask::convert::{ConvertOptions, convert};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

/// The path `name` in a scratch folder of its own, and the folder's guard, which removes it
/// when dropped.
fn scratch(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("idlevit-xtask-")
        .tempdir()
        .expect("temp dir");
    let path = dir.path().join(name);
    (dir, path)
}

/// `forward` on the fixture's `input.safetensors` gives its `logits.safetensors` (<= 1e-4).
fn assert_reference_logits(dir: &Path, forward: impl Fn(&Tensor) -> Tensor) {
    let input = Checkpoint::load_safetensors(dir.join("input.safetensors")).unwrap();
    let logits = forward(input.require("input").unwrap());
    let expected = Checkpoint::load_safetensors(dir.join("logits.safetensors")).unwrap();
    let diff = logits
        .max_abs_diff(expected.require("logits").unwrap())
        .unwrap();
    assert!(diff <= 1e-4, "{}: {diff:e}", dir.display());
}

#[test]
fn converted_checkpoints_give_timm_logits() {
    for name in ["p8_i32_d2", "p16_i64_d4", "p8_i64_d6"] {
        let dir = fixtures().join("deit").join(name);
        let (_scratch, out) = scratch(&format!("{name}.safetensors"));
        let report = convert(
            &dir.join("checkpoint.pth"),
            &out,
            &ConvertOptions::default(),
        )
        .unwrap();
        assert_eq!(
            report.unknown_globals,
            vec!["argparse.Namespace".to_string()]
        );
        let config = DeiTConfig::from_file(dir.join("config.json")).unwrap();
        let model = DeiT::load(&config, Checkpoint::load_safetensors(&out).unwrap()).unwrap();
        assert_reference_logits(&dir, |x| model.forward(&Eager, x).unwrap());
    }
}

#[test]
fn strict_refuses_unknown_globals_and_nothing_ever_runs() {
    let marker = Path::new("/tmp/idlevit_pwned");
    let _ = std::fs::remove_file(marker);
    for (file, global) in [
        ("malicious_os_system.pth", "posix.system"),
        ("malicious_eval.pth", "__builtin__.eval"),
        ("malicious_popen.pth", "commands.Popen"),
    ] {
        let input = fixtures().join("pth").join(file);
        let (_scratch, out) = scratch(file);
        let report = convert(&input, &out, &ConvertOptions::default()).unwrap();
        assert!(
            report.unknown_globals.contains(&global.to_string()),
            "{file}: {report:?}"
        );
        assert!(!Checkpoint::load_safetensors(&out).unwrap().is_empty());
        let strict = ConvertOptions {
            strict: true,
            ..ConvertOptions::default()
        };
        let err = format!("{:#}", convert(&input, &out, &strict).unwrap_err());
        assert!(err.contains(global), "{file}: {err}");
    }
    assert!(!marker.exists(), "a pickle executed code");
}

#[test]
fn the_binary_reports_errors_and_exits_non_zero() {
    let bin = env!("CARGO_BIN_EXE_xtask");
    let (_scratch, out) = scratch("cli.safetensors");
    let run = |args: &[&str]| Command::new(bin).args(args).output().unwrap();
    let ok = run(&[
        "convert",
        fixtures()
            .join("pth/nested_state_dict.pth")
            .to_str()
            .unwrap(),
        out.to_str().unwrap(),
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("wrote 32 tensors"));
    for (file, needle) in [
        ("no_weights.pth", "no float tensors"),
        ("legacy.pth", "legacy"),
    ] {
        let bad = run(&[
            "convert",
            fixtures().join("pth").join(file).to_str().unwrap(),
            out.to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&bad.stderr);
        assert!(
            !bad.status.success() && stderr.contains(needle) && !stderr.contains("panicked"),
            "{stderr}"
        );
    }
    let strict = run(&[
        "convert",
        "--strict",
        fixtures()
            .join("pth/malicious_os_system.pth")
            .to_str()
            .unwrap(),
        out.to_str().unwrap(),
    ]);
    assert!(!strict.status.success());
    assert!(String::from_utf8_lossy(&strict.stderr).contains("posix.system"));
    let keyed = run(&[
        "convert",
        "--key",
        "optimizer",
        fixtures()
            .join("deit/p8_i32_d2/checkpoint.pth")
            .to_str()
            .unwrap(),
        out.to_str().unwrap(),
    ]);
    assert!(
        keyed.status.success(),
        "{}",
        String::from_utf8_lossy(&keyed.stderr)
    );
}

/// The LV-ViT release's checkpoint layout (`state_dict` nesting, `module.` prefixes, integer
/// batch-norm counters) converts through the binary's `--family lvvit` to weights that give
/// the reference's logits; without the adapter the names do not fit.
#[test]
fn lvvit_release_checkpoints_convert_with_the_family_adapter() {
    let dir = fixtures().join("lvvit");
    let input = dir.join("checkpoint.pth.tar");
    let (_scratch, out) = scratch("lvvit.safetensors");
    let config =
        LvVitConfig::from_json(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let plain = convert(&input, &out, &ConvertOptions::default()).unwrap();
    assert_eq!(plain.skipped.len(), 3, "{:?}", plain.skipped);
    assert!(
        plain
            .skipped
            .iter()
            .all(|n| n.ends_with("num_batches_tracked"))
    );
    let err = LvVit::load(&config, Checkpoint::load_safetensors(&out).unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("module.patch_embed"), "{err}");

    let status = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["convert", "--family", "lvvit"])
        .arg(&input)
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let model = LvVit::load(&config, Checkpoint::load_safetensors(&out).unwrap()).unwrap();
    let input = Checkpoint::load_safetensors(dir.join("input.safetensors")).unwrap();
    let logits = model
        .forward(&Eager, input.require("input").unwrap())
        .unwrap();
    let expected = Checkpoint::load_safetensors(dir.join("logits.safetensors")).unwrap();
    let diff = logits
        .max_abs_diff(expected.require("logits").unwrap())
        .unwrap();
    assert!(diff <= 1e-4, "{diff:e}");
}
