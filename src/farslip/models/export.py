"""Models out to the ecosystem: open_clip's hub layout, ONNX, and the Hugging Face Hub.

* ``open_clip-hub``: ``open_clip_config.json`` (``model_cfg`` with the activation, context length and image size
  the weights need, ``preprocess_cfg``) and ``open_clip_model.safetensors`` -- the layout open_clip's factory reads
  for ``hf-hub:ORG/REPO`` and ``local-dir:FOLDER`` (open_clip/factory.py, pretrained.py), so stock open_clip loads
  the model with no farslip installed. A README.md model card goes along.
* ``onnx``: ``image.onnx`` (global embedding), ``image_dense.onnx`` (dense tokens of the SegEarth last block,
  farslip.models.dense) and ``text.onnx`` (token ids -> text embedding), each checked against PyTorch with
  onnxruntime before it is reported written.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.errors import FarslipError
from .dense import ATTENTION_VARIANTS, dense_features, encode_views, interpolate_pos_embed

HF_CONFIG = "open_clip_config.json"
HF_WEIGHTS = "open_clip_model.safetensors"
FORMATS = ("open_clip-hub", "onnx")


class ExportError(FarslipError, RuntimeError):
    """The model cannot be written in the requested format, or the written file does not reproduce it."""


def open_clip_model_cfg(model: nn.Module) -> dict[str, Any]:
    """The architecture config of ``model`` as built: its base config with the settings farslip forced on it
    (QuickGELU, text context length, image size), which a stock loader must apply to fit the weights."""
    import open_clip

    arch = getattr(model, "farslip_arch", None)
    base = open_clip.get_model_config(arch) if arch else None
    if base is None:
        raise ExportError("export needs a model from farslip.load_model (its architecture name is unknown)")
    cfg = copy.deepcopy(base)
    cfg["quick_gelu"] = bool(getattr(model, "farslip_quick_gelu", cfg.get("quick_gelu", False)))
    cfg["text_cfg"]["context_length"] = int(model.context_length)
    size = model.visual.image_size
    cfg["vision_cfg"]["image_size"] = int(size[0] if isinstance(size, (tuple, list)) else size)
    return cfg


def export_open_clip_hub(model: nn.Module, out_dir: str | os.PathLike, *, repo_id: str | None = None) -> Path:
    """Write ``model`` in open_clip's hub layout into ``out_dir`` (created; written whole or not at all).
    ``repo_id``: the Hub repository it will be pushed to, named in the model card's loading example."""
    from open_clip.push_to_hf_hub import save_config_for_hf
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    cfg = open_clip_model_cfg(model)
    with _staging(out_dir) as tmp:
        state = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
                 for k, v in model.state_dict().items()}
        save_file(state, str(tmp / HF_WEIGHTS))
        save_config_for_hf(model, tmp / HF_CONFIG, model_config=cfg)
        (tmp / "README.md").write_text(model_card(model, cfg, repo_id))
    return out_dir


def model_card(model: nn.Module, cfg: dict[str, Any], repo_id: str | None = None) -> str:
    """A short Hugging Face model card: what the model is, how stock open_clip loads it, licence and citation."""
    from .registry import find_entry

    entry = find_entry(getattr(model, "farslip_name", None))
    title = entry.title if entry else f"{model.farslip_arch} CLIP exported by farslip"
    licence = entry.license.split(" (")[0].lower() if entry and entry.license != "unknown" else "other"
    source = f"\nWeights: {entry.source} (farslip registry name `{entry.name}`).\n" if entry else ""
    ident = f"hf-hub:{repo_id}" if repo_id else "local-dir:/path/to/this/folder"
    lines = [
        "---", "library_name: open_clip", f"license: {licence}", "pipeline_tag: zero-shot-image-classification",
        "tags:", "- remote-sensing", "- clip", "---", "", f"# {title}", source,
        f"Architecture {model.farslip_arch}, {'QuickGELU' if cfg['quick_gelu'] else 'GELU'}, "
        f"text context {cfg['text_cfg']['context_length']} tokens, image {cfg['vision_cfg']['image_size']} px. "
        "Loads with stock open_clip:", "", "```python", "import open_clip",
        f'model, _, preprocess = open_clip.create_model_and_transforms("{ident}")',
        f'tokenizer = open_clip.get_tokenizer("{ident}")', "```", "",
    ]
    if entry and entry.citation:
        lines += ["## Citation", "", "```bibtex", entry.citation, "```", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# ONNX

class _ImageTower(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # farslip's trunk (the same arithmetic as encode_image) interpolates the positional embedding, so the
        # global graph can be exported for other input sizes than the model's own
        return encode_views(self.model, images, dense_rows=None)[1]


class _DenseTower(nn.Module):
    def __init__(self, model: nn.Module, attn: str):
        super().__init__()
        self.model, self.attn = model, attn

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, cls = dense_features(self.model, images, self.attn)
        return tokens, cls


class _TextTower(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens)


def export_onnx(model: nn.Module, out_dir: str | os.PathLike, *, image_size: int | None = None,
                attn: str = "segearth", opset: int = 17, atol: float = 1e-4) -> dict[str, Any]:
    """Write the image tower (global embedding), the dense image tower and the text tower as ONNX into ``out_dir``.

    The image graphs take ``[batch, 3, image_size, image_size]`` float pixels (normalised as the model's
    preprocessing does) with a dynamic batch; the patch grid is fixed at export (the positional-embedding
    interpolation is traced for one grid), so export once per input size. The text graph takes ``[batch,
    context_length]`` int64 token ids from open_clip's tokenizer. Each graph is run with onnxruntime on a probe
    input and compared with PyTorch; a mismatch above ``atol`` is an error.

    The model is put in eval mode in float32 (the graphs are float32). Returns a summary: files, input size, grid,
    and the largest absolute difference of each graph.
    """
    if attn not in ATTENTION_VARIANTS:
        raise ExportError(f"attn must be one of {ATTENTION_VARIANTS}, got {attn!r}")
    if not hasattr(model.visual, "conv1") or not hasattr(model.visual, "class_embedding"):
        raise ExportError("ONNX export of the dense tower supports open_clip's own ViTs (CLS token); this model's "
                          f"image encoder is a {type(model.visual).__name__} (SigLIP and PE-Core towers: export with "
                          "--format open_clip-hub)")
    model = model.float().eval()
    size = image_size or _input_size(model)
    patch = model.visual.conv1.kernel_size[0]
    if size % patch:
        raise ExportError(f"image size {size} is not a multiple of the patch size {patch}")
    if size != _input_size(model):
        model = _at_input_size(model, size // patch)
    torch.manual_seed(0)
    images = torch.randn(2, 3, size, size)
    tokens = torch.randint(1, 1000, (2, model.context_length))
    tokens[:, 0], tokens[:, -1] = 49406, 49407  # start and end of text, where open_clip's tokenizer puts them
    graphs = [
        ("image.onnx", _ImageTower(model), images, ["images"], ["image_embedding"]),
        ("image_dense.onnx", _DenseTower(model, attn), images, ["images"], ["dense_tokens", "image_embedding"]),
        ("text.onnx", _TextTower(model), tokens, ["tokens"], ["text_embedding"]),
    ]
    out_dir = Path(out_dir)
    summary: dict[str, Any] = {"image_size": size, "grid": size // patch, "attn": attn, "context_length":
                               int(model.context_length), "max_abs_diff": {}}
    with _staging(out_dir) as tmp:
        for name, module, probe, inputs, outputs in graphs:
            axes = {n: {0: "batch"} for n in inputs + outputs}
            _export_one(module, probe, tmp / name, inputs, outputs, axes, opset)
            summary["max_abs_diff"][name] = _check_onnx(tmp / name, module, probe, atol)
        (tmp / "onnx_export.json").write_text(json.dumps(summary, indent=2))
    summary["files"] = [str(out_dir / g[0]) for g in graphs]
    return summary


def _export_one(module, probe, path: Path, inputs, outputs, axes, opset: int) -> None:
    import warnings

    # Traced with autograd on: under no_grad nn.MultiheadAttention takes its fused fast path
    # (aten::_native_multi_head_attention), which has no ONNX export; the ordinary path exports as plain ops.
    with torch.enable_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python ints taken from shapes (the fixed grid)
        try:
            torch.onnx.export(module, (probe,), str(path), input_names=inputs, output_names=outputs,
                              dynamic_axes=axes, opset_version=opset, dynamo=False)
        except Exception as exc:  # the exporter raises many types; say which graph and op failed
            raise ExportError(f"ONNX export of {path.name} failed: {type(exc).__name__}: {exc}") from exc


def _check_onnx(path: Path, module: nn.Module, probe: torch.Tensor, atol: float) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: probe.numpy()})
    with torch.no_grad():
        want = module(probe)
    want = want if isinstance(want, tuple) else (want,)
    worst = max(float(abs(g - w.numpy()).max()) for g, w in zip(got, want))
    if worst > atol:
        raise ExportError(f"{path.name}: onnxruntime differs from PyTorch by {worst:.2e} (> {atol:g})")
    return worst


def _at_input_size(model: nn.Module, grid: int) -> nn.Module:
    """A copy of ``model`` whose positional embedding is already resized (as the dense path would) to ``grid``:
    the exported graph then holds the resized table as a constant instead of a traced resize."""
    model = copy.deepcopy(model)
    pos = model.visual.positional_embedding
    with torch.no_grad():
        model.visual.positional_embedding = nn.Parameter(interpolate_pos_embed(pos, (grid, grid)))
    return model


def _input_size(model: nn.Module) -> int:
    size = model.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


# ----------------------------------------------------------------------------------------------------------------

def push_folder(folder: str | os.PathLike, repo_id: str, *, private: bool = False, token: str | None = None,
                commit_message: str = "Add model exported by farslip") -> str:
    """Upload an exported folder to a Hub model repository (created if missing); the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message)
    return str(info)


def check_export_folder(out: str | os.PathLike, model_file: str | os.PathLike | None = None) -> None:
    """Refuse, before a model is loaded, an export folder that exists and is not empty, or that is the model's
    own file: an export writes a new folder."""
    out = Path(out)
    if model_file is not None and Path(model_file).exists():
        from ..core.files import refuse_overwriting_inputs

        refuse_overwriting_inputs([out], [model_file], hint="export into a new folder")
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} is a file; export into a new folder")
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out} exists and is not empty; choose a new folder")


class _staging:
    """A sibling temporary folder that becomes ``out`` only when everything in it was written: an interrupted or
    failed export leaves no half-written folder that looks finished."""

    def __init__(self, out: Path):
        self.out = out

    def __enter__(self) -> Path:
        if self.out.exists() and any(self.out.iterdir()):
            raise ExportError(f"{self.out} exists and is not empty; choose a new folder")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(dir=self.out.parent, prefix=f".{self.out.name}."))
        return self.tmp

    def __exit__(self, exc_type, *_):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        if self.out.exists():
            self.out.rmdir()
        os.replace(self.tmp, self.out)
        return False
