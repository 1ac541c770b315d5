"""Pixels in: reading image files and label maps, resizing and normalising them the way the protocols do."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import numpy as np
from PIL import Image, ImageFile
import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import FarslipError


class ImageReadError(FarslipError, ValueError):
    """An image or label map that cannot be used as one; the message names the file."""


@contextlib.contextmanager
def _lenient_pil() -> Iterator[None]:
    """Accept truncated files and very large images while loading (as the official scripts do), then restore."""
    old_trunc, old_max = ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS
    ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS = True, None
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS = old_trunc, old_max


def open_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image with PIL (any mode; callers convert). Raises OSError with the path."""
    with _lenient_pil():
        img = Image.open(path)
        img.load()
    return img


def _read_raster(path: str | os.PathLike) -> np.ndarray:
    """Fallback for GeoTIFFs PIL cannot decode: bands-last array via rasterio."""
    import rasterio

    with rasterio.open(path) as src:
        arr = src.read()
    return np.moveaxis(arr, 0, -1) if arr.shape[0] > 1 else arr[0]


def read_rgb_array(path: str | os.PathLike) -> np.ndarray:
    """An image as ``uint8 [H, W, 3]`` RGB (grey is repeated, alpha dropped, 16-bit rescaled by 1/256)."""
    try:
        img = open_image(path)
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(img).astype(np.float64) / 256.0
            arr = np.clip(arr, 0, 255).astype(np.uint8)
            return np.repeat(arr[..., None], 3, axis=-1)
        return np.array(img.convert("RGB"))
    except Exception as pil_error:  # noqa: BLE001 -- try rasterio for TIFF flavours PIL does not know
        if str(path).lower().endswith((".tif", ".tiff")):
            arr = _read_raster(path)
            if arr.ndim == 2:
                arr = np.repeat(arr[..., None], 3, axis=-1)
            arr = arr[..., :3]
            if arr.dtype != np.uint8:
                arr = np.clip(arr, 0, 255).astype(np.uint8)
            return np.ascontiguousarray(arr)
        raise pil_error


def read_label_array(path: str | os.PathLike) -> np.ndarray:
    """A label map as an integer ``[H, W]`` array, values unchanged (palette PNGs give their indices)."""
    try:
        img = open_image(path)
        arr = np.asarray(img)
    except Exception as pil_error:  # noqa: BLE001
        if str(path).lower().endswith((".tif", ".tiff")):
            arr = _read_raster(path)
        else:
            raise pil_error
    if arr.ndim == 3:
        if arr.shape[-1] >= 3 and np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]):
            arr = arr[..., 0]
        else:
            raise ImageReadError(f"{path}: label map has {arr.shape[-1]} channels; expected one band of class "
                                f"indices (convert colour-coded labels with SegEarth-OV's converters)")
    return arr.astype(np.int64)



#: SegEarth-OV's SegDataPreProcessor: CLIP mean/std on the 0..255 scale (RGB), rounded to three decimals as its
#: configs write them -- kept as written (not open_clip's constants x 255) so the protocol's inputs are exact.
PIXEL_MEAN = (122.771, 116.746, 104.094)


PIXEL_STD = (68.501, 66.632, 70.323)


def rescaled_size(h: int, w: int, scale: int | tuple[int, int]) -> tuple[int, int]:
    """mmcv ``rescale_size``: the largest size that fits ``scale`` keeping the ratio; ``(new_h, new_w)``."""
    long_edge, short_edge = (max(scale), min(scale)) if isinstance(scale, (tuple, list)) else (scale, scale)
    f = min(long_edge / max(h, w), short_edge / min(h, w))
    return int(h * f + 0.5), int(w * f + 0.5)


def prepare_image(rgb: torch.Tensor, scale: int | None) -> torch.Tensor:
    """``uint8 [H, W, 3]`` -> resized (bilinear, half-pixel centres, no antialias, rounded to 0..255 as cv2 does)
    and normalised ``float32 [3, h, w]``."""
    x = rgb.permute(2, 0, 1).float()[None]
    if scale:
        size = rescaled_size(x.shape[-2], x.shape[-1], scale)
        if size != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)
            x = x.round_().clamp_(0, 255)
    mean = torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD).view(1, 3, 1, 1)
    return ((x - mean) / std)[0]


def normaliser(model: nn.Module):
    """uint8 ``[3,h,w]`` -> the float input the model's preprocessing expects (its mean and std)."""
    mean = torch.tensor(getattr(model.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN)
    std = torch.tensor(getattr(model.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD)
    mean, std = mean.view(3, 1, 1), std.view(3, 1, 1)

    def norm(rgb: torch.Tensor) -> torch.Tensor:
        return (rgb.float() / 255 - mean.to(rgb.device)) / std.to(rgb.device)

    return norm


def model_input_size(model: nn.Module) -> int:
    size = model.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)

