"""Class colours follow land-cover conventions where the class name says what it is (water blue, trees and grass
green, buildings red, roads grey, background black); every class of a map gets a colour of its own."""
from __future__ import annotations

import numpy as np

from farslip.engine.class_files import shipped_class_files
from farslip.engine.colours import class_colours, land_cover_colour


def _classes(name):
    return [ln.strip() for ln in shipped_class_files()[name].read_text().splitlines() if ln.strip()]


def _is_blue(c):
    return c[2] > 150 and c[2] > c[0] + 80 and c[2] > c[1]


def _is_green(c):
    return c[1] > c[0] and c[1] > c[2]


def _is_red(c):
    return c[0] > 150 and c[0] > c[1] + 80 and c[0] > c[2] + 80


def _is_grey(c):
    return int(c[0]) == int(c[1]) == int(c[2]) and 60 < c[0] < 230


def test_openearthmap_and_loveda_in_land_cover_colours():
    for name in ("openearthmap", "loveda", "potsdam"):
        classes = _classes(name)
        colours = dict(zip((c.split(",")[0] for c in classes), class_colours(classes)))
        assert len({tuple(c) for c in colours.values()}) == len(classes), colours
        for cls, c in colours.items():
            if cls in ("water",):
                assert _is_blue(c), (name, cls, c)
            if cls in ("tree", "forest", "grass", "low vegetation"):
                assert _is_green(c), (name, cls, c)
            if cls in ("building",):
                assert _is_red(c), (name, cls, c)
            if cls in ("road", "pavement"):
                assert _is_grey(c), (name, cls, c)
            if cls in ("background", "clutter"):
                assert tuple(c) == (0, 0, 0), (name, cls, c)


def test_names_are_matched_by_whole_words_and_synonyms():
    assert _is_blue(land_cover_colour("water,river")) and _is_blue(land_cover_colour("lake"))
    assert land_cover_colour("low vegetation") != land_cover_colour("vegetation")
    assert land_cover_colour("ground track field") is None  # not a crop field
    assert land_cover_colour("roadside kiosk") is None or _is_grey(land_cover_colour("road"))
    assert land_cover_colour("harbor") is None


def test_every_class_gets_its_own_colour():
    shades = class_colours(["road", "pavement", "street", "impervious surface"])
    assert len({tuple(c) for c in shades}) == 4 and all(_is_grey(c) for c in shades)
    isaid = class_colours(_classes("isaid"))
    assert len({tuple(c) for c in isaid}) == len(isaid)
    many = class_colours([f"object {i}" for i in range(40)])
    assert len({tuple(c) for c in many}) == 40 and many.dtype == np.uint8


def test_the_class_map_carries_the_palette(tmp_path, tiny_model):
    import rasterio

    import farslip
    from support.hostile import write_geotiff

    model, _, tokenizer = tiny_model
    scene = write_geotiff(tmp_path / "s.tif", np.random.default_rng(0).integers(0, 255, (3, 32, 32), np.uint8))
    res = farslip.segment(scene, ["tree", "water", "building"], model=model, tokenizer=tokenizer,
                          out=tmp_path / "o", progress=False)[0]
    with rasterio.open(res.geotiff) as src:
        cmap = src.colormap(1)
    assert _is_green(cmap[0]) and _is_blue(cmap[1]) and _is_red(cmap[2])
