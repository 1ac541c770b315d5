"""Helpers shared by the tests of farslip.build (imported by name: pytest puts this folder on sys.path)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data"


def load_maker(name: str):
    """The module tests/data/<name>/make.py (each has ``make(root)`` and ``EXPECTED``)."""
    path = DATA / name / "make.py"
    spec = importlib.util.spec_from_file_location(f"farslip_fixture_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def read_records(out: Path) -> list[dict]:
    return json.loads((Path(out) / "text_info.json").read_text(encoding="utf-8"))


def objects_by_file(records: list[dict]) -> dict[str, list[tuple[str, list]]]:
    """{global_filepath: [(category, [x1, y1, x2, y2]), ...]} with boxes read by order, as readers do."""
    out = {}
    for r in records:
        out[r["global_filepath"]] = [(o["category"], list(o["bbox"].values())[:4]) for o in r["segment"]]
    return out


def open_like_official(json_path: Path, root_img_dir: Path) -> list[tuple[int, int]]:
    """Open every record's image exactly as the official FarSLIP ``JsonDataset`` does (``--train-data
    json_path --root-train-img-dir root_img_dir``): ``Image.open(os.path.join(root_img_dir, global_filepath))``.
    Returns the image sizes, one per record."""
    import os

    from PIL import Image

    with open(json_path, "r") as f:
        data = json.load(f)
    sizes = []
    for item in data:
        with Image.open(os.path.join(str(root_img_dir), item["global_filepath"])) as im:
            im.load()
            sizes.append(im.size)
    return sizes
