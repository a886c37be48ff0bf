//! The CLI's weight loading on the hostile `.pth` fixtures (`fixtures/pth/malicious_*.pth`,
//! payloads calling `os.system`, `builtins.eval` and `subprocess.Popen`): nothing runs, the
//! model's weights beside the payload load and run, a payload in place of a weight yields no
//! tensor, and strict reading refuses the global by name.

use std::path::{Path, PathBuf};

use idlevit_cli::weights::{load_model, read_checkpoint};
use idlevit_nn::{Backend, Eager};
use idlevit_tensor::Tensor;
use idlevit_zoo::DeiTConfig;

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
        let model = load_model(&config, Some(&pth(file))).unwrap();
        let images = Eager.constant(Tensor::zeros(&[1, 3, 16, 16]).unwrap());
        let logits = model.forward(&Eager, &images).unwrap();
        assert_eq!(Eager.shape(&logits), &[1, 3]);
        let err = format!("{:#}", read_checkpoint(&pth(file), true).unwrap_err());
        assert!(err.contains(&format!("`{global}`")), "{file}: {err}");
    }
    let weights = read_checkpoint(&pth("malicious_tensor.pth"), false).unwrap();
    let names: Vec<&str> = weights.iter().map(|(name, _)| name).collect();
    assert_eq!(names, ["head.bias"]);
    let err = format!(
        "{:#}",
        load_model(&config, Some(&pth("malicious_tensor.pth"))).unwrap_err()
    );
    assert!(err.contains("missing"), "{err}");
    assert!(!Path::new(PWNED).exists(), "a payload ran");
}
