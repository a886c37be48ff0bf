"""Writes the hostile seeds of fuzz/corpus/pth and fuzz/corpus/safetensors: small instances of
inputs that once made the readers misbehave, for libFuzzer to grow from.

Standard library only; run from the repository root, by itself (`python fuzz/hostile_seeds.py`)
or as part of `python fuzz/make_corpus.py`.
"""

import shutil
import struct
import zipfile
from pathlib import Path

CORPUS = Path("fuzz/corpus")
CHECKPOINT_FIXTURES = Path("crates/checkpoint/tests/fixtures")


def short(text):
    data = text.encode()
    return b"\x8c" + bytes([len(data)]) + data


def put(i):
    return b"r" + struct.pack("<I", i)


def get(i):
    return b"j" + struct.pack("<I", i)


def tensor(numel):
    """`_rebuild_tensor_v2` over FloatStorage `0` of `numel` elements, shape (numel,)."""
    return (
        b"\x8c\x0ctorch._utils\x8c\x12_rebuild_tensor_v2\x93(("
        + short("storage")
        + b"\x8c\x05torch\x8c\x0cFloatStorage\x93"
        + short("0")
        + short("cpu")
        + b"J" + struct.pack("<i", numel)
        + b"tQK\x00(J" + struct.pack("<i", numel)
        + b"t(K\x01t\x89\x8c\x0bcollections\x8c\x0bOrderedDict\x93)RtR"
    )


def archive(path, pickle, storage=b"\0" * 16):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pickle)
        z.writestr("archive/byteorder", b"little")
        z.writestr("archive/data/0", storage)


def name_bomb(depth, names):
    """Nested dicts `depth` deep, then `names` names of one memoized tensor."""
    p = b"\x80\x04}"
    for level in range(depth):
        p += short("d") + b"}" + put(level) + b"s" + get(level)
    p += short("t") + tensor(4) + put(depth) + b"s("
    p += b"".join(short(str(k)) + get(depth) for k in range(names))
    return p + b"u" + b"0" * depth + b"."


def nested_containers(depth):
    """A weight beside `depth` lists inside one another and `depth` tuples inside one another."""
    lists = b"]" * depth + b"a" * (depth - 1)
    tuples = b"(" * depth + b"t" * depth
    p = b"\x80\x02}(" + short("w") + tensor(4) + short("lists") + lists + short("tuples") + tuples
    return p + b"u."


def safetensors(path, header, data=b""):
    raw = header.encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def main():
    pth = CORPUS / "pth"
    pth.mkdir(parents=True, exist_ok=True)
    # torch names the archive's folder after the file stem; 21 characters once broke reading.
    shutil.copy(
        CHECKPOINT_FIXTURES / "checkpoint_epoch_0010.pth",
        pth / "stem21_checkpoint_epoch_0010.pth",
    )
    archive(pth / "name_bomb.pth", name_bomb(depth=300, names=300))
    archive(pth / "nested_containers.pth", nested_containers(depth=500))
    archive(pth / "memo_heavy.pth", b"\x80\x04N" + b"\x94" * 2000 + b".")

    st = CORPUS / "safetensors"
    st.mkdir(parents=True, exist_ok=True)
    empty = '"%d":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}'
    safetensors(st / "many_empty_tensors.safetensors", "{" + ",".join(empty % i for i in range(100)) + "}")
    (st / "oversized_header.safetensors").write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    axes = ",".join(["1"] * 64)
    safetensors(st / "long_shape.safetensors", '{"w":{"dtype":"F32","shape":[0,%s],"data_offsets":[0,0]}}' % axes)
    twice = '"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}'
    safetensors(st / "duplicate_names.safetensors", "{%s,%s}" % (twice, twice), b"\0" * 4)
    safetensors(
        st / "metadata_and_tensor.safetensors",
        '{"__metadata__":{"format":"pt"},"w":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]}}',
        b"\x80\x3f\x00\x40",
    )


if __name__ == "__main__":
    main()
