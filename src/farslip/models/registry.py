"""Released models by name: the registry (``resources/models.yaml``) and the entries users add.

A name resolves to everything needed to build the model in stock open_clip (architecture, activation, text
length) and to fetch its weights (a pinned file on the Hugging Face Hub, an open_clip pretrained tag, or -- for
releases no hub hosts -- instructions). ``farslip.load_model(NAME)`` and every ``--checkpoint NAME`` go through
:func:`find_entry`.

Users extend the registry with :func:`register_entry` or, for the command line, with YAML files named in the
``FARSLIP_MODEL_REGISTRY`` environment variable (paths separated by ``os.pathsep``), in the packaged file's format.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..core.errors import UsageError

ENV_REGISTRY = "FARSLIP_MODEL_REGISTRY"


class RegistryError(UsageError):
    """A registry file or entry is malformed, or a name is not in the registry."""


@dataclasses.dataclass(frozen=True)
class HubFile:
    repo: str
    file: str
    revision: str = "main"
    sha256: str | None = None


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One released model. Exactly one of ``hub``, ``open_clip_tag`` and ``url`` says where the weights are."""

    name: str
    title: str
    arch: str
    quick_gelu: bool
    family: str = ""
    hub: HubFile | None = None
    open_clip_tag: str | None = None
    url: str | None = None
    file_in_archive: str | None = None
    context_length: int | None = None
    image_size: int | None = None
    license: str = "unknown"
    citation: str = ""
    paper: dict[str, float] = dataclasses.field(default_factory=dict)
    paper_sets: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    notes: str = ""
    confirmed: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def source(self) -> str:
        """Where the weights come from, in one short string."""
        if self.hub:
            return f"hf://{self.hub.repo}/{self.hub.file}@{self.hub.revision[:7]}"
        if self.open_clip_tag:
            return f"open_clip:{self.arch}/{self.open_clip_tag}"
        return "manual download (farslip model info NAME)"

    @property
    def downloadable(self) -> bool:
        return self.hub is not None or self.open_clip_tag is not None


_ENTRY_FIELDS = {f.name for f in dataclasses.fields(ModelEntry)} - {"name", "citation"}


def _entry_from_dict(name: str, raw: dict[str, Any], citations: dict[str, str], origin: str) -> ModelEntry:
    where = f"{origin}: model {name!r}"
    if not isinstance(raw, dict):
        raise RegistryError(f"{where}: expected a mapping of fields, found {type(raw).__name__}")
    unknown = sorted(set(raw) - _ENTRY_FIELDS)
    if unknown:
        raise RegistryError(f"{where}: unknown field(s) {', '.join(unknown)}; "
                            f"known: {', '.join(sorted(_ENTRY_FIELDS))}")
    for required in ("arch", "quick_gelu"):
        if required not in raw:
            raise RegistryError(f"{where}: field {required!r} is required")
    fields = dict(raw)
    fields.setdefault("title", name)
    sources = [k for k in ("hub", "open_clip_tag", "url") if fields.get(k)]
    if len(sources) != 1:
        raise RegistryError(f"{where}: give exactly one of hub, open_clip_tag, url (found {sources or 'none'})")
    if fields.get("hub"):
        hub = fields["hub"]
        if not isinstance(hub, dict) or not {"repo", "file"} <= set(hub):
            raise RegistryError(f"{where}: hub needs repo and file (and should pin a revision)")
        try:
            fields["hub"] = HubFile(**hub)
        except TypeError as exc:
            raise RegistryError(f"{where}: hub: {exc}") from exc
    if not isinstance(fields["quick_gelu"], bool):
        raise RegistryError(f"{where}: quick_gelu must be true or false")
    family = fields.get("family", "")
    return ModelEntry(name=name.lower(), citation=citations.get(family, ""), **fields)


def parse_registry(data: dict[str, Any], origin: str) -> dict[str, ModelEntry]:
    """Entries of one registry document (``{"citations": ..., "models": {name: fields}}``)."""
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise RegistryError(f"{origin}: expected a top-level 'models:' mapping of names to entries")
    citations = data.get("citations") or {}
    return {name.lower(): _entry_from_dict(name, raw, citations, origin) for name, raw in data["models"].items()}


def read_registry_file(path: str | os.PathLike) -> dict[str, ModelEntry]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise RegistryError(f"{path}: cannot read model registry ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise RegistryError(f"{path}: not valid YAML ({exc})") from exc
    return parse_registry(data, str(path))


@functools.lru_cache(maxsize=1)
def _packaged() -> dict[str, ModelEntry]:
    text = resources.files("farslip").joinpath("resources/models.yaml").read_text()
    return parse_registry(yaml.safe_load(text), "farslip/resources/models.yaml")


_registered: dict[str, ModelEntry] = {}


def register_entry(name: str, **fields) -> ModelEntry:
    """Add (or replace) a model under ``name`` for this process, e.g. a lab's own checkpoint on its own hub::

        register_entry("lab-vit-b-16", arch="ViT-B-16", quick_gelu=True,
                       hub={"repo": "lab/clip", "file": "model.pt", "revision": "<commit>"})
    """
    entry = _entry_from_dict(name, fields, {}, "register_entry")
    _registered[entry.name] = entry
    return entry


def unregister_entry(name: str) -> None:
    _registered.pop(name.lower(), None)


def _from_environment() -> dict[str, ModelEntry]:
    entries: dict[str, ModelEntry] = {}
    for path in filter(None, os.environ.get(ENV_REGISTRY, "").split(os.pathsep)):
        entries.update(read_registry_file(path))
    return entries


def all_entries() -> dict[str, ModelEntry]:
    """Every known name: the packaged registry, then ``FARSLIP_MODEL_REGISTRY`` files, then registered entries
    (later ones win)."""
    return {**_packaged(), **_from_environment(), **_registered}


def find_entry(name: object) -> ModelEntry | None:
    """The entry called ``name`` (case-insensitive), or None -- also for anything that looks like a file path."""
    if not isinstance(name, str) or os.sep in name or "/" in name or os.path.exists(name):
        return None
    return all_entries().get(name.lower())


def get_entry(name: str) -> ModelEntry:
    """Like :func:`find_entry` but a missing name is an error that lists the known ones."""
    entry = find_entry(name)
    if entry is None:
        raise RegistryError(f"no model named {name!r} in the registry; known: {', '.join(sorted(all_entries()))}")
    return entry


def format_table(entries: dict[str, ModelEntry] | None = None) -> str:
    """The registry as a Markdown table (pasteable into an issue or a README)."""
    entries = all_entries() if entries is None else entries
    rows = [("name", "arch", "act.", "text", "weights", "confirmed", "licence", "paper")]
    for e in entries.values():
        paper = ", ".join(f"{k} {v:g}" for k, v in e.paper.items()) or "-"
        confirmed = "+".join(k for k in ("file", "revision") if e.confirmed.get(k)) or "no"
        rows.append((e.name, e.arch, "QuickGELU" if e.quick_gelu else "GELU", str(e.context_length or "?"),
                     e.source, confirmed, e.license.split(" (")[0], paper))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _follow(entry: ModelEntry, text_of) -> str:
    """A text field of the entry with the registry's "as <other entry> ..." shorthand spelt out."""
    text = str(text_of(entry))
    ref = re.match(r"as ([\w.-]+)(.*)$", text, re.S)
    other = all_entries().get(ref[1]) if ref else None
    return f"{_follow(other, text_of)}{ref[2]}" if other is not None and other is not entry else text


def describe(entry: ModelEntry) -> str:
    """Everything the registry knows about one model, for ``farslip model info NAME``."""
    lines = [f"{entry.name}: {entry.title}",
             f"  family        {entry.family or '-'}",
             f"  architecture  {entry.arch} ({'QuickGELU' if entry.quick_gelu else 'GELU'}), "
             f"text {entry.context_length or 'read off the weights'} tokens, image {entry.image_size or '?'} px"]
    if entry.hub:
        lines += [f"  hub           {entry.hub.repo}  file {entry.hub.file}",
                  f"  revision      {entry.hub.revision}",
                  f"  sha256        {entry.hub.sha256 or 'not known (not checked)'}"]
    elif entry.open_clip_tag:
        lines.append(f"  weights       open_clip pretrained tag {entry.arch} / {entry.open_clip_tag}")
    else:
        lines.append(f"  weights       not on a hub: {entry.url}" +
                     (f" (then the file {entry.file_in_archive} inside it)" if entry.file_in_archive else ""))
    lines.append(f"  licence       {entry.license}")
    for protocol, value in entry.paper.items():
        lines.append(f"  published     {value:g}  ({protocol})")
        if protocol in entry.paper_sets:
            lines.append("                " + ", ".join(f"{k} {v:g}" for k, v in entry.paper_sets[protocol].items()))
    for protocol, per_set in entry.paper_sets.items():  # tables the paper gives no mean for (retrieval)
        if protocol not in entry.paper:
            lines.append(f"  published     ({protocol}) " + ", ".join(f"{k} {v:g}" for k, v in per_set.items()))
    if entry.confirmed:
        c, how = entry.confirmed, _follow(entry, lambda e: e.confirmed.get("how", ""))
        lines.append(f"  confirmed     file name: {'yes' if c.get('file') else 'no'}, revision: "
                     f"{'yes' if c.get('revision') else 'no'} -- {how}")
    if entry.notes:
        lines.append(f"  notes         {_follow(entry, lambda e: e.notes)}")
    if entry.downloadable:
        lines.append(f"  use           farslip.load_model({entry.name!r}) / --checkpoint {entry.name}")
    if entry.citation:
        lines += ["  cite", *("    " + ln for ln in entry.citation.splitlines())]
    return "\n".join(lines)
