"""Read and write CLIP checkpoints in every form seen in the wild, without executing pickled code.

Forms read (spec section 2):
  * a raw state dict, ``{"state_dict": ...}`` (optionally with a DDP ``module.`` prefix), saved with torch.save;
  * safetensors files;
  * OpenAI TorchScript archives (read as a zip: the pickled module tree is walked with a restricted unpickler
    that only rebuilds tensors, so no TorchScript or Python code ever runs);
  * farslip's own checkpoints, which carry ``farslip_meta`` (architecture, model config, settings).

Everything goes through ``torch.load(weights_only=True)`` or safetensors, or the restricted unpickler below.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..core.errors import FarslipError

META_KEY = "farslip_meta"

# Keys that appear in some checkpoints but are not CLIP parameters: TorchScript attributes of OpenAI archives,
# the Long-CLIP masks of the official FarSLIP fork, and training bookkeeping.
NON_PARAMETER_KEYS = {"input_resolution", "context_length", "vocab_size", "mask1", "mask2"}


class CheckpointError(FarslipError, RuntimeError):
    """A checkpoint could not be read or does not fit the requested model."""


def read_checkpoint(path: str | os.PathLike, *, mmap: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Return ``(state_dict, meta)`` for a checkpoint file of any supported form.

    ``meta`` is farslip's metadata (empty for foreign checkpoints). The state dict has the DDP prefix removed,
    non-parameter entries dropped and tensors in their stored dtype. A file that is not a checkpoint, or a cut-off
    one, is named with what it is (:func:`file_form`). ``mmap``: a torch file's tensors are mapped from the file
    rather than read into memory (a multi-GB checkpoint is then not held twice while a model takes its weights).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    form = file_form(path)
    try:
        if form == "safetensors":
            state, meta = _read_safetensors(path)
        elif form in ("zip", "pickle") and is_torchscript_archive(path):
            state, meta = _read_torchscript(path), {}
        elif form in ("zip", "pickle"):
            state, meta = _read_torch_pickle(path, mmap and form == "zip")
        else:
            raise CheckpointError(f"{path}: not a checkpoint: {form}")
    except CheckpointError:
        raise
    except Exception as exc:  # truncated or corrupt files raise whatever the format's reader meets first
        raise CheckpointError(f"{path}: {unreadable(path, exc)}") from exc
    return clean_state_dict(state, source=str(path)), meta


#: The legacy (pre-1.6) torch.save format opens with this number, pickled (``torch.serialization.MAGIC_NUMBER``).
_LEGACY_TORCH = b"\x8a\x0a" + (0x1950a86a20f9469cfc6c).to_bytes(10, "little")
#: Formats recognised by their first bytes, for the message about a file that is not a checkpoint.
_OTHER_FORMATS = ((b"\x89HDF", "an HDF5 file (Keras/TensorFlow weights?)"), (b"GGUF", "a GGUF file (llama.cpp)"),
                  (b"\x93NUMPY", "a NumPy .npy array"), (b"\x1f\x8b", "a gzip-compressed file (unpack it first)"),
                  (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"II*\x00", "a TIFF image"),
                  (b"MM\x00*", "a TIFF image"), (b"%PDF", "a PDF document"))


def file_form(path: Path) -> str:
    """How a file is stored, from its first bytes: ``safetensors``, ``zip`` (torch.save's archive, TorchScript),
    ``pickle`` (the legacy torch format) -- or, for anything else, what the file is, in words."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if not head:
        return "the file is empty"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 1:
        return "safetensors"  # an 8-byte header length, then the JSON header
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    for magic, what in _OTHER_FORMATS:
        if head.startswith(magic):
            return what
    if b"\x00" not in head:
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is not None:
            return _text_form(text)
    return f"an unknown format (it begins with the bytes {head[:8].hex(' ')})"


def _text_form(text: str) -> str:
    start = text.lstrip()[:60].splitlines()[0] if text.strip() else ""
    if start.startswith("version https://git-lfs"):
        return "a Git LFS pointer, not the weights (run `git lfs pull` where it came from)"
    if start.lower().startswith(("<!doctype html", "<html")):
        return "an HTML page (a download that saved an error or login page?)"
    return f"a text file (it begins {start!r})"


def unreadable(path: Path, exc: BaseException) -> str:
    """What is wrong with a checkpoint file its reader failed on, in one line: cut off, damaged, or holding
    objects that are not tensors -- never PyTorch's advice to load it with ``weights_only=False``."""
    form = file_form(path)
    if form == "zip" and not zipfile.is_zipfile(path):
        return ("truncated: a torch checkpoint (zip archive) whose end is missing (an interrupted download or "
                "copy?)")
    if form == "pickle" and _head(path, 2 + len(_LEGACY_TORCH))[2:] != _LEGACY_TORCH:
        return ("a plain Python pickle, not a torch checkpoint; farslip never unpickles objects: save the weights "
                "with torch.save(model.state_dict(), ...) or as safetensors")
    found = _unsupported_global(exc)
    if found:
        return (f"holds Python objects besides tensors ({found}); farslip never executes pickled code: re-save "
                "the weights as a plain state dict (torch.save(model.state_dict(), ...)) or as safetensors")
    kind = {"safetensors": "safetensors file", "zip": "torch checkpoint (zip archive)",
            "pickle": "torch checkpoint (legacy format)"}.get(form)
    if kind is None:
        return f"not a checkpoint: {form}"
    return f"a {kind} that is truncated or corrupt ({type(exc).__name__}: {_gist(exc)})"


def _head(path: Path, n: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _unsupported_global(exc: BaseException) -> str | None:
    """The class a pickle names that ``torch.load(weights_only=True)`` refuses (``GLOBAL module.name``)."""
    import re

    match = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
    return match.group(1) if match else None


def _gist(exc: BaseException, limit: int = 160) -> str:
    """The informative part of a reader's (often multi-paragraph) error message, shortened for one line; the
    sentences that advise ``weights_only=False`` (running the file's code) are left out."""
    import re

    sentences = re.split(r"(?<=[.!?])\s+", " ".join(str(exc).split()))
    kept = [t for t in sentences if t and "weights_only" not in t and "weights only" not in t.lower()]
    line = " ".join(kept[:2]) or type(exc).__name__
    return line if len(line) <= limit else line[:limit - 3] + "..."


def clean_state_dict(state: dict[str, Any], source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Strip ``module.`` prefixes, drop non-parameter keys, keep tensors only."""
    out = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        while key.startswith("module."):
            key = key[len("module."):]
        if key.split(".")[-1] in NON_PARAMETER_KEYS or key.split(".")[-1] == "attn_mask":
            continue
        out[key] = value
    if not out:
        raise CheckpointError(f"{source}: no tensors found (is this a CLIP checkpoint?)")
    return out


def _read_torch_pickle(path: Path, mmap: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    # errors: read_checkpoint says what the file is
    obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    meta = obj.get(META_KEY) or {}
    if obj.get("sharded"):  # a sharded training checkpoint (FSDP): the weights are in the folder it names
        return read_sharded_model(path.parent / obj["sharded"]), meta
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj.get(wrapper), dict):
            return obj[wrapper], meta
    return obj, meta


def read_sharded_model(folder: Path) -> dict[str, torch.Tensor]:
    """The whole model state of a ``torch.distributed.checkpoint`` folder written by sharded training
    (farslip.train.sharding), read in this one process, without a process group."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    if not Path(folder).is_dir():
        raise CheckpointError(f"{folder}: the sharded model this checkpoint names is missing")
    reader = dcp.FileSystemReader(str(folder))
    shapes = reader.read_metadata().state_dict_metadata
    model = {k[len("model."):]: torch.empty(m.size, dtype=m.properties.dtype) for k, m in shapes.items()
             if k.startswith("model.") and isinstance(m, TensorStorageMetadata)}
    state = {"model": model}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(state, storage_reader=reader, no_dist=True)
    return state["model"]


def _read_safetensors(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from safetensors import safe_open

    state = {}
    with safe_open(str(path), framework="pt", device="cpu") as f:
        raw_meta = f.metadata() or {}
        for key in f.keys():
            state[key] = f.get_tensor(key)
    meta = json.loads(raw_meta[META_KEY]) if META_KEY in raw_meta else {}
    return state, meta


# ----------------------------------------------------------------------------------------------------------------
# TorchScript archives, read without torch.jit.load

def is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(name.split("/", 1)[-1].startswith("code/") for name in zf.namelist())


class _ScriptObject:
    """Stands in for a ``__torch__.*`` module class: it only keeps the pickled attribute dict."""

    def __init__(self, *args, **kwargs):
        self.state = {}

    def __setstate__(self, state):
        self.state = state if isinstance(state, dict) else {}


_SAFE_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch", "device"),
    # TorchScript's list/type-tag builders: plain constructors of Python lists, nothing executes.
    ("torch.jit._pickle", "build_intlist"),
    ("torch.jit._pickle", "build_doublelist"),
    ("torch.jit._pickle", "build_boollist"),
    ("torch.jit._pickle", "build_tensorlist"),
    ("torch.jit._pickle", "build_genericlist"),
    ("torch.jit._pickle", "restore_type_tag"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str):
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix = archive, prefix

    def find_class(self, module, name):
        if module.startswith("__torch__"):
            return _ScriptObject
        if (module, name) in _SAFE_GLOBALS:
            import importlib

            return getattr(importlib.import_module(module), name)
        if module == "torch" and name.endswith("Storage"):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from a TorchScript archive")

    def persistent_load(self, pid):
        kind, storage_type, key, _location, numel = pid
        assert kind == "storage"
        dtype = storage_type.dtype if hasattr(storage_type, "dtype") else storage_type(0).dtype
        raw = self.archive.read(f"{self.prefix}data/{key}")
        untyped = torch.UntypedStorage.from_buffer(raw, dtype=torch.uint8) if raw else torch.UntypedStorage(0)
        return torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)


class _Inert:
    """Stands in for any other object a pickle names (a training run's hyper-parameters, callbacks, even a
    payload): it accepts whatever the pickle hands it and keeps nothing, so no foreign code ever runs."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __call__(self, *args, **kwargs):
        return _Inert()


class _TensorsOnlyUnpickler(_RestrictedUnpickler):
    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except pickle.UnpicklingError:
            return _Inert


def load_tensors_only(path: str | os.PathLike) -> Any:
    """``torch.load(weights_only=True)`` of a torch.save file; when its pickle also holds objects that loader
    refuses (PyTorch-Lightning checkpoints keep hyper-parameters and callbacks beside the weights), the file is
    read again with a restricted unpickler that rebuilds tensors and plain containers and replaces every other
    object by an inert placeholder -- no pickled code runs either way."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if not zipfile.is_zipfile(path):
            raise
    with zipfile.ZipFile(path) as zf:
        pkl = next((n for n in zf.namelist() if n.endswith("data.pkl") and n.count("/") == 1), None)
        if pkl is None:
            raise pickle.UnpicklingError(f"{path}: no data.pkl in the archive")
        with warnings.catch_warnings():  # legacy storage classes name the dtype; torch warns on their use
            warnings.simplefilter("ignore", UserWarning)
            return _TensorsOnlyUnpickler(zf.read(pkl), zf, pkl[: -len("data.pkl")]).load()


def _read_torchscript(path: Path) -> dict[str, torch.Tensor]:
    with zipfile.ZipFile(path) as zf:
        pkl = next(n for n in zf.namelist() if n.endswith("data.pkl") and n.count("/") == 1)
        prefix = pkl[: -len("data.pkl")]
        try:
            with warnings.catch_warnings():  # legacy storage classes name the dtype; torch warns on their use
                warnings.simplefilter("ignore", UserWarning)
                root = _RestrictedUnpickler(zf.read(pkl), zf, prefix).load()
        except pickle.UnpicklingError as exc:
            raise CheckpointError(f"{path}: unsupported TorchScript archive: {exc}") from exc
    state: dict[str, torch.Tensor] = {}
    _walk_script_object(root, "", state)
    return state


def _walk_script_object(obj: Any, prefix: str, out: dict[str, torch.Tensor]) -> None:
    if isinstance(obj, _ScriptObject):
        for name, value in obj.state.items():
            _walk_script_object(value, f"{prefix}{name}.", out)
    elif isinstance(obj, torch.Tensor):
        out[prefix[:-1]] = obj.detach().clone()


# ----------------------------------------------------------------------------------------------------------------
# Writing

def write_checkpoint(path: str | os.PathLike, state_dict: dict[str, torch.Tensor], meta: dict[str, Any],
                     extra: dict[str, Any] | None = None) -> Path:
    """Write a self-describing checkpoint atomically (temporary file, then rename).

    ``.safetensors`` paths store the weights with the metadata as JSON; other paths use torch.save with plain
    containers only, so ``torch.load(weights_only=True)`` reads them back.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
            save_file(tensors, tmp, metadata={META_KEY: json.dumps(meta)})
        else:
            payload = {"state_dict": {k: v.detach().cpu() for k, v in state_dict.items()}, META_KEY: meta}
            payload.update(extra or {})
            torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
