"""What a user waits for before any work: the command's start-up, and the text embeddings of the class prompts.

* start-up: wall time of ``python -m farslip --help``, of an argument error (``segment --no-such-option``), and of
  an error the command finds itself (``segment missing.tif ...``, which loads torch to get there), against
  ``python -c "import torch"`` on the same machine; medians of several runs.
* text cache: the prompt-ensembled embeddings of LoveDA's class names (9 names x 80 templates = 720 prompts, what
  ``segment --classes-file loveda`` encodes) with a ViT-B-16's text tower (random weights: nothing to download),
  each in a fresh process as a new command would: the first run with an empty cache encodes them all, the second
  reads them (it hashes the text tower's weights to find them). The embeddings of both runs are compared.
"""
from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import child_env, emit, run_child

STARTUP = {
    "help": ["-m", "farslip", "--help"],
    "argument_error": ["-m", "farslip", "segment", "--no-such-option"],
    "input_error": ["-m", "farslip", "segment", "missing.tif", "--checkpoint", "missing.pt", "--classes", "a", "b"],
    "import_torch": ["-c", "import torch"],
}


def child_text(p: dict) -> None:
    import open_clip
    import torch

    from farslip.engine import OVSS_TEMPLATES, name_embeddings, query_table
    from farslip.engine.text_cache import text_fingerprint
    from farslip.infer.common import parse_classes

    torch.manual_seed(0)
    model = open_clip.create_model(p["arch"]).eval()
    tokenizer = open_clip.get_tokenizer(p["arch"])
    names, _ = query_table(parse_classes(classes_file="loveda"))
    names = names[:p["names"]]
    encoded = {"prompts": 0}
    original = type(model).encode_text

    def counting(self, text, *args, **kwargs):
        encoded["prompts"] += len(text)
        return original(self, text, *args, **kwargs)

    type(model).encode_text = counting
    t0 = time.perf_counter()
    text = name_embeddings(model, tokenizer, names, OVSS_TEMPLATES, batch_size=64)  # as segment asks for them
    seconds = time.perf_counter() - t0
    torch.save(text, p["out"])
    other = open_clip.create_model(p["arch"])
    t0 = time.perf_counter()
    text_fingerprint(other)  # what finding them costs: the hash of a text tower not seen before
    emit({"seconds": seconds, "prompts_encoded": encoded["prompts"], "names": len(names),
          "prompts": len(names) * len(OVSS_TEMPLATES), "fingerprint_s": time.perf_counter() - t0})


def run(cfg: dict, log) -> dict:
    out = {"startup": {}, "text_cache": {}}
    repeats = 3 if cfg["quick"] else 5
    with tempfile.TemporaryDirectory(prefix="farslip-bench-cli-") as work:
        for name, argv in STARTUP.items():
            times = [_wall([sys.executable, *argv], cfg["threads"], work) for _ in range(repeats)]
            out["startup"][name] = {"median_s": statistics.median(times), "runs_s": times}
            log(f"[cli] {name}: {statistics.median(times):.2f} s (median of {repeats})")
        arch = cfg.get("text_arch", "ViT-B-16")
        names = 2 if cfg["quick"] else 9
        env_cache = Path(work) / "cache"
        runs = []
        for i in range(2):
            r = run_child("cli_text", {"arch": arch, "names": names, "out": str(Path(work) / f"text{i}.pt")},
                          cfg["threads"], env={"FARSLIP_CACHE_DIR": str(env_cache)})
            runs.append(r)
            log(f"[cli] text run {i + 1}: {r['seconds']:.1f} s, {r['prompts_encoded']} prompts encoded")
        import torch

        same = torch.equal(torch.load(Path(work) / "text0.pt"), torch.load(Path(work) / "text1.pt"))
        out["text_cache"] = {"arch": arch, "names": runs[0]["names"], "prompts": runs[0]["prompts"],
                             "first_s": runs[0]["seconds"], "first_prompts_encoded": runs[0]["prompts_encoded"],
                             "second_s": runs[1]["seconds"], "second_prompts_encoded": runs[1]["prompts_encoded"],
                             "fingerprint_s": runs[1]["fingerprint_s"], "identical": same,
                             "speedup": runs[0]["seconds"] / max(runs[1]["seconds"], 1e-9)}
    return out


def _wall(cmd: list[str], threads: int, cwd: str) -> float:
    """Seconds from start to exit of ``cmd`` (whatever its exit status: an error is what is timed)."""
    t0 = time.perf_counter()
    subprocess.run(cmd, env=child_env(threads), cwd=cwd, capture_output=True, timeout=600)
    return time.perf_counter() - t0


CHILDREN = {"cli_text": child_text}
