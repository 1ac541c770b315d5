"""Inference on real imagery: segment and locate (GeoTIFF in, COGs and polygons out), classify, search, view."""
from . import search
from .classify import Prediction, classify
from .localization import LocateOptions, LocateResult, locate
from .raster import RasterError
from .runner import Run
from .segmentation import SegmentOptions, SegmentResult, segment
from .webmap import view

__all__ = ["LocateOptions", "LocateResult", "Prediction", "RasterError", "Run", "SegmentOptions", "SegmentResult",
           "classify", "locate", "search", "segment", "view"]
