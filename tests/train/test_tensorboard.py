"""TensorBoard event files hold each step once after a resume (not the steps logged after the checkpoint twice)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from farslip.train import load_config, train

from support.fixtures import REPO, tiny_overrides


def _scalar_steps(folder: Path, tag: str) -> Counter:
    steps = Counter()
    for path in folder.glob("events.out.tfevents.*"):
        for event in EventFileLoader(str(path)).Load():
            if any(v.tag == tag for v in event.summary.value):
                steps[event.step] += 1
    return steps


def test_each_step_is_written_once_after_resume(tmp_path, tiny_arch):
    over = tiny_overrides(tmp_path, 1, steps=4)
    over["run"].update(tensorboard=True, save_every=2, stop_after=3)
    cfg = load_config(REPO / "configs" / "vanilla_vitb16_rs5m.yaml", over)
    train(cfg)
    run = Path(cfg.run.out)
    assert _scalar_steps(run / "tensorboard", "train/total") == {1: 1, 2: 1, 3: 1}
    (run / "checkpoints" / "step_00000003.pt").unlink()  # as if killed after step 3: resume from step 2
    cfg.run.stop_after = None
    train(cfg, resume="auto")
    assert _scalar_steps(run / "tensorboard", "train/total") == {1: 1, 2: 1, 3: 1, 4: 1}
