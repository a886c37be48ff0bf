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
        "checkpoint has no top-level entry `ema`; the top-level keys are: model, epoch, args"
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

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// `{"w": <2x2 f32 tensor>}` over storage `0`.
fn small_state_dict() -> (Vec<u8>, Vec<u8>) {
    let pickle = Pickle::proto(2)
        .raw(b"}")
        .str("w")
        .tensor("FloatStorage", "0", 4, 0, &[2, 2], &[2, 1])
        .raw(b"s")
        .stop();
    (pickle, f32_bytes([1., 2., 3., 4.]))
}

/// torch names the archive's folder after the file's stem, so every stem length shifts every
/// header; at 21 characters the first central directory header is exactly as long as the zip64
/// records before the end record, which once made such files look damaged.
#[test]
fn torch_archives_open_whatever_the_folder_name_length() {
    let (pickle, data) = small_state_dict();
    for len in 1..=80 {
        for stem in [
            "c".repeat(len),
            "checkpoint_epoch_0010_".repeat(4)[..len].to_owned(),
        ] {
            let bytes = testutil::torch_checkpoint(&stem, &pickle, &[("0", &data)]);
            let weights = read_pth_bytes(&bytes, &lenient())
                .unwrap_or_else(|err| panic!("stem of {len} characters: {err}"));
            assert_eq!(
                summary(&weights),
                [("w".to_owned(), vec![2, 2], vec![1., 2., 3., 4.])],
                "stem of {len} characters"
            );
        }
    }
}

/// Whichever entry comes first and whatever precedes the archive (Python's zipfile reads an
/// archive appended to other data), the central directory is found where its records say.
#[test]
fn central_directory_is_found_where_its_records_say() {
    let (pickle, data) = small_state_dict();
    for len in 1..=80 {
        let folder = "m".repeat(len);
        let names = [
            format!("{folder}/byteorder"),
            format!("{folder}/data/0"),
            format!("{folder}/data.pkl"),
        ];
        let entries: [(&str, &[u8]); 3] = [
            (&names[0], b"little"),
            (&names[1], &data),
            (&names[2], &pickle),
        ];
        let zip = testutil::torch_zip(&entries);
        for junk in [0, 1, 20, 76, 1000] {
            let mut bytes = vec![b'j'; junk];
            bytes.extend_from_slice(&zip);
            let weights = read_pth_bytes(&bytes, &lenient())
                .unwrap_or_else(|err| panic!("folder of {len}, {junk} bytes before: {err}"));
            assert_eq!(weights.tensors.len(), 1);
        }
    }
}

/// `torch_zip` writes exactly what torch writes: rebuilt from its entries, a file saved by
/// torch comes out byte for byte the same (so the tests above cover torch's real layout).
#[test]
fn torch_zip_matches_files_written_by_torch() {
    use std::io::Read as _;
    for file in ["checkpoint_epoch_0010.pth", "a_tiny_vit_state_dict.pth"] {
        let bytes = std::fs::read(format!("{FIXTURES}/{file}")).unwrap();
        let config = zip::read::Config {
            archive_offset: zip::read::ArchiveOffset::Known(0),
        };
        let mut zip = zip::ZipArchive::with_config(config, std::io::Cursor::new(&bytes)).unwrap();
        let mut entries = Vec::new();
        for i in 0..zip.len() {
            let mut entry = zip.by_index(i).unwrap();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            entries.push((entry.name().unwrap().into_owned(), data));
        }
        let entries: Vec<(&str, &[u8])> =
            entries.iter().map(|(n, d)| (n.as_str(), &d[..])).collect();
        assert!(testutil::torch_zip(&entries) == bytes, "{file}");
    }
}

/// Budget used per byte of pickle by checkpoints torch wrote: everything the reader builds,
/// charged at its real size, stays within `HEAP_BYTES_PER_PICKLE_BYTE`. (These pickles are
/// small, so fixed costs weigh most; torch pickles of megabytes use 17 to 28 bytes a byte.)
#[test]
fn real_checkpoints_use_a_fraction_of_the_budget() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures");
    for (file, key) in [
        ("deit/p8_i32_d2/checkpoint.pth", None),
        ("deit/p8_i64_d6/checkpoint.pth", None),
        ("deit/p8_i64_d6/checkpoint.pth", Some("optimizer")),
        ("pth/noncontig.pth", None),
        ("pth/plain_state_dict.pth", None),
    ] {
        let bytes = std::fs::read(format!("{root}/{file}")).unwrap();
        let mut archive =
            Archive::open(std::io::Cursor::new(&bytes[..]), bytes.len() as u64).unwrap();
        let pickle = archive.pickle().unwrap();
        let unpickled = pickle::unpickle(&pickle, false).unwrap();
        let selection = extract::select(&unpickled.heap, unpickled.root, key).unwrap();
        rebuild::materialize(&mut archive, &unpickled.heap, selection.tensors).unwrap();
        let per_byte = unpickled.heap.budget().used() as f64 / pickle.len() as f64;
        eprintln!(
            "{file} {key:?}: {} pickle bytes, {per_byte:.1} budget bytes each",
            pickle.len()
        );
        assert!(
            per_byte < HEAP_BYTES_PER_PICKLE_BYTE as f64,
            "{file}: {per_byte:.1} bytes per pickle byte"
        );
    }
}

/// A tensor named many times is built once, but each name counts against the bound on the
/// values returned: whoever receives the weights may copy each.
#[test]
fn a_tensor_named_many_times_counts_once_per_name() {
    let numel = 1 << 18; // 1 MiB of f32
    let data = f32_bytes(std::iter::repeat_n(0.5, numel));
    let named = |names: usize| {
        let mut p = Pickle::proto(2)
            .raw(b"}")
            .str("t0")
            .tensor("FloatStorage", "0", numel, 0, &[numel], &[1])
            .raw(b"q\x01s(");
        for i in 1..names {
            p = p.str(&format!("t{i}")).raw(b"h\x01");
        }
        checkpoint(&p.raw(b"u").stop(), &[("0", &data)])
    };
    // 1 MiB of storage may give 16 MiB of values plus 64 MiB: 80 names, not 81.
    let weights = read_pth_bytes(&named(80), &lenient()).unwrap();
    assert_eq!(weights.tensors.len(), 80);
    let err = read_pth_bytes(&named(81), &lenient()).unwrap_err();
    assert!(
        err.to_string().contains("f32 bytes of the weights"),
        "{err}"
    );
}

/// Lists of keys in errors are bounded, and an empty one says so.
#[test]
fn key_listings_are_bounded() {
    let empty = Pickle::proto(2).raw(b"}").stop();
    let err = read_pth_bytes(&checkpoint(&empty, &[]), &lenient()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no float tensors found in the top-level dict; the checkpoint has no entries"
    );
    let mut p = Pickle::proto(2).raw(b"}(");
    for i in 0..10_000 {
        p = p.str(&format!("{i}{}", "k".repeat(200))).raw(b"N");
    }
    let many = checkpoint(&p.raw(b"u").stop(), &[]);
    let err = read_pth_bytes(&many, &options(false, Some("ema"))).unwrap_err();
    let message = err.to_string();
    assert!(
        message.ends_with(" and 9980 more"),
        "{}",
        &message[message.len() - 40..]
    );
    assert!(
        message.len() < 20 * (crate::MAX_ECHOED_CHARS + 10) + 200,
        "{}",
        message.len()
    );
    assert!(message.contains("kkk…, 1kkk"), "{message}");
}

/// Names and globals echoed in errors are clipped, whatever the pickle makes them.
#[test]
fn echoed_names_are_clipped() {
    let long = "m".repeat(100_000);
    let pickle = Pickle::proto(2).global(&long, "x").raw(b")R.").bytes;
    let err = read_pth_bytes(&checkpoint(&pickle, &[]), &options(true, None)).unwrap_err();
    assert!(err.to_string().len() < 300, "{}", err.to_string().len());
    let key = "k".repeat(100_000);
    let pickle = Pickle::proto(2)
        .raw(b"}")
        .str("w")
        .tensor("FloatStorage", &key, 1, 0, &[1], &[1])
        .raw(b"s")
        .stop();
    let err = read_pth_bytes(&checkpoint(&pickle, &[]), &lenient()).unwrap_err();
    assert!(err.to_string().len() < 400, "{}", err.to_string().len());
}
