"""Turn whatever image a user has into the network's RGB float input, consistently per image.

Intensity scaling is decided once per image (on a strided sample for large or lazy arrays) and then
applied identically to every tile: scaling each tile by its own percentiles would give seams.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_dgseg.core.errors import InputError

#: Smallest side accepted for segmentation (a U-Net needs some context to say anything useful).
MIN_SIDE = 8


def _shape_and_channels(image: Any) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in image.shape)
    if len(shape) == 2:
        return shape[0], shape[1], 1
    if len(shape) == 3 and shape[2] in (1, 3, 4):
        return shape[0], shape[1], shape[2]
    if len(shape) == 3 and shape[0] in (3, 4) and shape[2] > 4:
        raise InputError(
            f"image has shape {shape} (channels first); give it as (height, width, channels)"
        )
    raise InputError(
        f"image has shape {shape}; expected (height, width) grey or (height, width, 3|4) RGB/RGBA"
    )


@dataclass(frozen=True)
class ImageAdapter:
    """Reads regions of an image as float32 RGB in [0, 1].

    Attributes
    ----------
    image : array-like
        numpy, dask or zarr array, ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)``.
    low, high : float
        Intensities mapped to 0 and 1 (from the dtype for uint8/bool, from robust percentiles of a
        sample of the whole image otherwise).
    """

    image: Any
    height: int
    width: int
    channels: int
    low: float
    high: float

    @classmethod
    def from_array(cls, image: Any) -> ImageAdapter:
        """Validate ``image`` and decide its intensity scaling once."""
        if not hasattr(image, "shape") or not hasattr(image, "dtype"):
            image = np.asarray(image)
        h, w, c = _shape_and_channels(image)
        if min(h, w) < MIN_SIDE:
            raise InputError(
                f"image is {h} x {w} pixels; segmentation needs at least {MIN_SIDE} x {MIN_SIDE}. "
                "Choose a larger image or region."
            )
        dtype = np.dtype(image.dtype)
        if dtype == np.uint8:
            low, high = 0.0, 255.0
        elif dtype == np.bool_:
            low, high = 0.0, 1.0
        elif dtype.kind in "uif":
            step = max(1, int(np.ceil(max(h, w) / 1024)))
            sample = np.asarray(image[::step, ::step], dtype=np.float64)
            if c == 4:
                sample = sample[..., :3]
            finite = sample[np.isfinite(sample)]
            if finite.size == 0:
                raise InputError("image has no finite pixel values (all NaN or inf)")
            if dtype.kind == "f" and finite.min() >= 0 and finite.max() <= 1:
                low, high = 0.0, 1.0
            else:
                low, high = (float(v) for v in np.percentile(finite, [0.5, 99.8]))
                if high <= low:
                    high = low + 1.0
        else:
            raise InputError(f"image dtype {dtype} is not supported; use an integer or float image")
        return cls(image=image, height=h, width=w, channels=c, low=low, high=high)

    def region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels ``[y0:y1, x0:x1]`` as float32 RGB ``(h, w, 3)`` in [0, 1]."""
        block = np.asarray(self.image[y0:y1, x0:x1])
        return self.to_rgb_float(block)

    def to_rgb_float(self, block: np.ndarray) -> np.ndarray:
        """Scale and convert a block of this image to float32 RGB in [0, 1]."""
        block = np.asarray(block)
        if block.ndim == 2:
            block = block[..., None]
        out = (block.astype(np.float32) - self.low) / (self.high - self.low)
        out = np.nan_to_num(out, nan=0.0, posinf=1.0, neginf=0.0)
        out = np.clip(out, 0.0, 1.0)
        if out.shape[2] == 1:
            out = np.repeat(out, 3, axis=2)
        elif out.shape[2] == 4:  # composite on white: transparent background reads as glass
            alpha = out[..., 3:4]
            out = out[..., :3] * alpha + (1.0 - alpha)
        return np.ascontiguousarray(out)

    def to_rgb_uint8(self, block: np.ndarray) -> np.ndarray:
        """Like :meth:`to_rgb_float` but uint8 (for colour statistics and thumbnails)."""
        return np.round(self.to_rgb_float(block) * 255.0).astype(np.uint8)
