"""Statistics of an MGRS JSON: images, objects per image, categories, box sizes, caption lengths."""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

from ..core.files import atomic_path
from .validate import STAGE2_MIN_SIDE, bbox_values, load_mgrs, resolve_mgrs_path

# box side bins (square root of the box area, in pixels of the stored image)
SIZE_BINS = (0, 8, 16, 32, 64, 128, 256, 512, math.inf)


def _percentile(sorted_vals: list[float], q: float) -> float:
    if not sorted_vals:
        return 0.0
    k = (len(sorted_vals) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (k - lo)


def mgrs_stats(path_or_records) -> dict:
    """Statistics of an MGRS JSON file/folder, or of a list of records already loaded."""
    records = load_mgrs(path_or_records) if isinstance(path_or_records, (str, Path)) else path_or_records
    per_image: list[int] = []
    cats: Counter = Counter()
    cat_images: Counter = Counter()
    cat_ids: dict[str, int] = {}
    sides: list[float] = []
    rel_sides: list[float] = []
    img_sizes: Counter = Counter()
    cap_words = {"brief_caption": [], "global_caption": [], "detailed_caption": []}
    for rec in records:
        if not isinstance(rec, dict):
            continue
        seg = rec.get("segment") if isinstance(rec.get("segment"), list) else []
        per_image.append(len(seg))
        here = set()
        size = None
        for o in seg:
            if not isinstance(o, dict):
                continue
            name = o.get("category") or ("(caption only)" if o.get("cap") else "(none)")
            cats[name] += 1
            here.add(name)
            if isinstance(o.get("category_id"), int):
                cat_ids.setdefault(name, o["category_id"])
            v = bbox_values(o.get("bbox"))
            if v and len(v) == 6 and all(isinstance(x, (int, float)) for x in v):
                side = math.sqrt(max(0.0, (v[2] - v[0]) * (v[3] - v[1])))
                sides.append(side)
                if v[4] > 0 and v[5] > 0:
                    rel_sides.append(side / math.sqrt(v[4] * v[5]))
                    size = (int(v[4]), int(v[5]))
        for name in here:
            cat_images[name] += 1
        if size:
            img_sizes[size] += 1
        for k in cap_words:
            if isinstance(rec.get(k), str):
                cap_words[k].append(len(rec[k].split()))
    sp = sorted(per_image)
    ss = sorted(sides)
    bins = Counter()
    for s in sides:
        for lo, hi in zip(SIZE_BINS[:-1], SIZE_BINS[1:]):
            if lo <= s < hi:
                bins[(lo, hi)] += 1
                break
    return {
        "images": len(per_image),
        "objects": sum(per_image),
        "images_without_objects": sum(1 for n in per_image if n == 0),
        "objects_per_image": {"mean": (sum(sp) / len(sp)) if sp else 0.0, "median": _percentile(sp, 0.5),
                              "p90": _percentile(sp, 0.9), "max": sp[-1] if sp else 0, "values": per_image},
        "categories": [{"name": n, "id": cat_ids.get(n), "objects": c, "images": cat_images[n]}
                       for n, c in sorted(cats.items(), key=lambda kv: (-kv[1], kv[0]))],
        "box_side": {"min": ss[0] if ss else 0.0, "median": _percentile(ss, 0.5), "max": ss[-1] if ss else 0.0,
                     "stage2_usable": sum(1 for s in sides if s >= STAGE2_MIN_SIDE), "values": sides,
                     "relative_values": rel_sides,
                     "bins": [{"from": lo, "to": hi, "objects": bins[(lo, hi)]}
                              for lo, hi in zip(SIZE_BINS[:-1], SIZE_BINS[1:])]},
        "image_sizes": {f"{w}x{h}": n for (w, h), n in img_sizes.most_common()},
        "caption_words": {k: {"mean": sum(v) / len(v), "max": max(v)} for k, v in cap_words.items() if v},
    }


def format_stats(st: dict, top: int = 40) -> str:
    """The statistics as plain-text tables."""
    opi = st["objects_per_image"]
    lines = [
        f"images                 {st['images']}",
        f"objects                {st['objects']}",
        f"images without objects {st['images_without_objects']}",
        f"objects per image      mean {opi['mean']:.2f}  median {opi['median']:g}  p90 {opi['p90']:g}  "
        f"max {opi['max']}",
    ]
    if st["image_sizes"]:
        sizes = list(st["image_sizes"].items())
        lines.append("image sizes (by boxes) " + ", ".join(f"{k} ({v})" for k, v in sizes[:5])
                     + (f", ... {len(sizes) - 5} more" if len(sizes) > 5 else ""))
    for k, v in st["caption_words"].items():
        lines.append(f"{k:<22} {v['mean']:.1f} words on average, max {v['max']}")
    cats = st["categories"]
    width = max([len("category")] + [len(c["name"]) for c in cats[:top]])
    lines += ["", f"{'category':<{width}}  {'id':>4}  {'objects':>8}  {'images':>7}  {'share':>6}"]
    for c in cats[:top]:
        share = c["objects"] / max(1, st["objects"])
        cid = "" if c["id"] is None else c["id"]
        lines.append(f"{c['name']:<{width}}  {cid!s:>4}  {c['objects']:>8}  {c['images']:>7}  {share:>6.1%}")
    if len(cats) > top:
        lines.append(f"... {len(cats) - top} more categories")
    bs = st["box_side"]
    lines += ["", "box side sqrt(w*h) px   objects   share"]
    for b in bs["bins"]:
        hi = "inf" if b["to"] == math.inf else b["to"]
        share = b["objects"] / max(1, st["objects"])
        lines.append(f"  [{b['from']:>4}, {hi:>4})          {b['objects']:>8}  {share:>6.1%}")
    lines.append(f"median side {bs['median']:.1f} px; {bs['stage2_usable']} boxes reach {STAGE2_MIN_SIDE}x"
                 f"{STAGE2_MIN_SIDE} px of area (FarSLIP stage-2 default minimum)")
    return "\n".join(lines)


def plot_stats(st: dict, png: str | Path, title: str = "", top: int = 30) -> Path:
    """Write a 2 x 2 chart: category histogram, objects per image, box sides, caption lengths."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    cats = st["categories"][:top][::-1]
    ax = axes[0, 0]
    ax.barh([c["name"] for c in cats], [c["objects"] for c in cats], color="#4477aa")
    ax.set_title(f"objects per category (top {len(cats)})")
    ax.tick_params(axis="y", labelsize=7)
    ax = axes[0, 1]
    vals = st["objects_per_image"]["values"]
    ax.hist(vals, bins=min(50, max(1, max(vals, default=0) + 1)), color="#66aa55")
    ax.set_title("objects per image")
    ax.set_xlabel("objects")
    ax.set_ylabel("images")
    ax = axes[1, 0]
    sides = [s for s in st["box_side"]["values"] if s > 0]
    if sides:
        lo, hi = max(1.0, min(sides)), max(sides)
        edges = [lo * (hi / lo) ** (i / 40) for i in range(41)] if hi > lo else 10
        ax.hist(sides, bins=edges, color="#cc6677")
        ax.set_xscale("log")
        from matplotlib.ticker import NullFormatter, ScalarFormatter

        ax.set_xticks([t for t in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096) if lo / 2 <= t <= hi * 2])
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.axvline(STAGE2_MIN_SIDE, color="k", ls="--", lw=1, label=f"{STAGE2_MIN_SIDE} px (stage-2 minimum)")
        ax.legend(fontsize=8)
    ax.set_title("box side sqrt(w*h)")
    ax.set_xlabel("pixels")
    ax = axes[1, 1]
    capw = st["caption_words"]
    if capw:
        ax.bar(list(capw), [v["mean"] for v in capw.values()], color="#ddaa33")
        for i, v in enumerate(capw.values()):
            ax.text(i, v["mean"], f"max {v['max']}", ha="center", va="bottom", fontsize=8)
    ax.set_title("caption length (mean words)")
    fig.suptitle(title or f"{st['images']} images, {st['objects']} objects, {len(st['categories'])} categories")
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return Path(png)


def default_png_path(path: str | Path) -> Path:
    p = resolve_mgrs_path(path)
    return p.with_name(p.stem + "_stats.png")
