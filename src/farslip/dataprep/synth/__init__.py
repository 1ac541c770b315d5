"""A procedural remote-sensing world: aerial-like scenes written in every format the project reads.

Eight scene classes (airport, harbor, farmland, forest, residential area, industrial area, river, desert), each
built from land-cover regions with their own colours and textures (water, forest, farmland parcels, bare land,
roads, built-up) and objects with distinct shapes and sizes (airplane, ship, storage tank, vehicle, tennis
court, building, swimming pool). Everything is vectorised numpy plus PIL polygon drawing: no per-pixel Python.

``synth_world(out, n, seed)`` writes ``n`` training images and ``n_test`` held-out images::

    OUT/mgrs/text_info.json, OUT/mgrs/global_imgs/     MGRS JSON (training images, template captions);
                                                       global_filepath is relative to global_imgs/ ("000000.jpg")
    OUT/rs5m/shard-000000.tar                          RS5M-style webdataset (img_content, img_name, caption)
    OUT/captions.csv                                   filepath,title (training images, paths relative to OUT)
    OUT/cls/test.csv, classnames.txt, images/          scene classification (held-out images)
    OUT/retrieval/test.csv, images/                    image-text retrieval (held-out images, 2 captions each)
    OUT/regions/test.csv, classnames.txt, images/      region-category classification (held-out object crops)
    OUT/ovss/img_dir/val, ann_dir/val, classes.txt     open-vocabulary segmentation (held-out images)
    OUT/world.json                                     what was written

Global captions name the scene, the objects (counted) and the main land covers, never where they are; the
detailed captions say where (a 3 x 3 grid). The same ``seed`` gives byte-identical files.
"""
from .labels import (
           LAND_COVER_NAMES,
           OBJECT_CATEGORIES,
           OBJECT_LABEL,
           OVSS_CLASSES,
           SCENES,
)
from .scenes import land_cover_fractions, render_scene
from .writers import synth_world

__all__ = ["LAND_COVER_NAMES", "OBJECT_CATEGORIES", "OBJECT_LABEL", "OVSS_CLASSES", "SCENES", "land_cover_fractions",
           "render_scene", "synth_world"]
