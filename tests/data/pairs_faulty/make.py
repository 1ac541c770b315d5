"""Write image-caption training data with planted faults: webdataset shards and a CSV.

    python tests/data/pairs_faulty/make.py OUT_DIR

``shards/good-0000.tar``: 6 clean samples (official RS5M keys: img_content / img_name / caption).
``shards/faulty-0000.tar``: 8 samples (jpg + txt), of which: one corrupt image, one without a caption member, one
with a blank caption, one without an image member, one with a caption that is not UTF-8 (a warning: the trainer
reads it with replacement characters), and one key met twice (a warning).
``shards/broken-0000.tar``: 3 samples, then cut off in the middle of the fourth (a truncated download).
``pairs.csv``: 7 rows, of which one names a missing image, one a corrupt image, one has an empty caption, one has
an extra field, and one repeats another row. ``EXPECTED`` lists what validation must find, as (level, where,
fragment of the message).
"""
from __future__ import annotations

import io
import sys
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

EXPECTED_SHARDS = {
    "samples": {"good-0000.tar": 6, "faulty-0000.tar": 9, "broken-0000.tar": 3},
    "findings": [
        ("error", "faulty-0000.tar[f_001]", "cannot decode image"),
        ("error", "faulty-0000.tar[f_002]", "no caption member"),
        ("error", "faulty-0000.tar[f_003]", "empty caption"),
        ("error", "faulty-0000.tar[f_004]", "no image member"),
        ("warning", "faulty-0000.tar[f_005]", "caption is not UTF-8"),
        ("warning", "faulty-0000.tar[f_000]", "key met before"),
        ("error", "broken-0000.tar", "unreadable tar after 3 samples"),
    ],
}

EXPECTED_CSV = {
    "rows": 7,
    "findings": [
        ("error", "pairs.csv:3", "does not exist"),
        ("error", "pairs.csv:4", "cannot decode image"),
        ("error", "pairs.csv:5", "empty caption"),
        ("error", "pairs.csv:6", "4 fields, the header has 2"),
        ("warning", "pairs.csv:8", "with the same caption again"),
    ],
}


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _jpeg(rng, size: int = 24) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size + 8, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def make(out: str | Path, seed: int = 0) -> Path:
    out = Path(out)
    shards = out / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with tarfile.open(shards / "good-0000.tar", "w") as tar:
        for i in range(6):
            key = f"g_{i:03d}"
            _add(tar, f"{key}.img_content", _jpeg(rng))
            _add(tar, f"{key}.img_name", f"{key}.jpg".encode())
            _add(tar, f"{key}.caption", f"a satellite image of {i} fields".encode())
    with tarfile.open(shards / "faulty-0000.tar", "w") as tar:
        for i in range(8):
            key = f"f_{i:03d}"
            if i != 4:
                _add(tar, f"{key}.jpg", b"not a jpeg" if i == 1 else _jpeg(rng))
            caption = {2: None, 3: b"   ", 5: "a harbour \u00e9".encode("latin-1")}.get(i, f"a harbour {i}".encode())
            if caption is not None:
                _add(tar, f"{key}.txt", caption)
        _add(tar, "f_000.jpg", _jpeg(rng))       # the first key again, after others: another sample
        _add(tar, "f_000.txt", b"a harbour again")
    whole = io.BytesIO()
    with tarfile.open(fileobj=whole, mode="w") as tar:
        for i in range(4):
            _add(tar, f"b_{i:03d}.jpg", _jpeg(rng, 40))
            _add(tar, f"b_{i:03d}.txt", f"a road {i}".encode())
    data = whole.getvalue()
    cut = data.rfind(b"b_003.jpg") + 512 + 700  # inside the fourth sample's image
    (shards / "broken-0000.tar").write_bytes(data[:cut])

    images = out / "images"
    images.mkdir(exist_ok=True)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(images / f"{i}.png")
    (images / "corrupt.png").write_bytes(b"not a png")
    rows = ["filepath,title",
            "images/0.png,a farm",
            "images/missing.png,a lake",
            "images/corrupt.png,a road",
            "images/1.png,",
            "images/2.png,a port,extra,fields",
            "images/3.png,a forest",
            "images/0.png,a farm"]
    (out / "pairs.csv").write_text("\n".join(rows) + "\n")
    return out


if __name__ == "__main__":
    print(make(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "generated"))
