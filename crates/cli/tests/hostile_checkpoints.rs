//! The CLI's weight loading on the hostile `.pth` fixtures (`fixtures/pth/malicious_*.pth`,
//! payloads calling `os.system`, `builtins.eval` and `subprocess.Popen`): nothing runs, the
//! model's weights beside the payload load and run, a payload in place of a weight yields no
//! tensor, and strict reading refuses the global by name.

use std::path::{Path, PathBuf};
use std::process::Command;

use idlevit_data::weights::read_checkpoint;
use idlevit_nn::{Backend, Eager};
use idlevit_tensor::Tensor;
use idlevit_train::models::load_model;
use idlevit_zoo::DeiTConfig;

mod common;

/// Where the payloads would leave their mark, were they ever run.
const PWNED: &str = "/tmp/idlevit_pwned";

/// The tiny model the `fixtures/pth` checkpoints hold (`PTH_CONFIG` of `make_fixtures.py`).
const PTH_CONFIG: &str = r#"{"img_size": 16, "patch_size": 8, "embed_dim": 8, "depth": 2,
    "num_heads": 2, "mlp_ratio": 4.0, "num_classes": 3, "qkv_bias": true}"#;

fn pth(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/pth")
        .join(file)
}

#[test]
fn payloads_run_nothing_and_strict_reading_names_them() {
    let config = DeiTConfig::from_json(PTH_CONFIG).unwrap();
    for (file, global) in [
        ("malicious_os_system.pth", "posix.system"),
        ("malicious_eval.pth", "__builtin__.eval"),
        ("malicious_popen.pth", "commands.Popen"),
    ] {
        let model = load_model(&config, Some(&pth(file)), "weights", false).unwrap();
        let images = Eager.constant(Tensor::zeros(&[1, 3, 16, 16]).unwrap());
        let logits = model.forward(&Eager, &images).unwrap();
        assert_eq!(Eager.shape(&logits), &[1, 3]);
        let err = format!(
            "{:#}",
            read_checkpoint(&pth(file), "weights", true).unwrap_err()
        );
        assert!(err.contains(&format!("`{global}`")), "{file}: {err}");
    }
    let weights = read_checkpoint(&pth("malicious_tensor.pth"), "weights", false).unwrap();
    let names: Vec<&str> = weights.iter().map(|(name, _)| name).collect();
    assert_eq!(names, ["head.bias"]);
    let err = format!(
        "{:#}",
        load_model(
            &config,
            Some(&pth("malicious_tensor.pth")),
            "weights",
            false
        )
        .unwrap_err()
    );
    assert!(err.contains("missing"), "{err}");
    assert!(!Path::new(PWNED).exists(), "a payload ran");
}

/// `idlevit bench` on a payload checkpoint: it runs with a warning naming the inert global,
/// and `--strict` refuses the file with an error naming it.
#[test]
fn cli_warns_about_inert_globals_and_strict_refuses_them() {
    let dir = common::scratch("hostile");
    let config = dir.join("config.json");
    std::fs::write(&config, PTH_CONFIG).unwrap();
    let weights = pth("malicious_os_system.pth");
    let run = |strict: bool| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_idlevit"));
        command.args(["bench", "--batch", "1", "--runs", "1", "--warmup", "0"]);
        command
            .arg("--config")
            .arg(&config)
            .arg("--weights")
            .arg(&weights);
        if strict {
            command.arg("--strict");
        }
        command.output().unwrap()
    };
    let lenient = run(false);
    let stderr = String::from_utf8_lossy(&lenient.stderr);
    assert!(lenient.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning") && stderr.contains("posix.system"),
        "{stderr}"
    );
    let strict = run(true);
    let stderr = String::from_utf8_lossy(&strict.stderr);
    assert!(!strict.status.success());
    assert!(
        stderr.starts_with("error: ") && stderr.contains("`posix.system`"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!Path::new(PWNED).exists(), "a payload ran");
}
