"""benchmarks/gpu.sh --cpu --tiny: the prepared GPU check runs end to end on the CPU at a tiny size and writes the
JSON the GPU run will write (every part, every figure's key). In the default run although it takes 1-2 minutes
(about 10 child processes): the GPU check is run rarely, on a borrowed machine, and must not find a part broken
there (a merge once left the segment part without its new settings)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from support.fixtures import REPO


def test_gpu_check_cpu_fallback_writes_every_figure(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu.sh"), "--cpu", "--tiny", "--out", str(out)],
                          capture_output=True, text=True, timeout=1500,
                          env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert set(res["goals"]) == {"end_to_end_vs_official", "step_vs_official", "mfu_bf16", "ovss_vs_one_window"}
    s = res["summary"]
    assert set(s["train_step"]) == {"stage1_bf16", "stage1_fp16", "stage2_bf16", "stage2_fp16"}
    for entry in s["train_step"].values():
        assert {"samples_per_s", "speedup_vs_official", "peak_memory_mib", "achieved_tflops", "mfu",
                "losses_agree"} <= set(entry)
        assert entry["samples_per_s"]["project"] > 0 and entry["samples_per_s"]["reference"] > 0
        assert entry["achieved_tflops"] > 0 and entry["mfu"] is None  # no GPU peak to divide by on a CPU
        assert entry["losses_agree"]
    assert set(s["end_to_end"]["samples_per_s"]) == {"official", "project", "project_views_on_device"}
    assert s["ovss"]["masks_identical"] and s["ovss"]["speedup_vs_one_window"] > 0
    assert s["segment"]["256px"]["mpx_per_s"] > 0
    assert set(s["fsdp"]) == {"plain:1", "fsdp:1"}
    assert all(e["peak_memory_mib"] > 0 and e["step_s"] > 0 and not e["out_of_memory"] for e in s["fsdp"].values())
    assert s["sam3"]["prompts_tiny"]["masks_identical"] and s["sam3"]["prompts_tiny"]["windows_per_s"] > 0
    assert s["sam3"]["segment_tiny-256"]["mpx_per_s"] > 0
