"""``farslip search``: embed images -- or the chips of large rasters -- once (cached, incremental), then query them
by text or by image.

    farslip.search.index("tiles/", checkpoint="model.pt")                 # writes tiles/.farslip-index/
    hits = farslip.search.query("a harbour with ships", index="tiles/", checkpoint="model.pt", top=20)
    farslip.search.index("scene.tif", checkpoint="model.pt", chip=224, stride=112)  # scene.tif.farslip-index/
    hits = farslip.search.query("a harbour", index="scene.tif", checkpoint="model.pt")  # hits with footprints
    farslip.search.write_geojson(hits, "hits.geojson")

A chip is a ``chip x chip`` window of the raster at its own resolution, every ``stride`` pixels (the last one in
a row or column shifted back to end at the border, as the sliding windows of the segmentation); chips without a
valid pixel are not indexed. Each hit on a chip knows its window and its footprint in the raster's CRS.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..core.distributed import batch_shard, broadcast, gather, job_ranks, world
from ..core.errors import UsageError
from ..core.files import atomic_path, atomic_write, refuse_overwriting_inputs
from ..engine import model_input_size, window_spans
from ..models.precision import Amp, autocast_for
from .classify import load_image
from .common import PNG_METADATA, load_for_inference
from .runner import DONE_DIR, check_engine

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".jp2"}
INDEX_DIR = ".farslip-index"


@dataclass
class Hit:
    path: str
    score: float
    window: tuple[int, int, int, int] | None = None   # (col, row, width, height) of a chip; None: the whole image
    crs: str | None = None                            # the raster's CRS (WKT) when georeferenced
    footprint: list[list[float]] | None = None        # the chip's corners in that CRS (closed ring)


def index_dir_for(source: Path) -> Path:
    """Where the index of a folder (inside it) or of one raster (beside it) lives."""
    return source / INDEX_DIR if source.is_dir() else source.with_name(f"{source.name}{INDEX_DIR}")


def _index_paths(source: Path, index_dir: Path | None) -> tuple[Path, Path]:
    d = index_dir or index_dir_for(source)
    return d / "embeddings.safetensors", d / "index.json"


def _model_id(checkpoint) -> str:
    p = Path(str(checkpoint))
    return f"{p.resolve()}:{p.stat().st_mtime_ns}" if p.is_file() else str(checkpoint)


def _images(source: Path) -> tuple[Path, list[Path], list[str]]:
    """The folder paths are relative to, the images to index, and the files and folders left out as farslip's own
    outputs (:func:`farslip_output`). Hidden folders (an index, completion records, staged files) and indexes of rasters
    are not walked into, nor is a sub-folder of segment or locate outputs (it holds ``.farslip-done/``)."""
    if source.is_file():
        return source.parent, [source], []
    if not source.is_dir():
        raise FileNotFoundError(f"image folder or raster not found: {source}")
    files, skipped = [], []
    for folder, subfolders, names in os.walk(source):
        here = Path(folder)
        outputs = [d for d in subfolders if (here / d / DONE_DIR).is_dir()]  # segment's or locate's --out
        skipped += [here / d for d in outputs]
        subfolders[:] = sorted(d for d in subfolders if not d.startswith(".") and not d.endswith(INDEX_DIR)
                               and d not in outputs)
        for name in sorted(names):
            p = here / name
            if name.startswith(".") or p.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            (skipped if farslip_output(p) else files).append(p)
    return source, sorted(files), [str(p.relative_to(source)) for p in sorted(skipped)]


def farslip_output(path: Path) -> bool:
    """Whether an image is one farslip wrote: a raster tagged ``SOFTWARE=farslip`` (every COG of segment and
    locate), a PNG marked ``Software: farslip`` (previews, contact sheets), or a preview that the JSON summary
    beside it names."""
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            from .raster import open_dataset

            with open_dataset(path) as src:
                return src.tags().get("SOFTWARE") == "farslip"
        if suffix == ".png":
            from PIL import Image

            with Image.open(path) as im:
                if im.info.get("Software") == PNG_METADATA["Software"]:
                    return True
            summary = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
            return isinstance(summary, dict) and Path(str(summary.get("preview", ""))).name == path.name
    except (OSError, ValueError):  # unreadable (named as a failure when it is embedded), or no summary
        return False
    return False


def chip_windows(path: Path, chip: int, stride: int) -> list[tuple[int, int, int, int]]:
    """``(col, row, width, height)`` of the chips of a raster that hold a valid pixel."""
    from .raster import Window, open_raster, read_valid

    r = open_raster(path)
    try:
        wins = [(x0, y0, x1 - x0, y1 - y0) for y0, y1 in window_spans(r.height, chip, stride)
                for x0, x1 in window_spans(r.width, chip, stride)]
        if r.all_valid:
            return wins
        return [w for w in wins if read_valid(r, Window(*w)).any()]
    finally:
        r.close()


def load_chip(path: Path, window: Sequence[int] | None, side: int):
    """The image, or its chip ``window``, as an RGB PIL image (chips at full resolution)."""
    if window is None:
        return load_image(path, side)
    from PIL import Image

    from .raster import Window, open_raster, read_rgb

    r = open_raster(path)
    try:
        return Image.fromarray(read_rgb(r, Window(*window)).transpose(1, 2, 0))
    finally:
        r.close()


def index(source: str | Path, *, checkpoint: str | Path | None = None, model=None, preprocess=None,
          arch: str | None = None, device: str = "auto", index_dir: str | Path | None = None,
          chip: int | None = None, stride: int | None = None,
          batch_size: int = 32, progress: bool = True, amp: Amp = None, engine: str = "local",
          address: str | None = None, actors: int | None = None) -> dict:
    """Embed every image under a folder (recursively), or one raster; with ``chip``, every ``chip`` px window of
    each image every ``stride`` px (default: half a chip). Items already embedded with the same model from an
    unchanged file (size and SHA-256 of the content) and the same window are reused; changed files are embedded
    again, removed files dropped. Returns counts.
    ``amp`` as in the evaluation (None: float16 autocast on CUDA, fp32 on CPU; ``"bf16"``: bfloat16).
    Under torchrun the batches to embed are split between the processes; with ``engine="ray"`` they go to the
    model actors of a Ray cluster (``address``, ``actors`` as in :func:`~farslip.infer.segment`), each writing
    its batches' embeddings to a shard in the index folder, merged into the index at the end. Either way the
    index is the one one process writes."""
    source = Path(source)
    root, files, skipped = _images(source)
    if chip is not None and chip < 8:
        raise UsageError(f"--chip {chip}: too small (at least 8 pixels)")
    stride = stride or (chip // 2 if chip else None)
    emb_path, meta_path = _index_paths(source, Path(index_dir) if index_dir else None)
    check_engine(engine, address, actors, device)
    if engine == "ray":
        from .ray_engine import refuse_model_in_memory

        refuse_model_in_memory("search index", model)
        if checkpoint is None:
            raise UsageError("search index --engine ray: each Ray actor loads the model from a checkpoint; pass one")
        mid = _model_id(checkpoint)
        plan = _plan(root, files, _previous(emb_path, meta_path, mid), chip, stride)
        new = _embed_on_ray(plan[2], EmbedJob(root, emb_path.parent / SHARD_DIR, mid, checkpoint, arch, amp),
                            batch_size, device, address, actors, progress)
        return _write_index(source, root, emb_path, meta_path, mid, chip, stride, plan, new, skipped)
    with job_ranks(device) as device:  # torchrun: the images to embed are split between the processes
        if model is None:
            model, preprocess, _ = load_for_inference(arch, checkpoint, device=device)
        mid = _model_id(checkpoint) if checkpoint is not None else getattr(model, "farslip_arch", "model")
        plan = _plan(root, files, _previous(emb_path, meta_path, mid), chip, stride)
        new = _embed_on_ranks(plan[2], model, preprocess, root, batch_size, progress, amp)
        summary = _write_index(source, root, emb_path, meta_path, mid, chip, stride, plan, new, skipped) \
            if world()[0] == 0 else None  # one writer; the others wait for it
        return broadcast(summary)


def _plan(root: Path, files: list[Path], old: dict, chip: int | None, stride: int | None) -> tuple:
    """``(entries, vectors, todo, failed)``: the items kept from the previous index with their vectors, the items
    to embed, and the files that could not be read."""
    entries, vectors, todo, failed = [], [], [], []
    for p in files:
        rel, st = str(p.relative_to(root)), p.stat()
        try:
            windows = chip_windows(p, chip, stride) if chip else [None]
            digest = file_digest(p)
        except (OSError, ValueError) as exc:
            failed.append({"path": rel, "error": str(exc)})
            continue
        for win in windows:
            entry = {"path": rel, "size": st.st_size, "mtime": st.st_mtime_ns, "inode": st.st_ino,
                     "sha256": digest, "window": win}
            hit = old.get((rel, tuple(win) if win else None))
            if hit and hit[0] == st.st_size and hit[1] == digest:
                entries.append(entry)
                vectors.append(hit[2])
            else:
                todo.append(entry)
    return entries, vectors, todo, failed


def embed_batch(model, preprocess, root: Path, items: Sequence[dict], amp: Amp) -> tuple[list, torch.Tensor, list]:
    """The items of one batch that could be read, their normalised embeddings ``[n, D]`` (on the CPU), and a
    failure record for each one that could not."""
    side = 2 * model_input_size(model)
    chunk, ims, failed = [], [], []
    for e in items:
        try:
            ims.append(preprocess(load_chip(root / e["path"], e["window"], side)))
            chunk.append(e)
        except (OSError, ValueError) as exc:
            failed.append({"path": e["path"], "window": e["window"], "error": str(exc)})
    if not ims:
        return [], torch.zeros(0, 0), failed
    with torch.no_grad(), autocast_for(model, amp):
        f = model.encode_image(torch.stack(ims).to(next(model.parameters()).device)).float()
    return chunk, (f / f.norm(dim=-1, keepdim=True)).cpu(), failed


def _embed_on_ranks(todo: list[dict], model, preprocess, root: Path, batch_size: int, progress: bool,
                    amp: Amp) -> tuple[list, list, list]:
    """The new entries, vectors and failures of every rank, in the one-process order: each rank embeds a
    contiguous run of the one process's whole batches."""
    shard = batch_shard(len(todo), batch_size)
    new_entries, new_vectors, new_failed = [], [], []
    for start in tqdm(range(shard.start, shard.stop, batch_size), desc="index", unit="batch",
                      disable=not progress or world()[0] != 0):
        chunk, vectors, failed = embed_batch(model, preprocess, root, todo[start:min(start + batch_size, shard.stop)],
                                             amp)
        new_entries, new_vectors, new_failed = new_entries + chunk, new_vectors + list(vectors), new_failed + failed
    parts = gather((new_entries, new_vectors, new_failed))
    return tuple([x for part in parts for x in part[k]] for k in range(3))


SHARD_DIR = ".shards"


@dataclass
class EmbedJob:
    """The embedding part of ``search index`` as a Ray actor runs it: each batch's embeddings go to a shard of the
    index folder, named by a digest of the model and the batch's items, so a batch tried again (or a stopped run
    started again) finds its shard instead of embedding it twice."""
    root: Path
    shards: Path                        # INDEX/.shards
    model_id: str
    checkpoint: str | Path | None = None
    arch: str | None = None
    amp: Amp = None
    command: str = "search index"

    def load(self, device: str) -> tuple:
        model, preprocess, _ = load_for_inference(self.arch, self.checkpoint, device=device)
        return model, preprocess

    def shard(self, items: Sequence[dict]) -> Path:
        text = json.dumps([self.model_id, self.amp, list(items)], sort_keys=True)
        return self.shards / f"{hashlib.sha256(text.encode()).hexdigest()[:32]}.safetensors"

    def batch(self, worker: tuple, items: list[dict]) -> str:
        path = self.shard(items)
        if not path.exists():
            chunk, vectors, failed = embed_batch(*worker, self.root, items, self.amp)
            with atomic_path(path) as tmp:
                save_file({"embeddings": vectors.contiguous()}, str(tmp),
                          metadata={"entries": json.dumps(chunk), "failed": json.dumps(failed)})
        return str(path)


def _embed_on_ray(todo: list[dict], job: EmbedJob, batch_size: int, device: str, address: str | None,
                  actors: int | None, progress: bool) -> tuple[list, list, list]:
    """The new entries, vectors and failures of the one-process batches embedded by Ray actors, read back from
    their shards in batch order (the shards are removed once read)."""
    from .ray_engine import run_batches_on_ray

    batches = [todo[s:s + batch_size] for s in range(0, len(todo), batch_size)]
    answers, _ = run_batches_on_ray(job, batches, device=device, address=address, actors=actors, progress=progress,
                                    unit="item")
    new_entries, new_vectors, new_failed = [], [], []
    for items, (shard, error) in zip(batches, answers):
        if error is not None:
            new_failed += [{"path": e["path"], "window": e["window"], "error": error} for e in items]
            continue
        with safe_open(shard, "pt") as f:
            meta, vectors = f.metadata(), f.get_tensor("embeddings")
        new_entries += json.loads(meta["entries"])
        new_vectors += list(vectors)
        new_failed += json.loads(meta["failed"])
    for shard, _ in answers:
        if shard:
            Path(shard).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        job.shards.rmdir()
    return new_entries, new_vectors, new_failed


def _write_index(source: Path, root: Path, emb_path: Path, meta_path: Path, mid: str, chip: int | None,
                 stride: int | None, plan: tuple, new: tuple, skipped: list[str]) -> dict:
    """The index (embeddings and entries, atomically) and the counts ``index`` returns (``skipped``: farslip's own
    outputs in the folder, left out)."""
    entries, vectors, todo, failed = plan
    entries, vectors, failed = entries + new[0], vectors + new[1], failed + new[2]
    matrix = torch.stack(vectors) if vectors else torch.zeros(0, 1)
    with atomic_path(emb_path) as tmp:
        save_file({"embeddings": matrix.contiguous()}, str(tmp))
    atomic_write(meta_path, json.dumps({"model": mid, "source": str(source.resolve()), "root": str(root.resolve()),
                                        "chip": chip, "stride": stride, "entries": entries, "failed": failed},
                                       indent=1))
    embedded = len(todo) - sum(1 for f in failed if "window" in f)
    return {"images": len({e["path"] for e in entries}), "items": len(entries), "embedded": embedded,
            "reused": len(entries) - embedded, "failed": len(failed), "index": str(emb_path.parent),
            "failures": [_failure_line(f) for f in failed], "skipped_farslip_outputs": len(skipped)}


def _failure_line(failure: dict) -> str:
    """``path (window ...): what went wrong``, the path said once (readers' messages often begin with it)."""
    where = failure["path"] + (f" (window {failure['window']})" if failure.get("window") else "")
    first, _, rest = failure["error"].partition(": ")
    return f"{where}: {rest if rest and first.endswith(Path(failure['path']).name) else failure['error']}"


def _previous(emb_path: Path, meta_path: Path, model_id: str) -> dict:
    """``(path, window) -> (size, sha256, vector)`` of an existing index made by the same model."""
    if not (meta_path.exists() and emb_path.exists()):
        return {}
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return {}  # damaged: embed everything again
    if not isinstance(meta, dict) or meta.get("model") != model_id:
        return {}
    try:
        emb = load_file(str(emb_path))["embeddings"]
    except Exception:  # noqa: BLE001 - a damaged index is rebuilt, not trusted
        return {}
    entries = meta.get("entries") or []
    if len(entries) != emb.shape[0]:
        return {}
    return {(e["path"], tuple(e["window"]) if e.get("window") else None): (e["size"], e.get("sha256"), emb[i])
            for i, e in enumerate(entries)}


def file_digest(path: Path) -> str:
    """SHA-256 of a file's content: a file replaced by another of the same size and time is still noticed."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def stale_files(root: Path, entries: Sequence[dict]) -> list[str]:
    """Indexed files deleted, or changed (size, mtime or inode) since they were embedded."""
    stale = []
    for rel, e in {e["path"]: e for e in entries}.items():
        try:
            st = (root / rel).stat()
        except FileNotFoundError:
            stale.append(rel)
            continue
        if (st.st_size, st.st_mtime_ns, st.st_ino) != (e["size"], e["mtime"], e.get("inode", st.st_ino)):
            stale.append(rel)
    return stale


def query(q: str | Path, *, index: str | Path, checkpoint: str | Path | None = None, model=None, preprocess=None,
          tokenizer=None, arch: str | None = None, device: str = "auto", top: int = 20,
          index_dir: str | Path | None = None, amp: Amp = None, sheet: str | Path | None = None,
          geojson: str | Path | None = None) -> list[Hit]:
    """Rank the indexed images (or chips) by cosine similarity to a text, or to an image when ``q`` is an image
    file. Hits on chips of georeferenced rasters carry their footprint. With ``sheet``, a contact sheet of the
    hits is written there (PNG); with ``geojson``, their footprints (``"auto"``: ``search_results.geojson`` beside
    the sheet when the hits are chips). Neither may be an indexed file or the query image (checked first)."""
    source = Path(index)
    emb_path, meta_path = _index_paths(source, Path(index_dir) if index_dir else None)
    if not meta_path.exists():
        raise FileNotFoundError(f"no index in {emb_path.parent}: run `farslip search index {source}` first")
    meta = _read_meta(meta_path, source)
    if checkpoint is not None and meta.get("model") != _model_id(checkpoint):
        raise UsageError(f"{source} was indexed with {meta.get('model')}, not {checkpoint}: query with that "
                         f"--checkpoint, or run `farslip search index {source}` with this one")
    root = Path(meta["root"]) if "root" in meta else source
    image_query = os.path.isfile(str(q)) and Path(q).suffix.lower() in IMAGE_SUFFIXES
    auto_geojson = geojson == "auto"
    geojson = (Path(sheet).parent if sheet else Path(".")) / "search_results.geojson" if auto_geojson else geojson
    if sheet and Path(sheet).suffix.lower() != ".png":
        raise UsageError(f"--sheet {sheet}: the contact sheet is a PNG; give a .png file name")
    if geojson and Path(geojson).suffix.lower() not in (".geojson", ".json"):
        raise UsageError(f"--geojson {geojson}: give a .geojson file name")
    refuse_overwriting_inputs([p for p in (sheet, geojson) if p],
                              [root / e["path"] for e in meta["entries"]] + ([Path(q)] if image_query else [])
                              + [emb_path, meta_path], hint="choose another --sheet / --geojson")
    if model is None:
        model, preprocess, tokenizer = load_for_inference(arch, checkpoint, device=device)
    meta = _fresh_meta(meta, meta_path, source, root, checkpoint, model, preprocess, index_dir, amp)
    hits = _rank(q, image_query, emb_path, meta, root, model, preprocess, tokenizer, top, amp)
    if sheet and hits:
        contact_sheet(hits, sheet, title=str(q))
    if geojson and hits and (not auto_geojson or any(h.window for h in hits)):
        write_geojson(hits, geojson)
    return hits


def _fresh_meta(meta: dict, meta_path: Path, source: Path, root: Path, checkpoint, model, preprocess, index_dir,
                amp: Amp) -> dict:
    """The index's entries, brought up to date first when an indexed file changed or was deleted: never rank a
    deleted file, or a replaced one by its old content."""
    stale = stale_files(root, meta["entries"])
    if not stale:
        return meta
    print(f"search: {len(stale)} indexed file(s) changed or deleted since indexing (e.g. {stale[0]}); "
          "updating the index", file=sys.stderr)
    _reindex(meta.get("source", source), checkpoint=checkpoint, model=model, preprocess=preprocess,
             index_dir=index_dir, chip=meta.get("chip"), stride=meta.get("stride"), progress=False, amp=amp)
    return _read_meta(meta_path, source)


def _rank(q, image_query: bool, emb_path: Path, meta: dict, root: Path, model, preprocess, tokenizer, top: int,
          amp: Amp) -> list[Hit]:
    device = next(model.parameters()).device
    with torch.no_grad(), autocast_for(model, amp):
        if image_query:
            v = model.encode_image(preprocess(load_image(Path(q), 2 * model_input_size(model)))[None].to(device))
        else:
            v = model.encode_text(tokenizer([str(q)]).to(device))
    v = (v / v.norm(dim=-1, keepdim=True)).float().cpu()[0]
    emb = load_file(str(emb_path))["embeddings"]
    if emb.shape[0] == 0:
        return []
    vals, idx = (emb @ v).topk(min(top, emb.shape[0]))
    return [_hit(root, meta["entries"][i], s) for s, i in zip(vals.tolist(), idx.tolist())]


def _reindex(source, **kwargs) -> dict:
    return index(source, **kwargs)  # query's keyword ``index`` hides the function there


def _read_meta(meta_path: Path, source: Path) -> dict:
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or not isinstance(meta.get("entries"), list):
            raise ValueError("no entries")
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"{meta_path}: not a farslip index ({exc}); run `farslip search index {source}` "
                         "again") from None
    return meta


def _hit(root: Path, entry: dict, score: float) -> Hit:
    path = root / entry["path"]
    window = tuple(entry["window"]) if entry.get("window") else None
    if window is None:
        return Hit(str(path), round(float(score), 4))
    from .raster import open_dataset

    with open_dataset(path) as src:
        crs = src.crs.to_wkt() if src.crs else None
        x, y, w, h = window
        ring = [list(src.transform @ (c, r)) for c, r in ((x, y), (x + w, y), (x + w, y + h), (x, y + h), (x, y))]
    return Hit(str(path), round(float(score), 4), window, crs, ring)


def write_geojson(hits: Sequence[Hit], out: str | Path) -> Path:
    """The hits as a GeoJSON FeatureCollection (RFC 7946: WGS84): each chip's footprint with rank, score, source
    raster and pixel window. Hits without a georeference (plain pictures, whole images) have a null geometry."""
    from rasterio.warp import transform_geom

    feats = []
    for rank, h in enumerate(hits, 1):
        geom = None
        if h.footprint is not None and h.crs is not None:
            geom = transform_geom(h.crs, "EPSG:4326", {"type": "Polygon", "coordinates": [h.footprint]},
                                  precision=7)  # about 1 cm, as GDAL writes RFC 7946
        feats.append({"type": "Feature", "geometry": geom,
                      "properties": {"rank": rank, "score": h.score, "source": h.path,
                                     "window": list(h.window) if h.window else None}})
    return atomic_write(out, json.dumps({"type": "FeatureCollection", "features": feats}, indent=1))


def contact_sheet(hits: Sequence[Hit], out: str | Path, title: str = "", thumb: int = 160, cols: int = 5) -> Path:
    """A PNG grid of the hits with rank and score under each thumbnail."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(1, -(-len(hits) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * thumb / 80, rows * thumb / 80 + 0.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, h in enumerate(hits):
        ax = axes.ravel()[i]
        ax.imshow(load_chip(Path(h.path), h.window, thumb))
        where = f" @{h.window[0]},{h.window[1]}" if h.window else ""
        ax.set_title(f"{i + 1}. {Path(h.path).name}{where}\n{h.score:.3f}", fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=80, format="png", metadata=PNG_METADATA)
    plt.close(fig)
    return out
