//! The `.pth` reader against checkpoints written by PyTorch (`fixtures/pth/README.md`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use idlevit_checkpoint::pth::{PthError, PthOptions, PthWeights, read_pth, read_pth_bytes};
use safetensors::{Dtype, SafeTensors};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures");

/// Where the malicious fixtures' payloads would leave their mark, were they ever run.
const PWNED: &str = "/tmp/idlevit_pwned";

const DEIT: [&str; 3] = ["p8_i32_d2", "p16_i64_d4", "p8_i64_d6"];

fn fixture(relative: &str) -> PathBuf {
    Path::new(FIXTURES).join(relative)
}

fn lenient() -> PthOptions {
    PthOptions::default()
}

fn strict() -> PthOptions {
    PthOptions {
        strict: true,
        key: None,
    }
}

fn with_key(key: &str) -> PthOptions {
    PthOptions {
        strict: false,
        key: Some(key.to_owned()),
    }
}

/// Reads a fixture; an error is returned without the file name every `read_pth` error leads
/// with (checked once, by `errors_name_the_file_once`).
fn read(relative: &str, options: &PthOptions) -> Result<PthWeights, PthError> {
    read_pth(&fixture(relative), options).map_err(|err| match err {
        PthError::File { error, .. } => *error,
        other => other,
    })
}

/// Shape and values of each tensor of a safetensors file.
type Expected = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

fn expected(relative: &str) -> Expected {
    let bytes = std::fs::read(fixture(relative)).expect("read safetensors fixture");
    let file = SafeTensors::deserialize(&bytes).expect("parse safetensors fixture");
    file.iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), Dtype::F32, "{name}");
            let values = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (name.to_owned(), (view.shape().to_vec(), values))
        })
        .collect()
}

/// The entries of `expected` whose names start with `prefix`, with the prefix removed.
fn under(expected: &Expected, prefix: &str) -> Expected {
    expected
        .iter()
        .filter_map(|(name, v)| Some((name.strip_prefix(prefix)?.to_owned(), v.clone())))
        .collect()
}

/// The state dict the `fixtures/pth` files are built from.
fn state_dict() -> Expected {
    expected("pth/noncontig_expected.safetensors")
        .into_iter()
        .filter(|(name, _)| !name.starts_with("extra."))
        .collect()
}

/// Asserts that `weights` holds exactly the tensors of `expected`, bit for bit.
fn assert_weights(weights: &PthWeights, expected: &Expected) {
    let mut seen = Vec::new();
    for (name, tensor) in &weights.tensors {
        let Some((shape, values)) = expected.get(name) else {
            panic!("unexpected tensor {name}");
        };
        assert_eq!(tensor.shape(), shape.as_slice(), "{name}: shape");
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&tensor.to_vec()), bits(values), "{name}: values");
        seen.push(name.as_str());
    }
    let missing: Vec<&String> = expected
        .keys()
        .filter(|k| !seen.contains(&k.as_str()))
        .collect();
    assert!(missing.is_empty(), "missing tensors: {missing:?}");
    assert_eq!(seen.len(), expected.len(), "duplicate names");
}

#[test]
fn deit_checkpoints_match_their_safetensors() {
    for name in DEIT {
        let weights = read(&format!("deit/{name}/checkpoint.pth"), &lenient()).unwrap();
        assert_weights(
            &weights,
            &expected(&format!("deit/{name}/weights.safetensors")),
        );
        assert!(weights.skipped.is_empty(), "{name}: {:?}", weights.skipped);
        assert_eq!(weights.unknown_globals, ["argparse.Namespace"], "{name}");
    }
}

#[test]
fn deit_checkpoints_are_refused_in_strict_mode_for_their_namespace() {
    let err = read("deit/p8_i32_d2/checkpoint.pth", &strict()).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("refusing unknown pickle global `argparse.Namespace`"),
        "{err}"
    );
}

#[test]
fn deit_optimizer_state_flattens_integer_keys() {
    let weights = read("deit/p8_i32_d2/checkpoint.pth", &with_key("optimizer")).unwrap();
    let params = expected("deit/p8_i32_d2/weights.safetensors").len();
    assert_eq!(weights.tensors.len(), 3 * params);
    let names: Vec<&str> = weights.tensors.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names[..3],
        ["state.0.step", "state.0.exp_avg", "state.0.exp_avg_sq"]
    );
    let last = format!("state.{}.exp_avg_sq", params - 1);
    assert_eq!(names.last(), Some(&last.as_str()));
    let (_, step) = &weights.tensors[0];
    assert_eq!(step.shape(), &[] as &[usize]);
    assert_eq!(step.to_vec(), [1.0]);
    assert_eq!(weights.skipped, ["param_groups"]);
}

#[test]
fn reduced_precision_is_converted_exactly() {
    for kind in ["f16", "bf16"] {
        let weights = read(&format!("pth/{kind}.pth"), &lenient()).unwrap();
        assert_weights(
            &weights,
            &expected(&format!("pth/{kind}_expected.safetensors")),
        );
        assert!(weights.unknown_globals.is_empty());
    }
}

#[test]
fn strided_offset_and_shared_views_are_honoured() {
    let all = expected("pth/noncontig_expected.safetensors");
    let model = read("pth/noncontig.pth", &lenient()).unwrap();
    assert_weights(&model, &state_dict());
    let extra = read("pth/noncontig.pth", &with_key("extra")).unwrap();
    assert_weights(&extra, &under(&all, "extra."));
    assert!(strict().strict && read("pth/noncontig.pth", &strict()).is_ok());
}

#[test]
fn plain_and_nested_state_dicts_are_found() {
    let plain = read("pth/plain_state_dict.pth", &lenient()).unwrap();
    assert_weights(&plain, &state_dict());
    let nested = read("pth/nested_state_dict.pth", &lenient()).unwrap();
    assert_weights(&nested, &state_dict());
    assert!(nested.skipped.is_empty());
}

#[test]
fn a_checkpoint_without_weights_names_its_keys() {
    let err = read("pth/no_weights.pth", &lenient()).unwrap_err();
    assert!(matches!(err, PthError::NoWeights { .. }));
    assert_eq!(
        err.to_string(),
        "no float tensors found in the top-level dict; the top-level keys are: args, epoch"
    );
}

#[test]
fn the_legacy_format_is_refused_clearly() {
    let err = read("pth/legacy.pth", &lenient()).unwrap_err();
    assert!(matches!(err, PthError::Legacy));
    assert_eq!(
        err.to_string(),
        "legacy (pre-1.6) torch.save format is not supported; re-save with torch >= 1.6"
    );
}

/// Loads a malicious fixture every way, checking that its payload never runs, that the
/// weights of `model` load, and that strict mode names the global.
fn check_malicious(file: &str, global: &str) {
    let _ = std::fs::remove_file(PWNED);
    let path = format!("pth/{file}");
    let weights = read(&path, &lenient()).unwrap();
    assert_weights(&weights, &state_dict());
    assert_eq!(weights.unknown_globals, [global]);
    let err = read(&path, &strict()).unwrap_err();
    assert_eq!(
        err.to_string().split(" (pickle offset").next(),
        Some(format!("refusing unknown pickle global `{global}`").as_str())
    );
    let err = read(&path, &with_key("payload")).unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("object of unknown global `{global}`")),
        "{err}"
    );
    let bytes = std::fs::read(fixture(&path)).unwrap();
    assert!(read_pth_bytes(&bytes, &lenient()).is_ok());
    assert!(!Path::new(PWNED).exists(), "{file}: the payload ran");
}

#[test]
fn os_system_payloads_never_run() {
    check_malicious("malicious_os_system.pth", "posix.system");
}

#[test]
fn eval_payloads_never_run() {
    check_malicious("malicious_eval.pth", "__builtin__.eval");
}

#[test]
fn popen_payloads_never_run() {
    check_malicious("malicious_popen.pth", "commands.Popen");
}

#[test]
fn a_payload_in_place_of_a_tensor_is_dropped() {
    let _ = std::fs::remove_file(PWNED);
    let weights = read("pth/malicious_tensor.pth", &lenient()).unwrap();
    let sd = state_dict();
    let head_bias: Expected = sd.into_iter().filter(|(n, _)| n == "head.bias").collect();
    assert_weights(&weights, &head_bias);
    assert_eq!(weights.skipped, ["w"]);
    assert_eq!(weights.unknown_globals, ["posix.system"]);
    let err = read("pth/malicious_tensor.pth", &strict()).unwrap_err();
    assert!(err.to_string().contains("`posix.system`"), "{err}");
    assert!(!Path::new(PWNED).exists(), "the payload ran");
}

#[test]
fn a_missing_file_is_an_io_error_naming_it() {
    let err = read("pth/does_not_exist.pth", &lenient()).unwrap_err();
    assert!(matches!(err, PthError::Io { .. }));
    assert!(err.to_string().contains("does_not_exist.pth"), "{err}");
}

/// torch names the archive's folder after the file's stem; at 21 characters its archives were
/// once refused as damaged (`tests/fixtures/make_fixtures.py` wrote these).
#[test]
fn files_whose_stem_has_21_characters_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let weights = read_pth(&dir.join("checkpoint_epoch_0010.pth"), &lenient()).unwrap();
    let summary: Vec<(&str, Vec<usize>, Vec<f32>)> = weights
        .tensors
        .iter()
        .map(|(n, t)| (n.as_str(), t.shape().to_vec(), t.to_vec()))
        .collect();
    assert_eq!(summary, [("w", vec![2, 2], vec![0.0; 4])]);

    let weights = read_pth(&dir.join("a_tiny_vit_state_dict.pth"), &strict()).unwrap();
    let summary: Vec<(&str, Vec<usize>, Vec<f32>)> = weights
        .tensors
        .iter()
        .map(|(n, t)| (n.as_str(), t.shape().to_vec(), t.to_vec()))
        .collect();
    assert_eq!(
        summary,
        [
            ("head.weight", vec![3, 2], vec![0., 3., 1., 4., 2., 5.]),
            ("head.bias", vec![2], vec![1.5, -2.0]),
            ("tied.weight", vec![2, 3], vec![0., 1., 2., 3., 4., 5.]),
        ]
    );
    assert!(weights.skipped.is_empty(), "{:?}", weights.skipped);
}

#[test]
fn errors_name_the_file_once() {
    let path = fixture("pth/no_weights.pth");
    let err = read_pth(&path, &lenient()).unwrap_err();
    assert!(matches!(err.inner(), PthError::NoWeights { .. }), "{err}");
    let message = err.to_string();
    let name = path.display().to_string();
    assert!(
        message.starts_with(&format!("{name}: no float tensors")),
        "{message}"
    );
    assert_eq!(message.matches(&name).count(), 1, "{message}");
    let missing = fixture("pth/does_not_exist.pth");
    let message = read_pth(&missing, &lenient()).unwrap_err().to_string();
    assert_eq!(
        message.matches("does_not_exist.pth").count(),
        1,
        "{message}"
    );
}

/// A path that is not a regular file is refused before it is opened: `/dev/zero` would read
/// forever, a FIFO would block the open until a writer came.
#[cfg(unix)]
#[test]
fn devices_and_folders_are_refused_before_reading() {
    let err = read_pth(Path::new("/dev/zero"), &lenient()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot read /dev/zero: it is a character device, not a regular file"
    );
    let err = read_pth(Path::new(FIXTURES), &lenient()).unwrap_err();
    assert!(
        err.to_string()
            .ends_with("it is a directory, not a regular file"),
        "{err}"
    );
}
