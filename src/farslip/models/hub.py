"""Fetching a registry entry's weights through huggingface_hub.

huggingface_hub does the hard parts: its shared cache (``HF_HOME`` / ``HF_HUB_CACHE``), resumable downloads,
``HF_HUB_OFFLINE=1`` (served from the cache, no request made), ``HF_ENDPOINT`` (mirrors, and the tests' local
stand-in). farslip adds the pinned revision from the registry, the sha256 check when the registry knows the
file's hash, and one clear line when the file cannot be had.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .checkpoint_io import CheckpointError
from .registry import ModelEntry


class ModelUnavailableError(CheckpointError):
    """A registry model's weights cannot be obtained (no network and not cached, not on the hub, bad hash)."""


def fetch_weights(entry: ModelEntry, *, cache_dir: str | os.PathLike | None = None) -> Path:
    """Local path of ``entry``'s weight file, downloaded into the Hugging Face cache on first use."""
    if entry.hub is None:
        raise ModelUnavailableError(_not_on_hub_message(entry))
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    hub = entry.hub
    where = f"{entry.name}: {hub.repo}/{hub.file} at revision {hub.revision[:12]}"
    not_cached = (f"{where} is not in the local Hugging Face cache ({_cache_dir(cache_dir)}) and the hub cannot be "
                  f"reached{' (HF_HUB_OFFLINE is set)' if _offline() else ''}. Run once with network access, or "
                  f"download the file by hand and pass its path (--checkpoint FILE --model {entry.arch}"
                  f"{'' if entry.quick_gelu else ' --no-quick-gelu'})")
    if not _offline() and not _cached(hub, cache_dir) and not hub_reachable():
        # without this, huggingface_hub retries the request for about 30 s before the same answer
        raise ModelUnavailableError(not_cached)
    try:
        path = Path(hf_hub_download(hub.repo, hub.file, revision=hub.revision, cache_dir=cache_dir,
                                    library_name="farslip", library_version=_version()))
    except LocalEntryNotFoundError as exc:  # offline (HF_HUB_OFFLINE=1 or no network) and not in the cache
        raise ModelUnavailableError(not_cached) from exc
    except GatedRepoError as exc:
        raise ModelUnavailableError(f"{where}: the repository is gated; accept its terms on the hub and log in "
                                    "(`hf auth login` or HF_TOKEN)") from exc
    except RepositoryNotFoundError as exc:
        raise ModelUnavailableError(f"{where}: repository not found on {_endpoint()}") from exc
    except RevisionNotFoundError as exc:
        raise ModelUnavailableError(f"{where}: revision not found on {_endpoint()} (the registry's pin may be "
                                    "stale; register the entry with another revision)") from exc
    except EntryNotFoundError as exc:
        raise ModelUnavailableError(f"{where}: no such file in the repository on {_endpoint()}") from exc
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        raise ModelUnavailableError(f"{where}: the hub answered {status} ({str(exc).splitlines()[0]})") from exc
    if hub.sha256:
        check_sha256(path, hub.sha256, entry.name)
    return path


def _cached(hub, cache_dir) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(hub.repo, hub.file, revision=hub.revision, cache_dir=cache_dir), str)


#: Seconds to wait for the hub's host to accept a connection before calling it unreachable.
CONNECT_TIMEOUT = 3.0


def hub_reachable(timeout: float = CONNECT_TIMEOUT) -> bool:
    """Whether the hub (``HF_ENDPOINT``) accepts a TCP connection within ``timeout`` seconds: one quick look
    before a download, so that a machine without network hears so at once. Through a proxy the answer is left to
    the download itself (True)."""
    import socket
    import urllib.request
    from urllib.parse import urlsplit

    if urllib.request.getproxies():
        return True
    url = urlsplit(_endpoint())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:  # no route, refused, unknown host name, timed out
        return False


def check_sha256(path: Path, expected: str, name: str) -> None:
    """Fail if the file's sha256 differs from the registry's (a corrupted or replaced download)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    if digest.hexdigest() != expected.lower():
        raise ModelUnavailableError(
            f"{name}: {path} has sha256 {digest.hexdigest()}, the registry expects {expected.lower()}; delete the "
            "file from the Hugging Face cache (`hf cache rm` or remove it) and load again")


def _not_on_hub_message(entry: ModelEntry) -> str:
    inner = f", unpack it and pass {entry.file_in_archive}" if entry.file_in_archive else " and pass the file"
    return (f"{entry.name} is not on a model hub: download {entry.url}{inner} as --checkpoint FILE "
            f"--model {entry.arch}{'' if entry.quick_gelu else ' --no-quick-gelu'}")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("farslip")
    except PackageNotFoundError:
        return "unknown"


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _cache_dir(cache_dir) -> str:
    from huggingface_hub import constants

    return str(cache_dir or constants.HF_HUB_CACHE)


def ensure_pretrained(arch: str | None, source: str | None) -> None:
    """Make sure the starting weights ``source`` (as :func:`farslip.load_model` reads it: a released model's name,
    an open_clip pretrained tag of ``arch``, or a file) can be had, downloading them into the cache now -- so a
    training run learns that they cannot (offline and not cached, a mistyped tag, a missing file) before it writes
    anything, in one line."""
    import open_clip

    from .registry import find_entry

    if source is None:
        return
    entry = find_entry(source)
    if entry is not None:
        if not entry.open_clip_tag:
            fetch_weights(entry)
            return
        arch, source = arch or entry.arch, entry.open_clip_tag
    elif os.path.exists(source) or os.sep in str(source) or str(source).endswith((".pt", ".pth", ".bin",
                                                                                  ".safetensors")):
        if not os.path.isfile(source):
            raise ModelUnavailableError(f"{source}: no such checkpoint file")
        return
    if arch is None:
        raise ModelUnavailableError(f"{source}: not a file and not a released model's name (farslip model list); "
                                    "an open_clip pretrained tag also needs the architecture")
    cfg = open_clip.get_pretrained_cfg(arch, source)
    if not cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "it has none"
        raise ModelUnavailableError(f"{source}: not a file, not a released model's name (farslip model list) and "
                                    f"not an open_clip pretrained tag of {arch} ({tags})")
    try:
        open_clip.download_pretrained(cfg)
    except Exception as exc:  # noqa: BLE001 -- urllib, huggingface_hub and open_clip each raise their own
        reason = (str(exc).splitlines()[0] if str(exc) else type(exc).__name__).rstrip(".")
        raise ModelUnavailableError(
            f"open_clip's {arch} {source!r} weights are not in the local cache and cannot be downloaded"
            f"{' (HF_HUB_OFFLINE is set)' if _offline() else ''}: {reason}. Run once with network access, or "
            "pass a local file as model.pretrained") from exc
