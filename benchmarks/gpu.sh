#!/usr/bin/env bash
# One prepared GPU check: training step (stage 1 and 2, ViT-B-16, batch 40, bf16 and fp16: samples/s, peak memory,
# MFU), end-to-end training throughput with 8 loader workers against the official data flow, OVSS windows batched
# against one at a time, segment Mpx/s on a large raster, peak memory per rank of a ViT-L/14 step at batch 40 with
# and without optim.fsdp -- one JSON file. Sized for 7-8 minutes on one H100/H200 (estimated from the parts' sizes:
# not yet timed on a GPU; the ViT-L/14 part about one minute of it); it must finish within 8 (--only fsdp runs the
# ViT-L/14 part alone).
#
#   benchmarks/gpu.sh                      # on a CUDA machine -> benchmarks/results/gpu-check-<time>.json
#   benchmarks/gpu.sh --out /tmp/gpu.json
#   benchmarks/gpu.sh --cpu --tiny         # the CPU fallback at a tiny size (what the test suite runs)
#
# PYTHON selects the interpreter (default: the repository's .venv, else python3).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x "$root/.venv/bin/python" ]]; then python="$root/.venv/bin/python"; else python="python3"; fi
fi
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" "$here/gpu_check.py" "$@"
