//! End-to-end tests on hand-built checkpoints.

use half::f16;
use proptest::prelude::*;

use super::testutil::{Pickle, checkpoint, f32_bytes, zip_entries};
use super::*;

fn options(strict: bool, key: Option<&str>) -> PthOptions {
    PthOptions {
        strict,
        key: key.map(str::to_owned),
    }
}

fn lenient() -> PthOptions {
    PthOptions::default()
}

/// `{"model": {...}, "epoch": 3, "args": Namespace(lr=1)}` over two storages: a 2x3 f32 matrix
/// stored transposed, and f16 values read with stride 2 from offset 1.
fn training_checkpoint() -> Vec<u8> {
    let pickle = Pickle::proto(2)
        .raw(b"}q\x00(")
        .str("model")
        .raw(b"}q\x01(")
        .str("w")
        .tensor("FloatStorage", "0", 6, 0, &[2, 3], &[1, 2])
        .raw(b"q\x02")
        .str("tied")
        .raw(b"h\x02")
        .str("blocks")
        .raw(b"}(")
        .str("0")
        .raw(b"}(")
        .str("b")
        .tensor("HalfStorage", "1", 5, 1, &[2], &[2])
        .raw(b"u")
        .raw(b"u")
        .str("n")
        .tensor("LongStorage", "2", 1, 0, &[], &[])
        .str("step")
        .int(10)
        .raw(b"u")
        .str("epoch")
        .int(3)
        .str("args")
        .global("argparse", "Namespace")
        .raw(b")\x81}")
        .str("lr")
        .int(1)
        .raw(b"sbu")
        .stop();
    let halves: Vec<u8> = [0.0f32, 1.5, 0.0, -2.25, 0.0]
        .iter()
        .flat_map(|&v| f16::from_f32(v).to_le_bytes())
        .collect();
    checkpoint(
        &pickle,
        &[
            ("0", &f32_bytes([1., 4., 2., 5., 3., 6.])),
            ("1", &halves),
            ("2", &7i64.to_le_bytes()),
        ],
    )
}

fn summary(weights: &PthWeights) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    weights
        .tensors
        .iter()
        .map(|(name, t)| (name.clone(), t.shape().to_vec(), t.to_vec()))
        .collect()
}

#[test]
fn reads_a_training_checkpoint() {
    let weights = read_pth_bytes(&training_checkpoint(), &lenient()).unwrap();
    let w = vec![1., 2., 3., 4., 5., 6.];
    assert_eq!(
        summary(&weights),
        [
            ("w".to_owned(), vec![2, 3], w.clone()),
            ("tied".to_owned(), vec![2, 3], w),
            ("blocks.0.b".to_owned(), vec![2], vec![1.5, -2.25]),
        ]
    );
    assert_eq!(weights.skipped, ["n", "step"]);
    assert_eq!(weights.unknown_globals, ["argparse.Namespace"]);
}

#[test]
fn strict_mode_refuses_unknown_globals_anywhere() {
    let err = read_pth_bytes(&training_checkpoint(), &options(true, None)).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("refusing unknown pickle global `argparse.Namespace`")
    );
}

#[test]
fn key_selects_an_entry() {
    let bytes = training_checkpoint();
    let err = read_pth_bytes(&bytes, &options(false, Some("epoch"))).unwrap_err();
    assert_eq!(
        err.to_string(),
        "expected entry `epoch` to be a dict, found int 3"
    );
    let err = read_pth_bytes(&bytes, &options(false, Some("ema"))).unwrap_err();
    assert_eq!(
        err.to_string(),
        "checkpoint has no top-level entry `ema`; its keys are: model, epoch, args"
    );
}

#[test]
fn big_endian_storages_are_swapped() {
    let pickle = Pickle::proto(2)
        .raw(b"}")
        .str("x")
        .tensor("FloatStorage", "0", 2, 0, &[2], &[1])
        .raw(b"s")
        .stop();
    let data: Vec<u8> = [1.0f32, -3.5]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect();
    let zip = zip_entries(&[
        ("a/data.pkl", &pickle),
        ("a/byteorder", b"big"),
        ("a/data/0", &data),
    ]);
    let weights = read_pth_bytes(&zip, &lenient()).unwrap();
    assert_eq!(
        summary(&weights),
        [("x".to_owned(), vec![2], vec![1.0, -3.5])]
    );
}

fn one_tensor(
    class: &str,
    numel: usize,
    offset: usize,
    shape: &[usize],
    stride: &[usize],
) -> Vec<u8> {
    Pickle::proto(2)
        .raw(b"}")
        .str("t")
        .tensor(class, "0", numel, offset, shape, stride)
        .raw(b"s")
        .stop()
}

#[test]
fn storages_must_hold_what_they_declare() {
    let data = f32_bytes([1., 2., 3.]);
    let declared_too_many = checkpoint(
        &one_tensor("FloatStorage", 4, 0, &[4], &[1]),
        &[("0", &data)],
    );
    let err = read_pth_bytes(&declared_too_many, &lenient()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "storage `0` declares 16 bytes, but its archive entry holds 12"
    );
    // A numel whose byte size overflows is refused without allocating anything.
    let huge = checkpoint(
        &one_tensor("DoubleStorage", usize::MAX / 4, 0, &[1], &[1]),
        &[("0", &data)],
    );
    let err = read_pth_bytes(&huge, &lenient()).unwrap_err();
    assert!(err.to_string().contains("storage size overflows"), "{err}");
    let big = checkpoint(
        &one_tensor("DoubleStorage", 1 << 40, 0, &[1], &[1]),
        &[("0", &data)],
    );
    assert!(matches!(
        read_pth_bytes(&big, &lenient()),
        Err(PthError::StorageTooSmall { .. })
    ));
    let missing = checkpoint(&one_tensor("FloatStorage", 3, 0, &[3], &[1]), &[]);
    let err = read_pth_bytes(&missing, &lenient()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "storage `0`: the archive has no entry `archive/data/0`"
    );
}

#[test]
fn views_must_fit_in_their_storage() {
    let data = f32_bytes([1., 2., 3., 4.]);
    let past_end = checkpoint(
        &one_tensor("FloatStorage", 4, 1, &[2, 2], &[2, 1]),
        &[("0", &data)],
    );
    let err = read_pth_bytes(&past_end, &lenient()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "t: view with offset 1, shape [2, 2], stride [2, 1] reaches element 4, but storage `0` \
         holds 4 elements"
    );
    let overflow = checkpoint(
        &one_tensor("FloatStorage", 4, 0, &[5, 2], &[1 << 62, 1]),
        &[("0", &data)],
    );
    let err = read_pth_bytes(&overflow, &lenient()).unwrap_err();
    assert!(
        err.to_string()
            .contains("highest element index of the view overflows"),
        "{err}"
    );
    let broadcast = checkpoint(
        &one_tensor("FloatStorage", 4, 3, &[3, 2], &[0, 0]),
        &[("0", &data)],
    );
    let weights = read_pth_bytes(&broadcast, &lenient()).unwrap();
    assert_eq!(
        summary(&weights),
        [("t".to_owned(), vec![3, 2], vec![4.0; 6])]
    );
    // Broadcasting one float to 4 GiB is refused before anything is allocated.
    let bomb = checkpoint(
        &one_tensor("FloatStorage", 1, 0, &[1 << 20, 1 << 10], &[0, 0]),
        &[("0", &data)],
    );
    let err = read_pth_bytes(&bomb, &lenient()).unwrap_err();
    assert!(
        err.to_string().contains("overlapping or broadcast views"),
        "{err}"
    );
}

/// An empty view whose other axes multiply past `usize` once overflowed the tensor crate's
/// stride computation.
#[test]
fn empty_views_with_huge_axes_are_errors() {
    let data = f32_bytes([1., 2., 3., 4.]);
    let huge = checkpoint(
        &one_tensor("FloatStorage", 4, 0, &[0, 1 << 32, 1 << 32], &[1, 1, 1]),
        &[("0", &data)],
    );
    let err = read_pth_bytes(&huge, &lenient()).unwrap_err();
    assert!(matches!(err, PthError::Tensor { .. }), "{err}");
    assert!(err.to_string().starts_with("t: "), "{err}");
    let empty = checkpoint(
        &one_tensor("FloatStorage", 4, 0, &[0, 1 << 20], &[1, 1]),
        &[("0", &data)],
    );
    let weights = read_pth_bytes(&empty, &lenient()).unwrap();
    assert_eq!(
        summary(&weights),
        [("t".to_owned(), vec![0, 1 << 20], vec![])]
    );
}

#[test]
fn checkpoints_without_weights_say_what_they_hold() {
    let pickle = Pickle::proto(2)
        .raw(b"}(")
        .str("epoch")
        .int(1)
        .str("lr")
        .int(2)
        .raw(b"u")
        .stop();
    let err = read_pth_bytes(&checkpoint(&pickle, &[]), &lenient()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no float tensors found in the top-level dict; the top-level keys are: epoch, lr"
    );
    let ints = Pickle::proto(2)
        .raw(b"}")
        .str("model")
        .raw(b"}")
        .str("i")
        .tensor("IntStorage", "0", 1, 0, &[1], &[1])
        .raw(b"ss")
        .stop();
    let err = read_pth_bytes(&checkpoint(&ints, &[("0", &[0; 4])]), &lenient()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no float tensors found in `model`; the top-level keys are: model"
    );
}

#[test]
fn unknown_objects_in_the_weights_are_skipped_and_reported() {
    let pickle = Pickle::proto(2)
        .raw(b"}")
        .str("model")
        .raw(b"}(")
        .str("w")
        .global("posix", "system")
        .str("touch /tmp/x")
        .raw(b"\x85R")
        .str("b")
        .tensor("FloatStorage", "0", 1, 0, &[1], &[1])
        .raw(b"us")
        .stop();
    let bytes = checkpoint(&pickle, &[("0", &f32_bytes([0.5]))]);
    let weights = read_pth_bytes(&bytes, &lenient()).unwrap();
    assert_eq!(summary(&weights), [("b".to_owned(), vec![1], vec![0.5])]);
    assert_eq!(weights.skipped, ["w"]);
    assert_eq!(weights.unknown_globals, ["posix.system"]);
    let err = read_pth_bytes(&bytes, &options(true, None)).unwrap_err();
    assert!(err.to_string().contains("`posix.system`"), "{err}");
}

/// `os.system`, `builtins.eval` and `subprocess.Popen` in every spelling a pickle may use
/// (protocol 2 writes `posix`, `__builtin__` and `commands`; protocols 3 and up the Python 3
/// names, by `GLOBAL` or by `STACK_GLOBAL`), called beside the weights and in place of a weight:
/// nothing runs, the payload yields no tensor, and strict mode refuses it by name.
#[test]
fn hostile_globals_in_every_spelling_run_nothing_and_yield_no_tensor() {
    let marker = std::env::temp_dir().join(format!("idlevit_pwned_{}", std::process::id()));
    let command = format!("touch {}", marker.display());
    let globals = [
        ("os", "system"),
        ("posix", "system"),
        ("nt", "system"),
        ("builtins", "eval"),
        ("__builtin__", "eval"),
        ("builtins", "exec"),
        ("subprocess", "Popen"),
        ("commands", "Popen"),
    ];
    for (module, name) in globals {
        let global = format!("{module}.{name}");
        // `module.name(command)` by GLOBAL (protocol 2) or STACK_GLOBAL (protocol 4).
        let call = |p: Pickle, stack: bool| {
            let p = if stack {
                p.str(module).str(name).raw(&[0x93])
            } else {
                p.global(module, name)
            };
            p.str(&command).raw(b"\x85R")
        };
        for stack in [false, true] {
            let protocol = if stack { 4 } else { 2 };
            let pickle = call(
                call(
                    Pickle::proto(protocol)
                        .raw(b"}(")
                        .str("model")
                        .raw(b"}(")
                        .str("w"),
                    stack,
                )
                .str("b")
                .tensor("FloatStorage", "0", 1, 0, &[1], &[1])
                .raw(b"u")
                .str("payload"),
                stack,
            )
            .raw(b"u")
            .stop();
            let bytes = checkpoint(&pickle, &[("0", &f32_bytes([0.5]))]);
            let weights = read_pth_bytes(&bytes, &lenient()).unwrap();
            assert_eq!(summary(&weights), [("b".to_owned(), vec![1], vec![0.5])]);
            assert_eq!(weights.skipped, ["w"], "{global}");
            assert_eq!(weights.unknown_globals, [global.as_str()]);
            let err = read_pth_bytes(&bytes, &options(false, Some("payload"))).unwrap_err();
            assert!(
                err.to_string()
                    .contains(&format!("object of unknown global `{global}`")),
                "{err}"
            );
            let err = read_pth_bytes(&bytes, &options(true, None)).unwrap_err();
            assert!(
                matches!(&err, PthError::UnknownGlobal { global: g, .. } if *g == global),
                "{err}"
            );
        }
    }
    assert!(!marker.exists(), "a payload ran");
}

#[test]
fn every_truncation_of_a_checkpoint_pickle_is_an_error() {
    let bytes = training_checkpoint();
    let pickle = Archive::open(std::io::Cursor::new(&bytes[..]), bytes.len() as u64)
        .and_then(|mut a| a.pickle())
        .unwrap();
    for len in 0..pickle.len() {
        let cut = checkpoint(&pickle[..len], &[]);
        assert!(
            read_pth_bytes(&cut, &lenient()).is_err(),
            "prefix of length {len}"
        );
    }
    for len in 0..bytes.len() {
        assert!(
            read_pth_bytes(&bytes[..len], &lenient()).is_err(),
            "archive prefix of length {len}"
        );
    }
}

use archive::Archive;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn corrupted_pickles_never_panic(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let bytes = training_checkpoint();
        let mut pickle = Archive::open(std::io::Cursor::new(&bytes[..]), bytes.len() as u64)
            .and_then(|mut a| a.pickle())
            .unwrap();
        for (at, byte) in flips {
            let i = at.index(pickle.len());
            pickle[i] = byte;
        }
        pickle.truncate(cut.index(pickle.len() + 1));
        let halves = [0u8; 10];
        let storages: [(&str, &[u8]); 3] = [("0", &f32_bytes([0.; 6])), ("1", &halves), ("2", &[0; 8])];
        let zip = checkpoint(&pickle, &storages);
        let _ = read_pth_bytes(&zip, &lenient());
        let _ = read_pth_bytes(&zip, &options(true, Some("model")));
    }

    #[test]
    fn corrupted_archives_never_panic(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut bytes = training_checkpoint();
        for (at, byte) in flips {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        let _ = read_pth_bytes(&bytes, &lenient());
    }
}
