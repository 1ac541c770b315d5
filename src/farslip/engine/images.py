"""Pixels in: reading image files and label maps, resizing and normalising them the way the protocols do."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import cv2
import numpy as np
from PIL import Image, ImageFile
import open_clip
import torch
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
    """mmcv ``rescale_size``: the largest size that fits ``scale`` keeping the ratio, as ``(new_h, new_w)``.

    The factor is ``min(long_edge / max(h, w), short_edge / min(h, w))`` and each side is rounded half up, so a
    small image is enlarged too (``300 x 200`` -> ``448 x 299`` for ``scale=448``)."""
    long_edge, short_edge = (max(scale), min(scale)) if isinstance(scale, (tuple, list)) else (scale, scale)
    f = min(long_edge / max(h, w), short_edge / min(h, w))
    return int(h * f + 0.5), int(w * f + 0.5)


def resize_bilinear(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` ``[H, W, C]`` (uint8 or float) resized to ``size = (h, w)`` by OpenCV's ``INTER_LINEAR``
    (half-pixel centres, no antialiasing, fixed-point arithmetic for uint8) -- mmcv ``imresize``. OpenCV's 8-bit
    resize rounds 11-bit weights, so a float bilinear resize misses it by one grey level on about one value in
    eight: the protocols call OpenCV itself so that the pixels a model sees are the official ones."""
    if tuple(image.shape[:2]) == tuple(size):
        return image
    out = cv2.resize(np.ascontiguousarray(image), (int(size[1]), int(size[0])), interpolation=cv2.INTER_LINEAR)
    return out if out.ndim == image.ndim else out[..., None]


#: OpenCV's 8-bit resize weighs the two source pixels with 11-bit fixed-point weights (INTER_RESIZE_COEF_BITS).
_COEF_SCALE = 2048


def _linear_taps(n_src: int, n_dst: int, start: int, stop: int,
                 clamp_weights: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For destination pixels ``start..stop-1`` of OpenCV's ``INTER_LINEAR`` resize ``n_src -> n_dst`` along one
    axis: the two source pixels each one reads and their 11-bit weights, as ``cv::resize`` computes them
    (modules/imgproc/src/resize.cpp): the source coordinate ``(d + 0.5) * (1 / (n_dst / n_src)) - 0.5`` in double,
    rounded to float; weights ``1 - f`` and ``f`` of its fraction, times 2048, each rounded to nearest even. Along x
    (``clamp_weights``) a coordinate past either edge reads the edge pixel with weights (2048, 0); along y only the
    rows are clamped and the weights are kept (``yofs``/``ibeta`` are not clamped there)."""
    f = ((np.arange(start, stop, dtype=np.float64) + 0.5) * (1.0 / (n_dst / n_src)) - 0.5).astype(np.float32)
    s = np.floor(f)
    f = f - s
    s = s.astype(np.int64)
    if clamp_weights:
        f[(s < 0) | (s >= n_src - 1)] = 0
    w0 = np.rint((np.float32(1) - f) * np.float32(_COEF_SCALE)).astype(np.int32)
    w1 = np.rint(f * np.float32(_COEF_SCALE)).astype(np.int32)
    return np.clip(s, 0, n_src - 1), np.clip(s + 1, 0, n_src - 1), w0, w1


def resize_bilinear_part(read, full: tuple[int, int], size: tuple[int, int], rows: tuple[int, int],
                         cols: tuple[int, int], row_block: int = 256) -> np.ndarray:
    """Rows ``rows[0]:rows[1]`` and columns ``cols[0]:cols[1]`` of :func:`resize_bilinear` of a uint8 image of
    shape ``full`` (``(H, W)``) to ``size``, bit for bit, from only the source window those pixels read (their
    span plus the one pixel of margin the bilinear kernel needs): ``read(y0, y1, x0, x1)`` gives
    ``image[y0:y1, x0:x1]`` as ``uint8 [h, w, C]``. A raster far too large to resize whole is resized this way
    tile by tile, without seams: every tile's pixels are the whole image's.

    OpenCV's 8-bit path, reproduced in integers (resize.cpp: ``HResizeLinear`` then ``VResizeLinear`` with
    ``VResizeLinearVec_32s8u``, whose rounding its scalar tail repeats, so no pixel depends on where it lies in a
    row): the horizontal pass sums ``src * weight`` exactly; the vertical pass takes each row sum ``>> 4`` (as
    int16), multiplies by its weight keeping the high 16 bits, adds the two, and rounds ``(v + 2) >> 2``."""
    if tuple(full) == tuple(size):
        return read(rows[0], rows[1], cols[0], cols[1])
    ys0, ys1, yw0, yw1 = _linear_taps(full[0], size[0], rows[0], rows[1], clamp_weights=False)
    xs0, xs1, xw0, xw1 = _linear_taps(full[1], size[1], cols[0], cols[1], clamp_weights=True)
    y0, x0 = int(ys0.min()), int(xs0.min())
    src = read(y0, int(ys1.max()) + 1, x0, int(xs1.max()) + 1)
    # the horizontal pass on the source rows that some destination row reads (under half of them when shrinking)
    used, where = np.unique(np.concatenate([ys0, ys1]) - y0, return_inverse=True)
    taken = src[used]
    sums = np.take(taken, xs0 - x0, axis=1).astype(np.int32)
    sums *= xw0[:, None]
    sums += np.take(taken, xs1 - x0, axis=1) * xw1[:, None]
    del taken
    sums >>= 4
    n = len(ys0)
    out = np.empty((n,) + sums.shape[1:], np.uint8)
    for a in range(0, n, row_block):  # the vertical pass a block of rows at a time: bounded temporaries
        b = min(n, a + row_block)
        shape = (b - a,) + (1,) * (sums.ndim - 1)
        v = np.take(sums, where[a:b], axis=0)
        v *= yw0[a:b].reshape(shape)
        v >>= 16
        w = np.take(sums, where[n + a:n + b], axis=0)
        w *= yw1[a:b].reshape(shape)
        w >>= 16
        v += w
        v += 2
        v >>= 2
        out[a:b] = np.minimum(v, 255)
    return out


def fit_image(image: np.ndarray, scale: int | tuple[int, int] | None) -> np.ndarray:
    """mmcv ``imrescale``: ``image`` resized with OpenCV to fit ``scale`` keeping its ratio (None: unchanged)."""
    if not scale:
        return image
    return resize_bilinear(image, rescaled_size(image.shape[0], image.shape[1], scale))


def prepare_image(rgb: torch.Tensor | np.ndarray, scale: int | None) -> torch.Tensor:
    """``uint8 [H, W, 3]`` -> resized to fit ``scale`` by OpenCV's bilinear resize (mmcv ``imrescale``, as both
    official OVSS pipelines: ``Resize(scale=(448, 448), keep_ratio=True)``) and normalised with CLIP's mean/std on
    the 0..255 scale: ``float32 [3, h, w]``."""
    arr = rgb.numpy() if isinstance(rgb, torch.Tensor) else np.asarray(rgb)
    return protocol_normalise(torch.from_numpy(np.ascontiguousarray(fit_image(arr, scale))).permute(2, 0, 1))


def protocol_normalise(rgb: torch.Tensor) -> torch.Tensor:
    """uint8 ``[3, h, w]`` -> float32 normalised as the protocols do it: :data:`PIXEL_MEAN` and :data:`PIXEL_STD`
    on the 0..255 scale (SegEarth-OV's SegDataPreProcessor), whatever the model's own constants."""
    mean = torch.tensor(PIXEL_MEAN, device=rgb.device).view(3, 1, 1)
    std = torch.tensor(PIXEL_STD, device=rgb.device).view(3, 1, 1)
    return (rgb.float() - mean) / std


def read_rgb_like_mmcv(path: str | os.PathLike) -> np.ndarray | None:
    """The image as mmcv decodes it (``cv2.imdecode``, ``IMREAD_COLOR``: grey repeated, alpha dropped, 16 bits
    shifted to 8), as ``uint8 [H, W, 3]`` RGB; None when OpenCV cannot decode the file (the caller falls back to
    its own reader)."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError:
        return None
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is None or bgr.dtype != np.uint8:
        return None
    return np.ascontiguousarray(bgr[..., ::-1])


def normaliser(model: nn.Module):
    """uint8 ``[3,h,w]`` -> the float input the model's preprocessing expects (its mean and std)."""
    mean = torch.tensor(getattr(model.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN)
    std = torch.tensor(getattr(model.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD)
    mean, std = mean.view(3, 1, 1), std.view(3, 1, 1)

    def norm(rgb: torch.Tensor) -> torch.Tensor:
        return (rgb.float() / 255 - mean.to(rgb.device)) / std.to(rgb.device)

    return norm


def model_input_size(model: nn.Module) -> int:
    """The square input size the visual tower was built for (224 for ViT-B/16)."""
    size = model.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)

