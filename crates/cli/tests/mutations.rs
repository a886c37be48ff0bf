//! Random byte mutations of the fixtures (bit flips, boundary values written over length
//! fields, truncations, insertions, deletions and splices with another fixture) through every
//! parser the CLI runs on a file: safetensors weights, `.pth` checkpoints (the archive, and the
//! pickle re-packed into a valid archive), `CFG.json`, images and `--input` tensors. Each must
//! return an error or a valid result; a panic fails the test. The `fuzz/` targets explore the
//! same entry points without a bound on time.

use std::io::{Cursor, Read, Write};
use std::path::PathBuf;
use std::sync::LazyLock;

use idlevit_checkpoint::Checkpoint;
use idlevit_checkpoint::pth::{PthOptions, PthWeights, read_pth_bytes};
use idlevit_data::preprocess::{EvalTransform, MAX_IMAGE_SIDE, decode_image, preprocess};
use idlevit_data::weights::parse_checkpoint;
use idlevit_nn::{Backend, Eager};
use idlevit_zoo::{DeiT, DeiTConfig, MAX_PARAMETERS};
use image::{DynamicImage, ImageFormat};
use proptest::prelude::*;
use proptest::sample::Index;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn fixture(relative: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(relative)).expect("fixture is readable")
}

/// One change to a byte string.
#[derive(Clone, Debug)]
enum Mutation {
    /// Flip one bit.
    Flip(Index, u8),
    /// Overwrite one byte.
    Set(Index, u8),
    /// Overwrite bytes with a little-endian boundary value (a length, count or offset gone bad).
    Boundary(Index, u64, usize),
    /// Cut the input short.
    Truncate(Index),
    /// Insert bytes.
    Insert(Index, Vec<u8>),
    /// Delete a run of bytes.
    Remove(Index, usize),
    /// Copy a run of this input over another place of it.
    Copy(Index, Index, usize),
    /// Keep the head of this input and continue with the tail of another fixture.
    Splice(Index, Index),
}

const BOUNDARIES: [u64; 12] = [
    0,
    1,
    0x7f,
    0xff,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    1 << 32,
    1 << 62,
    u64::MAX,
];

fn mutation() -> impl Strategy<Value = Mutation> {
    let index = any::<Index>;
    prop_oneof![
        3 => (index(), 0..8u8).prop_map(|(at, bit)| Mutation::Flip(at, bit)),
        2 => (index(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set(at, byte)),
        2 => (index(), prop::sample::select(&BOUNDARIES[..]), prop::sample::select(&[1usize, 2, 4, 8][..]))
            .prop_map(|(at, value, width)| Mutation::Boundary(at, value, width)),
        1 => index().prop_map(Mutation::Truncate),
        1 => (index(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert(at, bytes)),
        1 => (index(), 1..64usize).prop_map(|(at, len)| Mutation::Remove(at, len)),
        1 => (index(), index(), 1..64usize).prop_map(|(to, from, len)| Mutation::Copy(to, from, len)),
        1 => (index(), index()).prop_map(|(at, from)| Mutation::Splice(at, from)),
    ]
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(mutation(), 1..6)
}

/// `base` with `mutations` applied in order; splices take their tail from `donor`.
fn mutate(base: &[u8], mutations: &[Mutation], donor: &[u8]) -> Vec<u8> {
    let mut bytes = base.to_vec();
    for mutation in mutations {
        let len = bytes.len();
        // Positions within the current bytes; an empty input only grows.
        let at = |i: &Index| if len == 0 { 0 } else { i.index(len) };
        match mutation {
            Mutation::Flip(i, bit) if len > 0 => bytes[at(i)] ^= 1 << bit,
            Mutation::Set(i, byte) if len > 0 => bytes[at(i)] = *byte,
            Mutation::Boundary(i, value, width) if len > 0 => {
                let start = at(i);
                for (slot, byte) in bytes[start..]
                    .iter_mut()
                    .zip(&value.to_le_bytes()[..*width])
                {
                    *slot = *byte;
                }
            }
            Mutation::Truncate(i) => bytes.truncate(i.index(len + 1)),
            Mutation::Insert(i, inserted) => {
                let start = i.index(len + 1);
                bytes.splice(start..start, inserted.iter().copied());
            }
            Mutation::Remove(i, n) if len > 0 => {
                let start = at(i);
                bytes.drain(start..(start + n).min(len));
            }
            Mutation::Copy(to, from, n) if len > 0 => {
                let (to, from) = (at(to), at(from));
                let run: Vec<u8> = bytes[from..(from + n).min(len)].to_vec();
                for (slot, byte) in bytes[to..].iter_mut().zip(run) {
                    *slot = byte;
                }
            }
            Mutation::Splice(i, from) => {
                bytes.truncate(i.index(len + 1));
                if !donor.is_empty() {
                    bytes.extend_from_slice(&donor[from.index(donor.len())..]);
                }
            }
            _ => {}
        }
    }
    bytes
}

/// A safetensors file of `(name, dtype, shape, data)` entries, laid out as the format says.
fn safetensors(entries: &[(&str, &str, &[usize], Vec<u8>)]) -> Vec<u8> {
    let mut header = Vec::new();
    let mut body = Vec::new();
    for (name, dtype, shape, data) in entries {
        header.push(format!(
            r#""{name}":{{"dtype":"{dtype}","shape":{shape:?},"data_offsets":[{},{}]}}"#,
            body.len(),
            body.len() + data.len()
        ));
        body.extend_from_slice(data);
    }
    let mut text = format!(
        r#"{{"__metadata__":{{"format":"pt"}},{}}}"#,
        header.join(",")
    );
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(text.as_bytes());
    bytes.extend_from_slice(&body);
    bytes
}

/// Safetensors files: two fixtures and a small file of every element type we read or skip.
static SAFETENSORS: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| {
    let halves: Vec<u8> = (0..12u16)
        .flat_map(|i| (0x3c00 + i).to_le_bytes())
        .collect();
    let mixed = safetensors(&[
        ("h", "F16", &[3, 4], halves.clone()),
        ("b", "BF16", &[2, 2, 3], halves),
        (
            "d",
            "F64",
            &[2],
            [1.5f64, -2.0]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        ("steps", "I64", &[1], 7i64.to_le_bytes().to_vec()),
        ("empty", "F32", &[0, 3], Vec::new()),
        ("s", "F32", &[], 0.25f32.to_le_bytes().to_vec()),
    ]);
    vec![
        fixture("pth/f16_expected.safetensors"),
        fixture("deit/p8_i32_d2/input.safetensors"),
        mixed,
    ]
});

/// `.pth` checkpoints written by torch, each with something different about it.
static PTH: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| {
    [
        "f16.pth",
        "bf16.pth",
        "noncontig.pth",
        "nested_state_dict.pth",
        "no_weights.pth",
        "malicious_os_system.pth",
        "malicious_tensor.pth",
        "legacy.pth",
    ]
    .iter()
    .map(|name| fixture(&format!("pth/{name}")))
    .collect()
});

/// The entries of a zip archive, in order: name and contents.
type Entries = Vec<(String, Vec<u8>)>;

/// The entries of a zip archive, in order.
fn unzip(bytes: &[u8]) -> Entries {
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).expect("fixture is a zip archive");
    (0..zip.len())
        .map(|i| {
            let mut file = zip.by_index(i).expect("fixture entry");
            let mut data = Vec::new();
            file.read_to_end(&mut data).expect("fixture entry reads");
            let name = file
                .name()
                .expect("fixture entry names are UTF-8")
                .into_owned();
            (name, data)
        })
        .collect()
}

/// A zip archive of stored entries, as `torch.save` writes them.
fn rezip(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, data) in entries {
        zip.start_file(name.as_str(), options).expect("start entry");
        zip.write_all(data).expect("write entry");
    }
    zip.finish().expect("finish archive").into_inner()
}

/// The zip fixtures as entries, so that a mutated pickle can be re-packed with a valid CRC.
static PTH_ENTRIES: LazyLock<Vec<Entries>> = LazyLock::new(|| {
    PTH.iter()
        .filter(|bytes| bytes.starts_with(b"PK"))
        .map(|bytes| unzip(bytes))
        .collect()
});

/// `CFG.json` files: the fixtures' and one with a custom idle schedule.
static CONFIGS: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| {
    let mut configs: Vec<Vec<u8>> = ["p8_i32_d2", "p16_i64_d4", "p8_i64_d6"]
        .iter()
        .map(|name| fixture(&format!("deit/{name}/config.json")))
        .collect();
    configs.push(
        br#"{"img_size": 64, "patch_size": 8, "embed_dim": 48, "depth": 6, "num_heads": 6,
            "mlp_ratio": 2.0, "num_classes": 5, "qkv_bias": false,
            "idle_layers": [1, 3, 4], "keep_ratios": [0.7, 0.49, 0.343]}"#
            .to_vec(),
    );
    configs
});

/// Images: the fixtures, and a crop of the sample in every other format the CLI decodes.
static IMAGES: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| {
    let sample = fixture("images/sample.png");
    let crop = image::load_from_memory(&sample)
        .expect("sample decodes")
        .crop_imm(100, 80, 24, 20);
    let encode = |image: &DynamicImage, format| {
        let mut bytes = Cursor::new(Vec::new());
        image.write_to(&mut bytes, format).expect("crop encodes");
        bytes.into_inner()
    };
    let mut images = vec![
        sample,
        fixture("images/sample.jpg"),
        fixture("images/not_an_image.png"),
    ];
    for format in [
        ImageFormat::Png,
        ImageFormat::Bmp,
        ImageFormat::Gif,
        ImageFormat::Tiff,
        ImageFormat::WebP,
    ] {
        images.push(encode(&crop, format));
    }
    images.push(encode(
        &DynamicImage::ImageLuma16(crop.to_luma16()),
        ImageFormat::Png,
    ));
    images
});

/// `--input` files: the fixture batch, and the same batch as f16.
static INPUTS: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| {
    let input = fixture("deit/p8_i32_d2/input.safetensors");
    let values = Checkpoint::from_safetensors_bytes(&input)
        .expect("input fixture parses")
        .require("input")
        .expect("input fixture has `input`")
        .to_vec();
    let halves: Vec<u8> = values[..3 * 32 * 32]
        .iter()
        .flat_map(|&v| half_bits(v).to_le_bytes())
        .collect();
    vec![
        input,
        safetensors(&[("input", "F16", &[1, 3, 32, 32], halves)]),
    ]
});

/// `v` as IEEE half-precision bits (round toward zero; values here are small normals).
fn half_bits(v: f32) -> u16 {
    let bits = v.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exponent = ((bits >> 23) & 0xff) as i32 - 127 + 15;
    match exponent {
        ..=0 => sign,
        31.. => sign | 0x7c00,
        e => sign | ((e as u16) << 10) | ((bits >> 13) & 0x3ff) as u16,
    }
}

/// The model `--input` files are run through: images `(batch, 3, 32, 32)`, 3 classes.
static MODEL: LazyLock<DeiT> = LazyLock::new(|| {
    let config = DeiTConfig::from_json(
        r#"{"img_size": 32, "patch_size": 8, "embed_dim": 8, "depth": 1, "num_heads": 2,
            "mlp_ratio": 2.0, "num_classes": 3, "qkv_bias": true}"#,
    )
    .expect("tiny config is valid");
    DeiT::random(&config, 0).expect("tiny model builds")
});

/// Picks a base and a donor from `files`.
fn pick<'a>(files: &'a [Vec<u8>], base: &Index, donor: &Index) -> (&'a [u8], &'a [u8]) {
    (
        &files[base.index(files.len())],
        &files[donor.index(files.len())],
    )
}

fn check_checkpoint(ckpt: &Checkpoint) {
    for (name, tensor) in ckpt.iter() {
        assert_eq!(tensor.to_vec().len(), tensor.numel(), "{name}");
    }
}

fn check_pth(weights: &PthWeights) {
    assert!(!weights.tensors.is_empty());
    for (name, tensor) in &weights.tensors {
        assert_eq!(tensor.to_vec().len(), tensor.numel(), "{name}");
    }
}

/// Reads a `.pth` leniently and strictly; strict mode may only accept what lenient mode does.
fn read_pth_both_ways(bytes: &[u8]) {
    let lenient = read_pth_bytes(bytes, &PthOptions::default());
    if let Ok(weights) = &lenient {
        check_pth(weights);
    }
    let strict = PthOptions {
        strict: true,
        key: None,
    };
    if let Ok(weights) = read_pth_bytes(bytes, &strict) {
        assert!(weights.unknown_globals.is_empty());
        assert!(
            lenient.is_ok(),
            "strict mode accepted what lenient mode refused"
        );
    }
}

// Parsing a mutated file takes microseconds; decoding and resizing an image, a millisecond.
proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    #[test]
    fn mutated_safetensors_never_panic(
        base in any::<Index>(), donor in any::<Index>(), changes in mutations(),
    ) {
        let (base, donor) = pick(&SAFETENSORS, &base, &donor);
        let bytes = mutate(base, &changes, donor);
        if let Ok(ckpt) = Checkpoint::from_safetensors_bytes(&bytes) {
            check_checkpoint(&ckpt);
            let values: usize = ckpt.iter().map(|(_, t)| t.numel()).sum();
            prop_assert!(values * 2 <= bytes.len(), "{values} values from {} bytes", bytes.len());
        }
    }

    #[test]
    fn mutated_pth_archives_never_panic(
        base in any::<Index>(), donor in any::<Index>(), changes in mutations(),
    ) {
        let (base, donor) = pick(&PTH, &base, &donor);
        read_pth_both_ways(&mutate(base, &changes, donor));
    }

    #[test]
    fn mutated_pickles_in_valid_archives_never_panic(
        base in any::<Index>(), donor in any::<Index>(), changes in mutations(),
    ) {
        let mut entries = PTH_ENTRIES[base.index(PTH_ENTRIES.len())].clone();
        let donor = &PTH_ENTRIES[donor.index(PTH_ENTRIES.len())];
        let pickle = |entries: &[(String, Vec<u8>)]| {
            entries.iter().position(|(name, _)| name.ends_with("/data.pkl"))
        };
        let (Some(at), Some(donor_at)) = (pickle(&entries), pickle(donor)) else {
            panic!("every zip fixture has a data.pkl");
        };
        entries[at].1 = mutate(&entries[at].1, &changes, &donor[donor_at].1);
        read_pth_both_ways(&rezip(&entries));
    }

    #[test]
    fn mutated_configs_never_panic(
        base in any::<Index>(), donor in any::<Index>(), changes in mutations(),
    ) {
        let (base, donor) = pick(&CONFIGS, &base, &donor);
        let bytes = mutate(base, &changes, donor);
        // `DeiTConfig::from_file` reads UTF-8 text; other bytes are an error before parsing.
        let Ok(text) = String::from_utf8(bytes) else { return Ok(()) };
        let Ok(config) = DeiTConfig::from_json(&text) else { return Ok(()) };
        prop_assert!(config.parameter_count().is_some_and(|n| n <= MAX_PARAMETERS));
        let transform = EvalTransform::for_size(config.img_size);
        prop_assert!(transform.resize >= transform.crop);
        if config.parameter_count().is_some_and(|n| n <= 1 << 18) && config.img_size <= 64 {
            let model = DeiT::random(&config, 0).expect("a valid config builds");
            let side = config.img_size;
            let images = Eager.constant(
                idlevit_tensor::Tensor::zeros(&[1, 3, side, side]).expect("small batch"),
            );
            let logits = model.forward(&Eager, &images).expect("a valid config runs");
            prop_assert_eq!(Eager.shape(&logits)[0], 1);
        }
    }

    #[test]
    fn mutated_input_files_never_panic(
        base in any::<Index>(), donor in any::<Index>(), changes in mutations(),
    ) {
        let (base, donor) = pick(&INPUTS, &base, &donor);
        let bytes = mutate(base, &changes, donor);
        let Ok(inputs) = parse_checkpoint(&bytes, false, false) else { return Ok(()) };
        check_checkpoint(&inputs);
        let Ok(input) = inputs.require("input") else { return Ok(()) };
        if let Ok(logits) = MODEL.forward(&Eager, &Eager.constant(input.clone())) {
            prop_assert_eq!(Eager.shape(&logits), &[input.shape()[0], 3]);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn mutated_images_never_panic(
        base in any::<Index>(), donor in any::<Index>(), changes in mutations(),
    ) {
        let (base, donor) = pick(&IMAGES, &base, &donor);
        let bytes = mutate(base, &changes, donor);
        let Ok(image) = decode_image(&bytes) else { return Ok(()) };
        prop_assert!(image.width() <= MAX_IMAGE_SIDE && image.height() <= MAX_IMAGE_SIDE);
        let transform = EvalTransform { resize: 40, crop: 32, ..EvalTransform::for_size(32) };
        if let Ok(tensor) = preprocess(&image, &transform) {
            prop_assert_eq!(tensor.shape(), &[3, 32, 32]);
            prop_assert!(tensor.to_vec().iter().all(|v| v.is_finite()));
        }
    }
}
