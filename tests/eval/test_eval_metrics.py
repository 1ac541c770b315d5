"""Metric functions against cases computed by hand, and the official tie order against the official loop."""
from __future__ import annotations

import math

import pytest
import torch

from farslip.eval.metrics import (SegmentationMeter, best_positive_rank, intersect_and_union, percent, recall_at_k,
                                  recall_from_ranks, reduce_zero_label, segmentation_scores, top1_hits,
                                  topk_correct)
from farslip.engine import class_scores, predict_classes, query_table
from farslip.eval.retrieval import rank_queries

# --------------------------------------------------------------------------------------------------------------
# Retrieval

# 3 text queries x 4 images.
SCORES = torch.tensor([
    [0.9, 0.1, 0.5, 0.3],    # t0: partner image 2; image 0 above it            -> rank 1
    [0.2, 0.8, 0.8, 0.1],    # t1: partner image 2 TIED with image 1 (not a partner)
    [0.1, 0.7, 0.6, 0.65],   # t2: one caption shared by images 0 and 3; best partner 3, image 1 above -> rank 1
])
POS = [[2], [2], [0, 3]]


@pytest.mark.parametrize("ties, t1_rank", [("stable", 1), ("optimistic", 0), ("pessimistic", 1)])
def test_ranks_by_hand(ties, t1_rank):
    mask = torch.zeros(3, 4, dtype=torch.bool)
    for i, p in enumerate(POS):
        mask[i, p] = True
    ranks = best_positive_rank(SCORES, mask, ties)
    assert ranks.tolist() == [1, t1_rank, 1]


def test_recall_by_hand_with_ties_and_shared_caption():
    assert recall_at_k(SCORES, POS, ks=(1, 2, 4), ties="stable") == {"R@1": 0.0, "R@2": 1.0, "R@4": 1.0}
    assert recall_at_k(SCORES, POS, ks=(1, 2), ties="optimistic") == {"R@1": pytest.approx(1 / 3), "R@2": 1.0}
    # the official rule on a 4-element row: torch.argsort is stable below 17 elements -> as "stable"
    assert recall_at_k(SCORES, POS, ks=(1, 2), ties="official") == {"R@1": 0.0, "R@2": 1.0}


def test_several_captions_per_image_and_query_without_partner():
    # image-to-text: image 0 has captions 0 and 2; image 1 has caption 1; image 2 lost all its captions
    scores = torch.tensor([[0.3, 0.9, 0.35], [0.5, 0.4, 0.1], [0.9, 0.8, 0.7]])
    pos = [[0, 2], [1], []]
    ranks = best_positive_rank(scores, torch.tensor([[1, 0, 1], [0, 1, 0], [0, 0, 0]]).bool(), "stable")
    assert ranks.tolist() == [1, 1, 3]  # best caption of image 0 is caption 2 (0.35) behind caption 1
    assert recall_at_k(scores, pos, ks=(1, 2, 3), ties="stable") == {"R@1": 0.0, "R@2": pytest.approx(2 / 3),
                                                                    "R@3": pytest.approx(2 / 3)}


def _official_recall(queries, gallery, positives, ks=(1, 5, 10, 100)):
    """FarSLIP's tests/test_retrieval.py loop, verbatim in substance."""
    res = {k: 0 for k in ks}
    for i in range(len(queries)):
        logits = 100 * queries[i] @ gallery.t()
        ranking = torch.argsort(logits, descending=True).cpu().numpy()
        for k in ks:
            if set(ranking[:k]) & set(positives[i]):
                res[k] += 1
    return {k: v / len(queries) for k, v in res.items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_official_tie_order_matches_the_official_loop(dtype):
    g = torch.Generator().manual_seed(0)
    base = torch.nn.functional.normalize(torch.randn(12, 16, generator=g), dim=-1)
    # 40 gallery items, many exact duplicates: ties everywhere, and argsort is not stable beyond 16 items
    gallery = base[torch.randint(0, 12, (40,), generator=g)].to(dtype)
    queries = torch.nn.functional.normalize(torch.randn(30, 16, generator=g), dim=-1).to(dtype)
    positives = [sorted(set(torch.randint(0, 40, (2,), generator=g).tolist())) for _ in range(30)]
    ks = (1, 2, 3, 5, 10)
    official = _official_recall(queries, gallery, positives, ks)
    for cutoffs in (None, ks):  # exact ranks, or re-ranking only where the cutoffs need it
        ranks = rank_queries(queries, gallery, positives, ties="official", block=7, ks=cutoffs)
        assert recall_from_ranks(ranks, ks) == pytest.approx(official, abs=1e-12)


# --------------------------------------------------------------------------------------------------------------
# Classification

def test_topk_by_hand_with_ties():
    logits = torch.tensor([[1.0, 3.0, 2.0], [2.0, 2.0, 0.0], [0.0, 1.0, 5.0]])
    targets = torch.tensor([2, 1, 2])
    assert topk_correct(logits, targets, (1, 2), ties="stable") == [1, 3]       # row 1: class 0 first among equals
    assert topk_correct(logits, targets, (1, 2), ties="optimistic") == [2, 3]
    assert topk_correct(logits, targets, (1, 2), ties="pessimistic") == [1, 3]
    # top-5 with 3 classes is capped (every row correct), as percent with 2 decimals
    c1, c5 = topk_correct(logits[[0, 2]], targets[[0, 2]], (1, 5), ties="official")
    assert (c1, c5) == (1, 2)
    assert percent(1, 3) == 33.33 and percent(2, 3) == 66.67
    # per-row top-1 hits follow the same tie rules (the per-class accuracy of zero-shot classification)
    for ties, expect in (("stable", [False, False, True]), ("optimistic", [False, True, True]),
                         ("official", [False, logits[1].topk(1)[1].item() == 1, True])):
        hits = top1_hits(logits, targets, ties)
        assert hits.tolist() == expect and int(hits.sum()) == topk_correct(logits, targets, (1,), ties)[0]


# --------------------------------------------------------------------------------------------------------------
# Segmentation

LABEL = torch.tensor([[0, 0, 1], [1, 255, 2]])
PRED = torch.tensor([[0, 1, 1], [1, 0, 0]])


def test_intersect_and_union_by_hand():
    inter, union, area_p, area_l = intersect_and_union(PRED, LABEL, 3, 255)
    assert inter.tolist() == [1, 2, 0]
    assert area_p.tolist() == [2, 3, 0]      # the ignored pixel's prediction (0) is not counted
    assert area_l.tolist() == [2, 2, 1]
    assert union.tolist() == [3, 3, 1]


def test_miou_by_hand_with_ignore_and_absent_class():
    meter = SegmentationMeter(4, ["a", "b", "c", "absent"], ignore_index=255)
    meter.update(PRED, LABEL)
    res = meter.compute()
    assert res["IoU"] == {"a": 33.33, "b": 66.67, "c": 0.0, "absent": None}  # never labelled nor predicted
    assert res["mIoU"] == 33.33                     # mean over the three defined classes
    assert res["aAcc"] == 60.0                      # 3 of 5 non-ignored pixels
    assert res["mAcc"] == 50.0                      # (1/2 + 2/2 + 0/1) / 3
    # accumulated over images (dataset-level counts, not a mean of per-image IoUs)
    meter.update(torch.tensor([[2]]), torch.tensor([[2]]))
    res = meter.compute()
    assert res["IoU"]["c"] == 50.0 and res["mIoU"] == round(100 * (1 / 3 + 2 / 3 + 1 / 2) / 3, 2)


def test_out_of_range_label_counts_only_the_prediction():
    inter, union, area_p, area_l = intersect_and_union(torch.tensor([1, 1]), torch.tensor([1, 7]), 3, 255)
    assert inter.tolist() == [0, 1, 0] and area_l.tolist() == [0, 1, 0] and area_p.tolist() == [0, 2, 0]
    assert union.tolist() == [0, 2, 0]


def test_reduce_zero_label():
    assert reduce_zero_label(torch.tensor([0, 1, 2, 7, 255])).tolist() == [255, 0, 1, 6, 255]


def test_segmentation_scores_empty_is_undefined():
    z = torch.zeros(2, dtype=torch.long)
    res = segmentation_scores(z, z, z, ["x", "y"])
    assert res["mIoU"] is None and res["IoU"] == {"x": None, "y": None}


def test_synonyms_take_the_max_and_threshold_goes_to_background():
    names, owner = query_table([["building", "roof"], ["road"], ["tree"]])
    assert names == ["building", "roof", "road", "tree"] and owner.tolist() == [0, 0, 1, 2]
    # two pixels; per-name cosine logits [Q=4, 1, 2]
    logits = torch.tensor([[0.40, 0.05], [0.10, 0.32], [0.28, 0.30], [0.00, 0.00]]).view(4, 1, 2)
    scores = class_scores(logits, owner, 3, logit_scale=50.0)
    p = (logits * 50).softmax(0)
    assert torch.allclose(scores[0], torch.maximum(p[0], p[1]))       # max over synonyms, not their sum
    assert torch.allclose(scores[1], p[2]) and torch.allclose(scores[2], p[3])
    assert predict_classes(scores).tolist() == [[0, 0]]
    # pixel 0: building (p=0.9975) is sure; pixel 1: building's best synonym "roof" (p=0.731) beats road (0.269)
    # but is under a 0.8 threshold -> background (2)
    assert torch.allclose(scores[:, 0, 1], torch.tensor([0.7311, 0.2689, 0.0]), atol=1e-4)
    assert predict_classes(scores, prob_threshold=0.8, background_index=2).tolist() == [[0, 2]]
    assert math.isclose(float(scores[:, 0, 0].max()), float(p[0, 0, 0]), rel_tol=1e-6)


@pytest.mark.parametrize("indexed", [False, True])
def test_official_ties_follow_the_official_row_across_summation_order(indexed):
    """The matrix product can put a non-partner ~20 ulps above the partner where the official one-query product
    puts it below: the row is inside the tie band, so it is ranked from the official row."""
    from farslip.eval.metrics import TIE_BAND_ULPS, best_positive_rank, best_positive_rank_indexed

    ulp = torch.finfo(torch.float32).eps * 4  # one ulp at 5.0
    matrix = torch.tensor([[5.0, 5.0 + 20 * ulp, 1.0], [1.0, 2.0, 3.0]])
    official = {0: torch.tensor([5.0, 5.0 - ulp, 1.0]), 1: matrix[1]}
    assert 20 < TIE_BAND_ULPS
    if indexed:
        ranks = best_positive_rank_indexed(matrix, torch.tensor([[0], [2]]), "official", row_fn=official.__getitem__,
                                           ks=(1, 5))
    else:
        positives = torch.tensor([[True, False, False], [False, False, True]])
        ranks = best_positive_rank(matrix, positives, "official", row_fn=official.__getitem__, ks=(1, 5))
    assert ranks.tolist() == [0, 0]  # the matrix alone would say [1, 0]: a miss at R@1
