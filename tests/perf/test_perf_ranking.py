"""Fast path of retrieval ranking (gathers + byte-counting instead of dense masks) against the straightforward one."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from farslip.eval.metrics import (_official_row_rank, best_positive_rank, best_positive_rank_indexed, count_true,
                                  count_true_columns)
from farslip.eval.retrieval import rank_both_ways, rank_queries


@pytest.mark.parametrize("shape", [(3, 1024), (5, 8000), (7, 10000), (2, 1016 * 3), (4, 30000), (3, 1023),
                                   (3, 2049), (1, 127 * 8 * 9 + 8)])
@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_count_true_equals_sum(shape, p):
    g = torch.Generator().manual_seed(sum(shape))
    m = torch.rand(*shape, generator=g) < p
    assert torch.equal(count_true(m), m.sum(dim=1))
    assert torch.equal(count_true(m[:, 1:]), m[:, 1:].sum(dim=1))       # not contiguous: plain sum
    assert torch.equal(count_true(m.t().contiguous().t()), m.sum(dim=1))
    mt = m.t().contiguous()                                             # the column twin
    assert torch.equal(count_true_columns(mt), mt.sum(dim=0))
    assert torch.equal(count_true_columns(mt[:, :8]), mt[:, :8].sum(dim=0))
    assert torch.equal(count_true_columns(m), m.sum(dim=0))


def _tied_scores(Q, N, seed, dtype=torch.float32):
    """Query x gallery scores with many exact duplicates (ties) and a few near-ties of one ulp."""
    g = torch.Generator().manual_seed(seed)
    base = F.normalize(torch.randn(40, 16, generator=g), dim=-1)
    gallery = base[torch.randint(0, 40, (N,), generator=g)]
    queries = F.normalize(torch.randn(Q, 16, generator=g), dim=-1)
    scores = (100 * queries) @ gallery.t()
    scores[:, ::97] = torch.nextafter(scores[:, ::97], torch.tensor(float("inf")))
    positives = [sorted(set(torch.randint(0, N, (int(torch.randint(0, 4, (1,), generator=g)),),
                                          generator=g).tolist())) for _ in range(Q)]
    return scores.to(dtype), positives


def _table(positives):
    width = max(len(p) for p in positives)
    return torch.tensor([p + [-1] * (width - len(p)) for p in positives], dtype=torch.long)


@pytest.mark.parametrize("ties", ["official", "stable", "optimistic", "pessimistic"])
@pytest.mark.parametrize("ks", [None, (1, 5, 10, 100)])
@pytest.mark.parametrize("N, dtype", [(2048, torch.float32), (1500, torch.float32), (2048, torch.float16)])
def test_indexed_rank_equals_dense_mask_rank(ties, ks, N, dtype):
    scores, positives = _tied_scores(24, N, seed=N, dtype=dtype)
    mask = torch.zeros(scores.shape, dtype=torch.bool)
    for i, p in enumerate(positives):
        mask[i, p] = True
    want = best_positive_rank(scores, mask, ties, ks=ks)
    got = best_positive_rank_indexed(scores, _table(positives), ties, ks=ks)
    assert torch.equal(got, want)
    # the same matrix read by columns, in place (a transposed copy and a non-contiguous view), scratch reused
    ws = {}
    for _ in range(2):
        for st in (scores.t().contiguous(), scores.t().contiguous()[:, :]):
            assert torch.equal(best_positive_rank_indexed(st, _table(positives), ties, ks=ks, by_column=True,
                                                          workspace=ws), want)


def _rank_queries_dense(queries, gallery, positives, logit_scale=100.0, block=1024, ks=None):
    """rank_queries as it was written before the fast path: a dense mask per block."""
    ranks = []
    for start in range(0, queries.shape[0], block):
        scores = (logit_scale * queries[start:start + block]) @ gallery.t()
        mask = torch.zeros(scores.shape, dtype=torch.bool)
        for r, pos in enumerate(positives[start:start + block]):
            if pos:
                mask[r, torch.as_tensor(pos, dtype=torch.long)] = True
        ranks.append(best_positive_rank(scores, mask, "official", ks=ks,
                                        row_fn=lambda i: logit_scale * queries[i] @ gallery.t(), row_offset=start))
    return torch.cat(ranks)


@pytest.mark.parametrize("ks", [None, (1, 5, 10, 100)])
def test_rank_queries_equals_dense_version_and_the_official_loop(ks):
    g = torch.Generator().manual_seed(3)
    base = F.normalize(torch.randn(300, 32, generator=g), dim=-1)
    gallery = base[torch.randint(0, 300, (1200,), generator=g)]           # duplicates: exact ties
    queries = F.normalize(gallery[torch.randint(0, 1200, (700,), generator=g)]
                          + 0.5 * torch.randn(700, 32, generator=g), dim=-1)
    positives = [sorted(set(torch.randint(0, 1200, (3,), generator=g).tolist())) for _ in range(700)]
    positives[5] = []
    got = rank_queries(queries, gallery, positives, ties="official", block=256, ks=ks)
    assert torch.equal(got, _rank_queries_dense(queries, gallery, positives, block=256, ks=ks))
    official = torch.tensor([_official_row_rank(100.0 * queries[i] @ gallery.t(), torch.tensor(p, dtype=torch.long))
                             if p else gallery.shape[0] for i, p in enumerate(positives)])
    if ks is None:
        assert torch.equal(got, official)
    else:
        for k in ks:
            assert torch.equal(got < k, official < k)


@pytest.mark.parametrize("ks", [None, (1, 5, 10, 100)])
@pytest.mark.parametrize("subset", [False, True])
@pytest.mark.parametrize("budget", [2 ** 31, 0])
def test_rank_both_ways_equals_two_rank_queries_and_the_official_loop(ks, subset, budget):
    g = torch.Generator().manual_seed(5)
    base = F.normalize(torch.randn(200, 32, generator=g), dim=-1)
    images = base[torch.randint(0, 200, (530,), generator=g)]                # duplicate images: exact ties
    owner = torch.randint(0, 530, (1300,), generator=g)
    texts = F.normalize(images[owner] + 0.6 * torch.randn(1300, 32, generator=g), dim=-1)
    texts[7] = texts[3]                                                     # duplicate texts too
    t2i = [[int(owner[t])] for t in range(1300)]
    i2t = [[] for _ in range(530)]
    for t, i in enumerate(owner.tolist()):
        i2t[i].append(t)
    rows = [t for t in range(1300) if t % 5] if subset else None
    t2i_q = [t2i[t] for t in rows] if subset else t2i
    got_t, got_i = rank_both_ways(texts, images, t2i_q, i2t, text_queries=rows, ks=ks, block=256,
                                  max_matrix_bytes=budget)
    tq = texts[rows] if subset else texts
    want_t = rank_queries(tq, images, t2i_q, ks=ks, block=256)
    want_i = rank_queries(images, texts, i2t, ks=ks, block=256)
    off_t = torch.tensor([_official_row_rank(100.0 * q @ images.t(), torch.tensor(p)) for q, p in zip(tq, t2i_q)])
    off_i = torch.tensor([_official_row_rank(100.0 * im @ texts.t(), torch.tensor(p)) if p else 1300
                          for im, p in zip(images, i2t)])
    for got, want, off in ((got_t, want_t, off_t), (got_i, want_i, off_i)):
        for k in (1, 5, 10, 100):
            assert torch.equal(got < k, want < k) and torch.equal(got < k, off < k)
        if ks is None:
            assert torch.equal(got, off)
