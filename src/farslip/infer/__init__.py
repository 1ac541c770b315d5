"""Inference on real imagery: segment (GeoTIFF in, GeoTIFF out), classify, search."""
from . import search
from .classify import Prediction, classify
from .raster import RasterError
from .segmentation import SegmentOptions, SegmentResult, segment

__all__ = ["Prediction", "RasterError", "SegmentOptions", "SegmentResult", "classify", "search", "segment"]
