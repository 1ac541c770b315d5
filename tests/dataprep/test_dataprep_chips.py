"""Chip windows, polygon clipping, visibility threshold, border cases."""
import pytest

from farslip.dataprep.chips import (chip_boxes, clip_polygon, convex_hull, integer_box, objects_in_box,
                                 polygon_area, window_starts)


def test_window_starts():
    assert window_starts(1000, 800, 200) == [0, 200]
    assert window_starts(800, 800, 200) == [0]
    assert window_starts(500, 800, 200) == [0]
    assert window_starts(1400, 800, 200) == [0, 600]
    assert window_starts(1401, 800, 200) == [0, 300, 601]  # evenly spread, last window ends at the border
    s = window_starts(20000, 800, 200)
    assert s[0] == 0 and s[-1] == 20000 - 800
    assert all(b - a <= 600 for a, b in zip(s, s[1:]))  # overlap at least 200
    with pytest.raises(ValueError):
        window_starts(1000, 800, 800)


def test_chip_boxes_cover_image():
    wins = chip_boxes(1000, 700, 800, 200)
    assert wins == [(0, 0, 800, 700), (200, 0, 1000, 700)]
    assert chip_boxes(1000, 700, 0, 0) == [(0, 0, 1000, 700)]
    wins = chip_boxes(2500, 1700, 800, 200)
    assert all(x1 - x0 == 800 and y1 - y0 == 800 for x0, y0, x1, y1 in wins)
    for x in list(range(0, 2500, 25)) + [2499]:
        for y in list(range(0, 1700, 25)) + [1699]:
            assert any(x0 <= x < x1 and y0 <= y < y1 for x0, y0, x1, y1 in wins), (x, y)


def test_geometry():
    sq = [(0, 0), (10, 0), (10, 10), (0, 10)]
    assert polygon_area(sq) == 100
    assert polygon_area(clip_polygon(sq, (5, -1, 20, 20))) == 50
    assert clip_polygon(sq, (20, 20, 30, 30)) == []
    bowtie = [(0, 0), (10, 10), (10, 0), (0, 10)]
    assert polygon_area(bowtie) == 0  # the annotated order crosses itself...
    assert polygon_area(convex_hull(bowtie)) == 100  # ...its hull is the box meant
    diamond = [(5, 0), (10, 5), (5, 10), (0, 5)]
    half = clip_polygon(diamond, (0, 0, 5, 10))
    assert polygon_area(half) == pytest.approx(25)
    assert integer_box(1.2, 2.9999999, 7.5, 8.0000001, 100, 100) == (1, 3, 8, 8)
    assert integer_box(-5, -5, 120, 50, 100, 100) == (0, 0, 100, 50)


def _obj(name, x1, y1, x2, y2, difficult=False):
    return (name, name, [(x1, y1), (x2, y1), (x2, y2), (x1, y2)], difficult)


def test_objects_clipped_at_chip_border():
    objs = [_obj("inside", 10, 10, 50, 50), _obj("half", 780, 100, 820, 140), _obj("mostly", 770, 300, 810, 340),
            _obj("outside", 900, 10, 950, 50), _obj("edge", 800, 500, 840, 540), _obj("sliver", 799, 600, 900, 700)]
    kept, counts = objects_in_box(objs, (0, 0, 800, 800), min_visibility=0.7)
    assert [(o.category, o.box) for o in kept] == [("inside", (10, 10, 50, 50)), ("mostly", (770, 300, 800, 340))]
    assert kept[1].visibility == pytest.approx(0.75)
    assert counts == {"cut": 2, "too_small": 0}  # 'half' (50%) and 'sliver' (1%); 'edge' only touches
    kept, _ = objects_in_box(objs, (0, 0, 800, 800), min_visibility=0.5)
    assert [o.category for o in kept] == ["inside", "half", "mostly"]
    # in the next window, boxes are in that chip's pixels
    kept, _ = objects_in_box(objs, (600, 0, 1400, 800), min_visibility=0.7)
    assert ("half", (180, 100, 220, 140)) in [(o.category, o.box) for o in kept]
    assert ("outside", (300, 10, 350, 50)) in [(o.category, o.box) for o in kept]


def test_too_thin_after_clipping():
    objs = [_obj("thin", 100, 100, 101, 200)]  # 1 px wide
    kept, counts = objects_in_box(objs, (0, 0, 800, 800), min_visibility=0.5, min_size=2)
    assert kept == [] and counts["too_small"] == 1
