"""Tiny datasets and a tiny config for training tests."""
from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def load_maker(name: str):
    spec = importlib.util.spec_from_file_location(f"make_{name}", REPO / "tests" / "data" / name / "make.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make


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
