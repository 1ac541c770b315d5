"""Fixtures written by code (``tests/data/<name>/make.py``), their readers, and tiny training configs."""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"


def fixture_module(name: str):
    """The module ``tests/data/<name>/make.py`` (each has ``make(root)``; most have ``EXPECTED``)."""
    spec = importlib.util.spec_from_file_location(f"farslip_fixture_{name}", DATA / name / "make.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_maker(name: str):
    """The ``make(root)`` function of ``tests/data/<name>/make.py``."""
    return fixture_module(name).make


def tiny_overrides(tmp_path: Path, stage: int, arch: str = "Test-Tiny-ViT", steps: int = 2, **extra) -> dict:
    """Point any recipe at tiny local data and a tiny model."""
    if stage == 1:
        shards = load_maker("rs5m_shards")(tmp_path / "rs5m")
        data = {"kind": "webdataset", "train": f"{shards}/{{pub11-train-{{0000..0001}},rs3-train-0000}}.tar",
                "num_samples": None}
    else:
        data = {"kind": "mgrs", "train": str(load_maker("mgrs_quirky")(tmp_path / "mgrs")), "min_region_size": 8}
    data["workers"] = 0
    cfg = {"model": {"arch": arch, "pretrained": None},
           "data": data,
           "optim": {"batch_size": 4, "precision": "fp32", "max_steps": steps, "warmup": 2, "lr": 1e-4},
           "run": {"out": str(tmp_path / "run"), "tensorboard": False, "progress": False, "save_every": 1000}}
    for section, values in extra.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


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
    from PIL import Image

    with open(json_path, "r") as f:
        data = json.load(f)
    sizes = []
    for item in data:
        with Image.open(os.path.join(str(root_img_dir), item["global_filepath"])) as im:
            im.load()
            sizes.append(im.size)
    return sizes


def torchrun_train(recipe: Path, over: dict, *extra: str, processes: int = 2):
    """``farslip train --config recipe`` under torchrun on ``processes`` CPU processes, ``over`` given as
    ``--set section.key=value`` (JSON values); asserts it succeeded and returns the completed process."""
    import subprocess
    import sys

    args = []
    for section, values in over.items():
        for k, v in values.items():
            args += ["--set", f"{section}.{k}={'null' if v is None else json.dumps(v)}"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", "-m",
           "farslip", "train", "--config", str(recipe), *args, *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc
