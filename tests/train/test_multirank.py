"""Two processes (gloo, CPU, launched by torchrun as users launch them): exact resume of every rank, validation and
skipped-record reporting gathered from both ranks."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from support.fixtures import REPO, torchrun_train, tiny_overrides

RECIPE = REPO / "configs" / "stage1_vitb16_rs5m.yaml"


def _torchrun(over: dict, *extra: str):
    return torchrun_train(RECIPE, over, *extra)


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def _shards_with_bad_samples(folder: Path, shards: int = 3, per_shard: int = 10) -> str:
    """RS5M-style shards (jpg + txt) in which every fourth sample is unusable (a corrupt image or no caption), so
    every rank meets some whatever pieces of the shards it is dealt."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for s in range(shards):
        with tarfile.open(folder / f"bad-{s:04d}.tar", "w") as tar:
            for i in range(per_shard):
                image = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (48, 56, 3), dtype=np.uint8)).save(image, format="JPEG")
                files = {"jpg": b"corrupt" if i % 8 == 1 else image.getvalue()}
                if i % 8 != 5:
                    files["txt"] = f"an aerial photo of {i} fields in tile {s}".encode()
                for ext, data in files.items():
                    info = tarfile.TarInfo(f"s{s}_{i:04d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return f"{folder}/bad-{{0000..{shards - 1:04d}}}.tar"


def _val_csv(folder: Path) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = ["filepath,title"]
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        rows.append(f"{i}.png,scene {i}")
    (folder / "val.csv").write_text("\n".join(rows) + "\n")
    return folder / "val.csv"


def test_two_ranks_resume_exactly_and_validate_without_waiting(tmp_path):
    # 7 steps of 2 x 2 samples over 24 usable ones: the run crosses an epoch boundary (6 steps per epoch), and each
    # rank reads its own part of the (shuffled) shards with two loader workers (four stream roles in all).
    over = tiny_overrides(tmp_path / "full", 1, arch="FarSLIP-Tiny", steps=7)
    over["optim"].update(batch_size=2, warmup=3, epochs=3, lr=1e-3)
    over["data"].update(workers=2, train=_shards_with_bad_samples(tmp_path / "shards"))
    over["run"].update(save_every=3)
    # The uninterrupted run validates every 3 steps: both ranks share the retrieval (each embeds a shard).
    # No rank may wait on an unmatched collective, and validation must not change training.
    _torchrun({**over, "run": {**over["run"], "val_every": 3, "val_csv": str(_val_csv(tmp_path / "val"))}})
    full = Path(over["run"]["out"])

    over["run"]["out"] = str(tmp_path / "part" / "run")
    over["run"]["stop_after"] = 5
    _torchrun(over)
    part = Path(over["run"]["out"])
    (part / "checkpoints" / "step_00000005.pt").unlink()  # as if killed after step 5: resume from step 3
    over["run"]["stop_after"] = None
    _torchrun(over, "--resume", "auto")

    a, b = _lines(full / "log.jsonl"), _lines(part / "log.jsonl")
    val = [e for e in a if "val/text2img_R@1" in e]
    assert [e["step"] for e in val] == [3, 6] and all(0 <= e["val/img2text_R@1"] <= 1 for e in val)
    a = [e for e in a if "total" in e]
    assert [e["step"] for e in b] == [e["step"] for e in a] == list(range(1, 8))
    for ea, eb in zip(a, b):
        assert len(ea["total_by_rank"]) == 2
        # Bit-identical on each rank; validation in the full run changed nothing either.
        assert ea["total_by_rank"] == eb["total_by_rank"], ea["step"]
        assert (ea["lr"], ea["logit_scale"]) == (eb["lr"], eb["logit_scale"])
    assert a[0]["samples_per_s"] > 0
    # Skipped records come from both ranks, once each, the same in the resumed run.
    skipped_a, skipped_b = ([(r["kind"], r["step"], r["rank"], Path(r["path"]).name, r.get("record"), r.get("field"))
                             for r in _lines(run / "skipped.jsonl")] for run in (full, part))
    assert skipped_a == skipped_b
    assert {rank for _, _, rank, *_ in skipped_a} == {0, 1}
    assert json.loads((full / "summary.json").read_text())["skipped_records"] == len(skipped_a) == a[-1]["skipped"]
