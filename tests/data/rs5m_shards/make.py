"""Write tiny RS5M-style webdataset shards.

    python tests/data/rs5m_shards/make.py OUT_DIR

``pub11-train-000{0,1}.tar`` use the official keys (img_content / img_name / caption); ``rs3-train-0000.tar`` is a
plain jpg + txt shard and holds one corrupt image and one sample without caption.

``make_varied(out, num_shards)`` writes shards that stress reading a shard in byte ranges: sample counts and image
sizes that vary, samples with an extra member, keys longer than a tar header holds (pax headers in some shards,
GNU long-name headers in others).
"""
from __future__ import annotations

import io
import sys
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _jpeg(rng, size=96) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size + 16, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def make(out: str | Path, per_shard: int = 8, seed: int = 0) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for s in range(2):
        with tarfile.open(out / f"pub11-train-{s:04d}.tar", "w") as tar:
            for i in range(per_shard):
                key = f"pub11_{s}_{i:05d}"
                _add(tar, f"{key}.img_content", _jpeg(rng))
                _add(tar, f"{key}.img_name", f"{key}.jpg".encode())
                _add(tar, f"{key}.caption", f"a satellite image of farmland and {i} buildings in region {s}".encode())
    with tarfile.open(out / "rs3-train-0000.tar", "w") as tar:
        for i in range(per_shard):
            key = f"rs3_{i:05d}"
            _add(tar, f"{key}.jpg", b"corrupt" if i == 2 else _jpeg(rng))
            if i != 5:
                _add(tar, f"{key}.txt", f"an aerial photo of a harbour with {i} ships".encode())
    return out


def make_varied(out: str | Path, num_shards: int, seed: int = 0, samples: tuple[int, int] = (20, 40)) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for s in range(num_shards):
        path = out / f"varied-{s:04d}.tar"
        fmt = tarfile.GNU_FORMAT if s % 2 else tarfile.PAX_FORMAT
        with tarfile.open(path, "w", format=fmt) as tar:
            for i in range(int(rng.integers(*samples))):
                key = f"v{s}_{i:05d}" + ("_" + "long" * 30 if i % 7 == 3 else "")  # > 100 bytes: extension header
                _add(tar, f"{key}.img_content", _jpeg(rng, int(rng.integers(8, 40))))
                if i % 5 == 1:
                    _add(tar, f"{key}.json", b'{"source": "varied"}')
                _add(tar, f"{key}.caption", f"varied shard {s} sample {i}".encode())
        paths.append(path)
    return paths


if __name__ == "__main__":
    print(make(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "generated"))
