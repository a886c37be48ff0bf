"""Writes the seed corpora under fuzz/corpus/ from the files in fixtures/.

Run from the repository root: `python fuzz/make_corpus.py`. Needs Pillow (13.0.0 with WebP
support) and numpy; everything else is the standard library. Seeds are kept small, since
libFuzzer mutates small inputs fastest: subsets and crops of the fixtures rather than whole
files, except for the `.pth` checkpoints, whose zip layout a trim would break.
"""

import io
import json
import shutil
import struct
from pathlib import Path

import numpy as np
from PIL import Image

FIXTURES = Path("fixtures")
CORPUS = Path("fuzz/corpus")

# The image target reads two parameter bytes before the file: resize 20, crop 16.
IMAGE_PARAMS = bytes([20, 16])


def read_safetensors(path):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        assert info["dtype"] == "F32", name
        values = np.frombuffer(body[start:end], dtype="<f4").reshape(info["shape"])
        tensors[name] = values
    return tensors


def to_bf16_bytes(values):
    bits = np.asarray(values, dtype="<f4").view("<u4")
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2").tobytes()


def encode(values, dtype):
    if dtype == "F32":
        return np.asarray(values, dtype="<f4").tobytes()
    if dtype == "F16":
        return np.asarray(values, dtype="<f2").tobytes()
    if dtype == "BF16":
        return to_bf16_bytes(values)
    if dtype == "F64":
        return np.asarray(values, dtype="<f8").tobytes()
    if dtype == "I64":
        return np.asarray(values, dtype="<i8").tobytes()
    raise ValueError(dtype)


def write_safetensors(path, entries, metadata=None):
    """entries: (name, dtype, values) in order."""
    header, body = {}, b""
    if metadata:
        header["__metadata__"] = metadata
    for name, dtype, values in entries:
        raw = encode(values, dtype)
        header[name] = {
            "dtype": dtype,
            "shape": list(np.shape(values)),
            "data_offsets": [len(body), len(body) + len(raw)],
        }
        body += raw
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + body)


def target(name):
    directory = CORPUS / name
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    return directory


def safetensors_seeds():
    out = target("safetensors")
    weights = read_safetensors(FIXTURES / "deit/p8_i32_d2/weights.safetensors")
    subset = ["cls_token", "head.bias", "norm.bias", "norm.weight"]
    write_safetensors(
        out / "weights_subset.safetensors",
        [(name, "F32", weights[name]) for name in subset],
    )
    bias = weights["head.bias"]
    write_safetensors(
        out / "mixed_dtypes.safetensors",
        [
            ("head.bias", "F16", bias),
            ("norm.bias", "BF16", weights["norm.bias"][:8]),
            ("scale", "F64", bias[:2]),
            ("steps", "I64", np.array([3])),
            ("empty", "F32", np.zeros((0, 4), dtype="<f4")),
        ],
        metadata={"format": "pt"},
    )
    write_safetensors(out / "empty.safetensors", [])


def pth_seeds():
    out = target("pth")
    for name in [
        "f16.pth",
        "noncontig.pth",
        "no_weights.pth",
        "malicious_os_system.pth",
        "malicious_tensor.pth",
    ]:
        shutil.copy(FIXTURES / "pth" / name, out / name)
    # The legacy format is recognised from its first bytes.
    legacy = (FIXTURES / "pth/legacy.pth").read_bytes()
    (out / "legacy_head.pth").write_bytes(legacy[:256])


def config_seeds():
    out = target("config_json")
    for name in ["p8_i32_d2", "p16_i64_d4", "p8_i64_d6"]:
        shutil.copy(FIXTURES / "deit" / name / "config.json", out / f"{name}.json")
    config = json.loads((FIXTURES / "deit/p8_i64_d6/config.json").read_text())
    config.update(idle_layers=[1, 3, 4], keep_ratios=[0.7, 0.49, 0.343])
    (out / "p8_i64_d6_idle.json").write_text(json.dumps(config, indent=2) + "\n")


def image_seeds():
    out = target("image")
    images = FIXTURES / "images"
    for name in ["sample.png", "not_an_image.png"]:
        (out / name).write_bytes(IMAGE_PARAMS + (images / name).read_bytes())
    crop = Image.open(images / "sample.png").convert("RGB").crop((100, 80, 124, 100))
    formats = [
        ("crop.png", "PNG", {}),
        ("crop_gray.png", "PNG", {"mode": "L"}),
        ("crop.jpg", "JPEG", {"quality": 90, "subsampling": 0}),
        ("crop.bmp", "BMP", {}),
        ("crop.gif", "GIF", {}),
        ("crop.webp", "WEBP", {"quality": 80}),
        ("crop_lossless.webp", "WEBP", {"lossless": True}),
        ("crop.tiff", "TIFF", {}),
    ]
    for name, fmt, options in formats:
        image = crop.convert(options.pop("mode")) if "mode" in options else crop
        buffer = io.BytesIO()
        image.save(buffer, format=fmt, **options)
        (out / name).write_bytes(IMAGE_PARAMS + buffer.getvalue())


def input_seeds():
    out = target("input_tensor")
    inputs = read_safetensors(FIXTURES / "deit/p8_i32_d2/input.safetensors")["input"]
    first = inputs[:1]
    write_safetensors(out / "input_b1.safetensors", [("input", "F32", first)])
    write_safetensors(out / "input_b2_f16.safetensors", [("input", "F16", inputs[:2])])
    write_safetensors(
        out / "input_wrong_size.safetensors",
        [("input", "F32", first[:, :, :16, :16])],
    )
    write_safetensors(
        out / "input_misnamed.safetensors", [("images", "F32", first[:, :1, :4, :4])]
    )


if __name__ == "__main__":
    import hostile_seeds

    safetensors_seeds()
    pth_seeds()
    hostile_seeds.main()
    config_seeds()
    image_seeds()
    input_seeds()
