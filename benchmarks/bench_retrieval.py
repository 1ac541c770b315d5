"""Retrieval ranking at 30,000 texts x 10,000 images (random L2-normalised 512-d features, 3 captions per image).

* ``vectorised``: ``farslip.eval.retrieval.rank_both_ways`` exactly as ``farslip.eval.retrieval.retrieval``
  calls it: one text x image score matrix serves both directions; ranks by comparison with the best true
  partner (gathers, byte-counted comparisons), the official tie order re-checked only where it could matter at
  the reported cutoffs (R@1/5/10/100).
* ``vectorised_per_direction``: ``rank_queries`` once per direction (two matrix products), for the record.
* ``per_query_loop``: the official test script's loop: for each query ``logit_scale * q @ gallery.T``,
  ``torch.argsort(descending=True)``, position of the first true partner. It is timed on a sample of queries
  in each direction and extrapolated to all queries (stated in the results), and its ranks are checked against
  the vectorised ones on that sample: hit or miss at every reported cutoff must agree (that is what the
  vectorised ranking promises with cutoffs; ranks beyond the last cutoff are not re-checked against tie order).
"""
from __future__ import annotations

import time

from common import emit, median, run_child, set_threads

KS = (1, 5, 10, 100)


def loop_ranks(queries, gallery, positives, idx, logit_scale=100.0):
    import torch

    out = []
    for i in idx:
        logits = logit_scale * queries[i] @ gallery.t()
        ranking = torch.argsort(logits, descending=True)
        pos = torch.as_tensor(positives[i])
        hit = torch.isin(ranking, pos).nonzero()
        out.append(int(hit[0, 0]) if len(hit) else gallery.shape[0])
    return torch.tensor(out)


def child(p: dict) -> None:
    import torch
    import torch.nn.functional as F

    from farslip.eval.retrieval import rank_both_ways, rank_queries

    set_threads(p["threads"])
    g = torch.Generator().manual_seed(0)
    T, I, D, per = p["texts"], p["images"], 512, p["texts"] // p["images"]
    img = F.normalize(torch.randn(I, D, generator=g), dim=-1)
    # a caption lies near its image, so the ranks are not uniformly random
    txt = F.normalize(img.repeat_interleave(per, 0) + 1.2 * torch.randn(T, D, generator=g), dim=-1)
    t2i = [[t // per] for t in range(T)]
    i2t = [list(range(i * per, (i + 1) * per)) for i in range(I)]

    dev = p.get("device", "cpu")  # where the score blocks are computed (the features stay on the CPU)

    def vectorised():
        return rank_both_ways(txt, img, t2i, i2t, ties="official", ks=KS, device=dev)

    def per_direction():
        return (rank_queries(txt, img, t2i, ties="official", ks=KS, device=dev),
                rank_queries(img, txt, i2t, ties="official", ks=KS, device=dev))

    ranks = vectorised()  # warm-up
    ranks2 = per_direction()
    same_two_ways = all(torch.equal(a < k, b < k) for a, b in zip(ranks, ranks2) for k in KS)
    times, times2 = [], []
    for _ in range(p["repeats"]):
        t = time.perf_counter()
        vectorised()
        times.append(time.perf_counter() - t)
        t = time.perf_counter()
        per_direction()
        times2.append(time.perf_counter() - t)
    sample = {}
    loop_total = 0.0
    for name, q, gal, pos, full in (("text2img", txt, img, t2i, ranks[0]), ("img2text", img, txt, i2t, ranks[1])):
        n = min(p["loop_sample"], q.shape[0])
        idx = torch.randperm(q.shape[0], generator=g)[:n].tolist()
        loop_ranks(q, gal, pos, idx[:20])  # warm-up
        t = time.perf_counter()
        got = loop_ranks(q, gal, pos, idx)
        dt = time.perf_counter() - t
        est = dt / n * q.shape[0]
        loop_total += est
        mine = full[idx]
        sample[name] = {"queries": q.shape[0], "sampled": n, "sample_s": dt, "extrapolated_s": est,
                        "hits_equal_at_cutoffs": all(torch.equal(got < k, mine < k) for k in KS),
                        "ranks_equal": int((got == mine).sum()), "ranks_differ": int((got != mine).sum()),
                        "ranks_differ_below_100": int(((got != mine) & (torch.minimum(got, mine) < 100)).sum()),
                        "R@1": float((full < 1).float().mean()), "R@10": float((full < 10).float().mean())}
    emit({"vectorised_s": median(times), "vectorised_times": times, "loop_extrapolated_s": loop_total,
          "per_direction_s": median(times2), "per_direction_times": times2, "same_hits_both_ways": same_two_ways,
          "loop": sample, "speedup": loop_total / median(times),
          "speedup_per_direction": loop_total / median(times2)})


def run(cfg: dict, log) -> dict:
    log(f"[retrieval] {cfg['ret_texts']} texts x {cfg['ret_images']} images; loop sampled on "
        f"{cfg['ret_loop_sample']} queries per direction")
    r = run_child("retrieval", {"texts": cfg["ret_texts"], "images": cfg["ret_images"], "repeats": cfg["ret_repeats"],
                                "loop_sample": cfg["ret_loop_sample"], "threads": cfg["threads"],
                                "device": cfg["device"]}, cfg["threads"])
    log(f"[retrieval] vectorised {r['vectorised_s']:.2f} s (two products: {r['per_direction_s']:.2f} s), "
        f"per-query loop {r['loop_extrapolated_s']:.1f} s (extrapolated): {r['speedup']:.1f}x; hits at every "
        f"cutoff equal on the sample: {all(s['hits_equal_at_cutoffs'] for s in r['loop'].values())}")
    return r


CHILDREN = {"retrieval": child}
