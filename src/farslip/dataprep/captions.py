"""Captioners: a deterministic template captioner and an MLLM captioner for OpenAI-compatible endpoints.

Both return the three caption fields of an MGRS record::

    {"brief_caption": ..., "global_caption": ..., "detailed_caption": ...}

The template captioner needs nothing but the objects (category and box), the image size and, where known, the
scene class, the land-cover fractions and the ground sampling distance. Its wording is a pure function of its
inputs (the small phrasing variety is seeded by a hash of the image key), so rebuilding gives identical text.

The MLLM captioner sends the image and its object list to any server that speaks the OpenAI chat-completions
API (vLLM, SGLang, llama.cpp server, Ollama, LM Studio, OpenAI itself) and asks for a brief and a detailed
caption as JSON. Requests are rate limited, retried with exponential back-off on connection errors, 429 and
5xx, and cached on disk (one JSON file per request), so a stopped run resumes where it stopped.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections import Counter, defaultdict
from pathlib import Path
from typing import Callable, Iterable, Sequence

from ..core.errors import FarslipError

# ------------------------------------------------------------------------------------------------ language

_NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
            "twelve")
_IRREGULAR = {"person": "people", "man": "men", "woman": "women", "child": "children", "bus": "buses",
              "roof": "roofs", "chimney": "chimneys", "sheep": "sheep", "deer": "deer", "aircraft": "aircraft"}
_UNCOUNTABLE = {"farmland", "cropland", "bare land", "grassland", "wetland", "meadow", "parkland", "desert land",
                "pasture", "vegetation", "water"}


def plural(noun: str) -> str:
    """English plural of a (possibly multi-word) noun: the last word is inflected."""
    head, _, last = noun.rpartition(" ")
    low = last.lower()
    if low in _IRREGULAR:
        p = _IRREGULAR[low]
    elif re.search(r"\d$", low):  # "boeing 737" -> "boeing 737s"
        p = last + "s"
    elif re.search(r"(s|x|z|ch|sh)$", low):
        p = last + "es"
    elif re.search(r"[^aeiou]y$", low):
        p = last[:-1] + "ies"
    else:
        p = last + "s"
    return f"{head} {p}" if head else p


def article(noun: str) -> str:
    """'a' or 'an' plus the noun (no article for uncountable nouns such as 'farmland')."""
    if noun.lower() in _UNCOUNTABLE:
        return noun
    return ("an " if re.match(r"[aeiou]", noun.lower()) and not noun.lower().startswith(("uni", "eu", "one"))
            else "a ") + noun


def count_phrase(n: int, noun: str) -> str:
    """'an airplane', 'three ships', '15 vehicles'."""
    if n == 1:
        return article(noun)
    return f"{_NUMBERS[n] if n < len(_NUMBERS) else n} {plural(noun)}"


def join_words(items: Sequence[str]) -> str:
    items = list(items)
    if not items:
        return ""
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


_POSITIONS = (("in the upper left", "at the top", "in the upper right"),
              ("on the left", "in the center", "on the right"),
              ("in the lower left", "at the bottom", "in the lower right"))


def position_phrase(box: Sequence[float], width: float, height: float) -> str:
    """Coarse position of a box centre on a 3 x 3 grid ('in the upper left', 'in the center', ...)."""
    cx = (box[0] + box[2]) / 2 / max(width, 1)
    cy = (box[1] + box[3]) / 2 / max(height, 1)
    return _POSITIONS[min(2, int(cy * 3))][min(2, int(cx * 3))]


# ------------------------------------------------------------------------------------------------ template

class TemplateCaptioner:
    """Deterministic captions from objects (and the scene, land cover and GSD where known).

    >>> cap = TemplateCaptioner()
    >>> c = cap([{"category": "airplane", "box": [10, 10, 60, 60]}], 300, 300, scene="airport")
    >>> c["brief_caption"]
    'An airport with an airplane.'
    """

    openings = ("A satellite image of", "An aerial image of", "A remote sensing image of")
    max_categories = 6  # the detailed caption describes at most this many categories

    def __init__(self, vary_opening: bool = True):
        self.vary_opening = vary_opening

    def __call__(self, objects: Iterable[dict], width: int, height: int, scene: str | Sequence[str] | None = None,
                 land_cover: dict[str, float] | None = None, gsd: float | None = None,
                 key: str | None = None) -> dict[str, str]:
        objs = [o for o in objects if o.get("category")]
        counts = Counter(o["category"] for o in objs)
        order = sorted(counts, key=lambda c: (-counts[c], c))
        summary = [count_phrase(counts[c], c) for c in order]
        h = zlib.crc32((key or "").encode("utf-8"))
        opening = self.openings[h % len(self.openings)] if self.vary_opening and key else self.openings[0]
        scenes = [scene] if isinstance(scene, str) else list(scene or ())
        subject = join_words([article(s) for s in scenes]) or None  # "a harbor and a forest"

        # brief: the scene (or the image) and its two most frequent categories
        if subject:
            brief = (_cap(subject) + f" with {join_words(summary[:2])}." if summary
                     else f"An aerial view of {subject}.")
        elif summary:
            brief = f"An aerial image with {join_words(summary[:2])}."
        else:
            brief = "An aerial image with no annotated objects."

        # global: one sentence, every category
        if subject:
            glob = f"{opening} {subject}" + (f" with {join_words(summary)}" if summary else "") + "."
        elif summary:
            glob = f"{opening} {join_words(summary)}."
        else:
            glob = f"{opening} an area with no annotated objects."

        # detailed: opening, per-category positions and sizes, land cover, resolution
        sents = [f"{opening} {subject}." if subject else f"{opening} an area seen from above."]
        if summary:
            sents.append(f"It contains {join_words(summary)}.")
        else:
            sents.append("No distinct objects are annotated in it.")
        by_cat = defaultdict(list)
        for o in objs:
            by_cat[o["category"]].append(o)
        for cat in order[: self.max_categories]:
            sents.append(self._category_sentence(cat, by_cat[cat], width, height, gsd))
        if land_cover:
            cover = [(k, v) for k, v in sorted(land_cover.items(), key=lambda kv: (-kv[1], kv[0])) if v >= 0.05]
            if cover:
                parts = [f"{name} about {round(100 * frac / 5) * 5 or 5}%" for name, frac in cover[:3]]
                parts[0] = parts[0].replace(" about", " covers about", 1)
                sents.append(_cap(join_words(parts)) + " of the image.")
        if gsd:
            sents.append(f"The ground sampling distance is about {gsd:.2g} m per pixel.")
        return {"brief_caption": brief, "global_caption": glob, "detailed_caption": " ".join(sents)}

    def _category_sentence(self, cat: str, objs: list[dict], width: int, height: int, gsd: float | None) -> str:
        sizes = [max(1e-6, (o["box"][2] - o["box"][0]) * (o["box"][3] - o["box"][1])) ** 0.5 for o in objs]
        img_side = (width * height) ** 0.5
        pos = Counter(position_phrase(o["box"], width, height) for o in objs)
        if len(objs) == 1:
            size = sizes[0] / img_side
            adj = "large " if size >= 0.35 else ("small " if size < 0.05 else "")
            s = f"The {adj}{cat} is {next(iter(pos))}"
            if gsd:
                o = objs[0]
                length = max(o["box"][2] - o["box"][0], o["box"][3] - o["box"][1]) * gsd
                s += f", about {_round_metres(length)} m across"
            return s + "."
        groups = sorted(pos.items(), key=lambda kv: (-kv[1], kv[0]))
        if len(groups) == 1:
            s = f"The {plural(cat)} are all {groups[0][0]}"
        else:
            num = [_NUMBERS[n] if n < len(_NUMBERS) else str(n) for _, n in groups]
            verb = "is" if groups[0][1] == 1 else "are"
            parts = [f"{_cap(num[0])} of the {plural(cat)} {verb} {groups[0][0]}"]
            parts += [f"{num[i]} {groups[i][0]}" for i in range(1, min(4, len(groups)))]
            if len(groups) > 4:
                parts.append("the rest elsewhere")
            s = join_words(parts)
        ratio = max(sizes) / max(min(sizes), 1e-6)
        if ratio >= 2.5:
            s += "; they vary a lot in size"
        elif ratio <= 1.3:
            s += "; they are of similar size"
        return s + "."


def _round_metres(v: float) -> int | float:
    if v >= 10:
        return int(round(v / 5) * 5)
    return round(v, 1)


# ------------------------------------------------------------------------------------------------ MLLM client

class MLLMError(FarslipError, RuntimeError):
    """The endpoint refused a request, or kept failing after all retries."""


class RateLimiter:
    """At most ``rate`` calls per second across threads (evenly spaced). ``rate`` None or <= 0: unlimited."""

    def __init__(self, rate: float | None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.interval = 1.0 / rate if rate and rate > 0 else 0.0
        self.clock, self.sleep = clock, sleep
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = self.clock()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            self.sleep(start - now)


_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class OpenAIChatClient:
    """Minimal, dependency-free client for ``POST {base_url}/chat/completions``.

    Args:
        base_url: e.g. ``http://localhost:8000/v1`` (vLLM's default).
        model: model name the server expects.
        api_key: bearer token; default: the environment variable named by ``api_key_env``.
        rate: requests per second (None: unlimited).
        max_retries: retries after the first attempt, on connection errors, timeouts, 408/409/425/429/5xx.
        backoff: first retry delay in seconds, doubled each retry up to ``max_backoff``; a ``Retry-After``
            header, when sent, wins.
        cache_dir: folder for the on-disk response cache (None: no cache).
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 timeout: float = 120.0, max_retries: int = 5, backoff: float = 1.0, max_backoff: float = 60.0,
                 rate: float | None = None, cache_dir: str | Path | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key if api_key is not None else os.environ.get(api_key_env)
        self.timeout, self.max_retries, self.backoff, self.max_backoff = timeout, max_retries, backoff, max_backoff
        self.sleep = sleep
        self.limiter = RateLimiter(rate, sleep=sleep)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.stats = Counter()  # requests, retries, cache_hits, failures
        self._stats_lock = threading.Lock()

    def _count(self, key: str, n: int = 1) -> None:
        with self._stats_lock:
            self.stats[key] += n

    def request_key(self, payload: dict) -> str:
        return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=True).encode()).hexdigest()

    def _cache_path(self, key: str) -> Path | None:
        return self.cache_dir / key[:2] / f"{key}.json" if self.cache_dir else None

    def chat(self, messages: list[dict], **params) -> str:
        """Send one chat request (or answer it from the cache); return the assistant message's text."""
        payload = {"model": self.model, "messages": messages, **params}
        key = self.request_key(payload)
        cpath = self._cache_path(key)
        if cpath is not None and cpath.is_file():
            try:
                content = json.loads(cpath.read_text(encoding="utf-8"))["content"]
                self._count("cache_hits")
                return content
            except (json.JSONDecodeError, KeyError, OSError):
                pass  # a damaged cache entry is simply re-requested
        body = json.dumps(payload).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last_error = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                self._count("retries")
            self.limiter.wait()
            self._count("requests")
            delay = None
            try:
                req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    data = json.loads(resp.read().decode("utf-8"))
                content = _message_text(data)
                if cpath is not None:
                    _atomic_write_text(cpath, json.dumps({"model": self.model, "content": content}))
                return content
            except urllib.error.HTTPError as exc:
                detail = exc.read()[:300].decode("utf-8", "replace") if exc.fp else ""
                last_error = f"HTTP {exc.code} from {self.url}: {detail}".strip()
                if exc.code not in _RETRY_STATUS:
                    self._count("failures")
                    raise MLLMError(last_error) from exc
                retry_after = exc.headers.get("Retry-After") if exc.headers else None
                if retry_after:
                    try:
                        delay = float(retry_after)
                    except ValueError:
                        delay = None
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
                last_error = f"cannot reach {self.url}: {getattr(exc, 'reason', exc)}"
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError) as exc:
                last_error = f"unexpected response from {self.url}: {exc!r}"
            if attempt < self.max_retries:
                self.sleep(delay if delay is not None else min(self.max_backoff, self.backoff * 2 ** attempt))
        self._count("failures")
        raise MLLMError(f"giving up after {self.max_retries + 1} attempts: {last_error}")


def _message_text(data: dict) -> str:
    content = data["choices"][0]["message"]["content"]
    if isinstance(content, list):  # some servers return content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str):
        raise TypeError(f"message content is {type(content).__name__}")
    return content


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------ MLLM captioner

DEFAULT_PROMPT = (
    "You are describing a remote-sensing image for a training set. The annotated objects, as category and pixel "
    "box [x1, y1, x2, y2] in a {width} x {height} image, are:\n{objects}\n"
    "{context}"
    "Describe only what is visible. Answer with JSON only, no other text: "
    '{{"brief": "<one short sentence, under 20 words>", '
    '"detailed": "<three to six sentences: scene type, land cover, the objects with counts, positions and '
    'spatial relations>"}}'
)


def parse_caption_reply(text: str) -> dict[str, str]:
    """Turn a model's reply into ``{"brief": ..., "detailed": ...}``: JSON (inside code fences or not) if it
    parses, otherwise the whole text as the detailed caption and its first sentence as the brief one."""
    t = text.strip()
    t = re.sub(r"^```(?:json)?\s*|\s*```$", "", t, flags=re.IGNORECASE)
    m = re.search(r"\{.*\}", t, flags=re.DOTALL)
    if m:
        try:
            d = json.loads(m.group(0))
            brief, detailed = str(d.get("brief", "")).strip(), str(d.get("detailed", "")).strip()
            if brief or detailed:
                return {"brief": brief or detailed.split(". ")[0].rstrip(".") + ".", "detailed": detailed or brief}
        except json.JSONDecodeError:
            pass
    t = " ".join(t.split())
    if not t:
        raise ValueError("empty reply")
    first = re.split(r"(?<=[.!?])\s", t, maxsplit=1)[0]
    return {"brief": first, "detailed": t}


class MLLMCaptioner:
    """Captions from a multimodal LLM behind an OpenAI-compatible endpoint.

    ``captioner(image_path, objects, width, height, scene=None)`` returns the three caption fields
    (``global_caption`` = the brief caption). Failures raise :class:`MLLMError`; :meth:`caption_many` catches
    them per image and falls back to the template captioner.
    """

    def __init__(self, client: OpenAIChatClient, prompt: str = DEFAULT_PROMPT, max_side: int = 1024,
                 max_objects: int = 60, max_tokens: int = 400, temperature: float = 0.0):
        self.client, self.prompt, self.max_side, self.max_objects = client, prompt, max_side, max_objects
        self.params = {"max_tokens": max_tokens, "temperature": temperature}

    def messages(self, image_path: str | Path, objects: Sequence[dict], width: int, height: int,
                 scene: str | None = None) -> list[dict]:
        lines = [f"- {o['category']}: [{', '.join(str(int(round(v))) for v in o['box'][:4])}]"
                 for o in list(objects)[: self.max_objects]]
        if len(objects) > self.max_objects:
            lines.append(f"- ... and {len(objects) - self.max_objects} more")
        context = f"The scene is known to be: {scene}.\n" if scene else ""
        text = self.prompt.format(width=width, height=height, objects="\n".join(lines) or "(none)",
                                  context=context)
        return [{"role": "user", "content": [
            {"type": "text", "text": text},
            {"type": "image_url", "image_url": {"url": _data_url(image_path, self.max_side)}}]}]

    def __call__(self, image_path: str | Path, objects: Sequence[dict], width: int, height: int,
                 scene: str | None = None) -> dict[str, str]:
        reply = self.client.chat(self.messages(image_path, objects, width, height, scene), **self.params)
        try:
            c = parse_caption_reply(reply)
        except ValueError as exc:
            raise MLLMError(f"{image_path}: {exc}") from exc
        return {"brief_caption": c["brief"], "global_caption": c["brief"], "detailed_caption": c["detailed"]}

    def caption_many(self, jobs: Sequence[dict], workers: int = 4, progress: bool = True,
                     fallback: TemplateCaptioner | None = None) -> tuple[list[dict], list[tuple[int, str]]]:
        """Caption ``jobs`` (dicts with image_path, objects, width, height, optional scene, key) concurrently.

        Returns the captions in job order and the failures as (job index, message); a failed job gets the
        template captions instead."""
        from concurrent.futures import ThreadPoolExecutor

        from tqdm.auto import tqdm

        fallback = fallback or TemplateCaptioner()
        results: list[dict | None] = [None] * len(jobs)
        failures: list[tuple[int, str]] = []

        def one(i: int) -> None:
            j = jobs[i]
            try:
                results[i] = self(j["image_path"], j["objects"], j["width"], j["height"], j.get("scene"))
            except (MLLMError, OSError) as exc:
                failures.append((i, str(exc)))
                results[i] = fallback(j["objects"], j["width"], j["height"], scene=j.get("scene"), key=j.get("key"))

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, \
                tqdm(total=len(jobs), desc="mllm captions", unit="img", disable=not progress) as bar:
            for _ in pool.map(one, range(len(jobs))):
                bar.update(1)
        failures.sort()
        return [r for r in results if r is not None], failures


def _data_url(path: str | Path, max_side: int) -> str:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        if max(im.size) > max_side:
            im.thumbnail((max_side, max_side), Image.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
