"""The one path from any image array to the network's RGB input (inference, DCIN, training,
adaptation, the reference bank, the napari reader's contrast limits).

The rule
--------
Intensity scaling is decided once per image, from the whole image, and then applied identically
to every tile, crop or strided copy of it:

* **uint8**: as is (``v / 255``); shipped bundles see exactly what they always saw.
* **bool**: ``False`` -> 0, ``True`` -> 1.
* **float already within [0, 1]**: as is.
* **everything else** (uint16 and other integers, signed data, floats outside [0, 1]): linear
  map of the 0.5th and 99.8th percentiles of the image's colour values (all colour channels
  pooled, so colour balance is kept; alpha excluded; NaN/inf ignored) to 0 and 1, then clipped.
  The percentiles are computed on a strided copy whose longer side is at most
  :data:`SAMPLE_SIDE` pixels, so the result depends only on the image, never on the tile.

Why percentiles rather than the dtype maximum or a detected bit depth: a 12-bit camera stores
0..4095 in a uint16 container, so dividing by 65535 gives an almost black image, and guessing
the bit depth from the maximum fails for dim or saturated images (a dim 16-bit image still looks
black; one hot pixel decides the scale). Robust percentiles give the contrast a person would
choose, are deterministic per image, and ignore a few hot or dead pixels.

Then the same 8-bit quantisation everywhere: the scaled value is rounded to one of 256 levels
(``round(255 v) / 255``). Training samples are stored as uint8, so quantising at inference too
makes the array a training batch sees from a 16-bit file identical to what inference feeds the
network for the same file (for uint8 input this is the identity).

Channels: grey ``(H, W)`` / ``(H, W, 1)`` is repeated into three channels; grey + alpha
``(H, W, 2)`` and RGBA ``(H, W, 4)`` are **composited on white** with their alpha (alpha of an
integer image divided by its dtype maximum, of a float image clipped to [0, 1]): transparent
regions read as the white glass around tissue instead of as black.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_dgseg.core.errors import InputError

__all__ = [
    "MIN_SIDE",
    "PERCENTILES",
    "SAMPLE_SIDE",
    "SCALING_RULE",
    "ImageAdapter",
    "decide_scaling",
    "image_channels",
    "to_rgb_float",
    "to_rgb_uint8",
]

#: Smallest side accepted for segmentation (a U-Net needs some context to say anything useful).
MIN_SIDE = 8

#: Percentiles of the colour values mapped to 0 and 1 for non-8-bit images.
PERCENTILES = (0.5, 99.8)

#: The percentiles are computed on a strided copy whose longer side is at most this.
SAMPLE_SIDE = 1024

#: One line recorded in bundle provenance.
SCALING_RULE = (
    "uint8 / 255; bool 0/1; float in [0, 1] as is; other dtypes: robust percentiles (0.5, 99.8) "
    "of the whole image's colour values -> [0, 1]; quantised to 256 levels; RGBA on white"
)


def image_channels(image: Any) -> tuple[int, int, int]:
    """``(height, width, channels)`` of a channels-last image; clear error for anything else.

    Channels are 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA).
    """
    shape = tuple(int(s) for s in image.shape)
    if len(shape) == 2:
        return shape[0], shape[1], 1
    if len(shape) == 3 and 1 <= shape[2] <= 4:
        return shape[0], shape[1], shape[2]
    if len(shape) == 3 and shape[0] in (3, 4) and shape[2] > 4:
        raise InputError(
            f"image has shape {shape} (channels first); give it as (height, width, channels)"
        )
    raise InputError(
        f"image has shape {shape}; expected (height, width) grey or (height, width, 3|4) RGB/RGBA"
    )


def _colour_count(channels: int) -> int:
    return 1 if channels <= 2 else 3


def decide_scaling(image: Any) -> tuple[float, float]:
    """The intensities ``(low, high)`` mapped to 0 and 1 for this whole image (see module doc).

    Parameters
    ----------
    image : array-like
        numpy, dask or zarr array, channels last (see :func:`image_channels`).

    Returns
    -------
    low, high : float
        ``high > low``.

    Raises
    ------
    InputError
        Unsupported dtype or shape, or no finite pixel at all.
    """
    if not hasattr(image, "shape") or not hasattr(image, "dtype"):
        image = np.asarray(image)
    h, w, c = image_channels(image)
    dtype = np.dtype(image.dtype)
    if dtype == np.uint8:
        return 0.0, 255.0
    if dtype == np.bool_:
        return 0.0, 1.0
    if dtype.kind not in "uif":
        raise InputError(f"image dtype {dtype} is not supported; use an integer or float image")
    step = max(1, int(np.ceil(max(h, w) / SAMPLE_SIDE)))
    sample = np.asarray(image[::step, ::step], dtype=np.float64)
    if sample.ndim == 3:
        sample = sample[..., : _colour_count(c)]
    finite = sample[np.isfinite(sample)]
    if finite.size == 0:
        raise InputError("image has no finite pixel values (all NaN or inf)")
    if dtype.kind == "f" and finite.min() >= 0.0 and finite.max() <= 1.0:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(finite, PERCENTILES))
    if high <= low:
        low, high = float(finite.min()), float(finite.max())
    if high <= low:
        high = low + 1.0
    return low, high


def _alpha_weight(alpha: np.ndarray) -> np.ndarray:
    """Alpha as float32 in [0, 1]: integers over their dtype maximum, floats clipped."""
    if alpha.dtype == np.bool_:
        return alpha.astype(np.float32)
    if alpha.dtype.kind in "ui":
        return alpha.astype(np.float32) / np.float32(np.iinfo(alpha.dtype).max)
    return np.clip(np.nan_to_num(alpha.astype(np.float32), nan=1.0), 0.0, 1.0)


@dataclass(frozen=True)
class ImageAdapter:
    """An image with its scaling decided once; reads any block of it as the network's input.

    Attributes
    ----------
    image : array-like
        numpy, dask or zarr array, ``(H, W)`` or ``(H, W, 1|2|3|4)``.
    height, width, channels : int
    low, high : float
        Intensities mapped to 0 and 1 (:func:`decide_scaling`).
    """

    image: Any
    height: int
    width: int
    channels: int
    low: float
    high: float

    @classmethod
    def from_array(cls, image: Any, *, min_side: int = MIN_SIDE) -> ImageAdapter:
        """Validate ``image`` and decide its intensity scaling once.

        Parameters
        ----------
        image : array-like
        min_side : int
            Smallest accepted height and width (segmentation needs :data:`MIN_SIDE`; use 1 to
            convert images of any size).
        """
        if not hasattr(image, "shape") or not hasattr(image, "dtype"):
            image = np.asarray(image)
        h, w, c = image_channels(image)
        if min(h, w) < max(1, min_side):
            raise InputError(
                f"image is {h} x {w} pixels; segmentation needs at least {min_side} x {min_side}. "
                "Choose a larger image or region."
            )
        low, high = decide_scaling(image)
        return cls(image=image, height=h, width=w, channels=c, low=low, high=high)

    def region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels ``[y0:y1, x0:x1]`` as float32 RGB ``(h, w, 3)`` in [0, 1]."""
        return self.to_rgb_float(np.asarray(self.image[y0:y1, x0:x1]))

    def _levels(self, block: np.ndarray) -> np.ndarray:
        """A block as float32 RGB grey levels: integers 0..255 (module rule, before / 255)."""
        block = np.asarray(block)
        if block.ndim == 2:
            block = block[..., None]
        colours = _colour_count(block.shape[2])
        if self.low == 0.0 and self.high == 255.0 and block.dtype == np.uint8:
            out = block[..., :colours].astype(np.float32)
        else:
            scale = np.float32(255.0 / (self.high - self.low))
            out = (block[..., :colours].astype(np.float32) - np.float32(self.low)) * scale
            out = np.nan_to_num(out, nan=0.0, posinf=255.0, neginf=0.0)
            out = np.clip(out, 0.0, 255.0)
        if colours == 1:
            out = np.repeat(out, 3, axis=2)
        if block.shape[2] in (2, 4):  # composite on white: transparent background reads as glass
            alpha = _alpha_weight(block[..., -1])[..., None]
            out = out * alpha + np.float32(255.0) * (1.0 - alpha)
        elif block.dtype == np.uint8 and self.low == 0.0 and self.high == 255.0:
            return out  # already whole grey levels: skip a pass over the tile
        return np.round(out, out=out)

    def to_rgb_float(self, block: np.ndarray) -> np.ndarray:
        """Scale and convert a block of this image to float32 RGB in [0, 1] (256 levels)."""
        return np.ascontiguousarray(self._levels(block) / np.float32(255.0), dtype=np.float32)

    def to_rgb_uint8(self, block: np.ndarray) -> np.ndarray:
        """Like :meth:`to_rgb_float` but uint8 (stored training samples, colour statistics)."""
        return np.ascontiguousarray(self._levels(block).astype(np.uint8))


def to_rgb_float(image: Any) -> np.ndarray:
    """A whole image as float32 ``(H, W, 3)`` in [0, 1], by the module's rule."""
    adapter = ImageAdapter.from_array(image, min_side=1)
    return adapter.to_rgb_float(np.asarray(adapter.image))


def to_rgb_uint8(image: Any) -> np.ndarray:
    """A whole image as uint8 ``(H, W, 3)``, by the module's rule (uint8 RGB: unchanged)."""
    adapter = ImageAdapter.from_array(image, min_side=1)
    return adapter.to_rgb_uint8(np.asarray(adapter.image))
