"""Helpers shared by the synthetic nuclei and vessel renderers.

Everything here is vectorised numpy/scipy; nothing touches global random state (every random
draw goes through a :class:`numpy.random.Generator` passed in by the caller).
"""

from __future__ import annotations

import io
from numbers import Integral

import numpy as np
from scipy import ndimage as ndi

from napari_dgseg.core.errors import InputError

MIN_SIZE = 16
MAX_SIZE = 8192


def as_shape(size: int | tuple[int, int], *, argument: str = "size") -> tuple[int, int]:
    """Validate a tile size and return ``(H, W)``.

    Parameters
    ----------
    size : int or (int, int)
        Edge length of a square tile, or ``(height, width)``.
    argument : str
        Name used in the error message.

    Returns
    -------
    (int, int)
        ``(H, W)``, each in ``[MIN_SIZE, MAX_SIZE]``.

    Raises
    ------
    InputError
        When ``size`` is not one or two integers in the supported range.
    """
    if isinstance(size, Integral) and not isinstance(size, bool):
        shape = (int(size), int(size))
    elif (
        isinstance(size, (tuple, list))
        and len(size) == 2
        and all(isinstance(s, Integral) and not isinstance(s, bool) for s in size)
    ):
        shape = (int(size[0]), int(size[1]))
    else:
        raise InputError(
            f"{argument}={size!r} is not a tile size: give one integer (square tile) or "
            f"(height, width), e.g. {argument}=256."
        )
    if not all(MIN_SIZE <= s <= MAX_SIZE for s in shape):
        raise InputError(
            f"{argument}={size!r} is out of range: synthetic images must be at least {MIN_SIZE} x "
            f"{MIN_SIZE} pixels and at most {MAX_SIZE} per side, e.g. {argument}=256."
        )
    return shape


def lookup_domain(table: dict, kind: str, domain: str):
    """``table[domain]``; an unknown name raises :class:`InputError` listing the valid ones."""
    try:
        return table[domain]
    except (KeyError, TypeError):
        raise InputError(
            f"unknown {kind} domain {domain!r}; valid domains: {list(table)} "
            "(dgseg synth --list-domains prints them)."
        ) from None


def check_seed(seed: int, *, argument: str = "seed") -> int:
    """Return ``seed`` as a non-negative int or raise :class:`InputError`."""
    if not isinstance(seed, Integral) or isinstance(seed, bool) or int(seed) < 0:
        raise InputError(f"{argument}={seed!r} must be a non-negative integer, e.g. {argument}=0.")
    return int(seed)


def derive_seed(seed: int, index: int) -> int:
    """Seed of image ``index`` of a dataset made with ``seed`` (stable across platforms).

    Parameters
    ----------
    seed : int
        Dataset seed (>= 0).
    index : int
        Image index (>= 0).

    Returns
    -------
    int
        A 63-bit seed derived with :class:`numpy.random.SeedSequence`.
    """
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def generators(seed: int, n: int) -> list[np.random.Generator]:
    """``n`` independent generators spawned from ``seed`` (one per purpose: layout, texture...)."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(n)]


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise, normalised to zero mean and unit standard deviation.

    Large ``sigma`` is generated on a coarser grid and upsampled (same look, much faster).

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness.
    shape : (int, int)
        ``(H, W)`` of the output.
    sigma : float
        Correlation length in output pixels.

    Returns
    -------
    np.ndarray
        ``(H, W)`` float32.
    """
    h, w = shape
    factor = max(1.0, sigma / 2.0)
    if factor > 1.0:
        sh, sw = int(np.ceil(h / factor)) + 3, int(np.ceil(w / factor)) + 3
        small = rng.standard_normal((sh, sw), dtype=np.float32)
        small = ndi.gaussian_filter(small, 2.0, mode="wrap", truncate=3.0)
        out = _upsample_linear(small, shape, factor)
    else:
        noise = rng.standard_normal((h, w), dtype=np.float32)
        out = ndi.gaussian_filter(noise, sigma, truncate=3.0)
    out -= out.mean()
    sd = float(out.std())
    return out / sd if sd > 0 else out


def _upsample_linear(small: np.ndarray, shape: tuple[int, int], factor: float) -> np.ndarray:
    """Separable bilinear upsampling of ``small`` by ``factor`` onto a ``shape`` grid."""
    out = small
    for axis, n in enumerate(shape):
        pos = np.arange(n, dtype=np.float32) / np.float32(factor) + 1.0
        i0 = np.floor(pos).astype(np.intp)
        wgt = (pos - i0).astype(np.float32)
        a = np.take(out, i0, axis=axis)
        b = np.take(out, i0 + 1, axis=axis)
        wshape = [1, 1]
        wshape[axis] = n
        wgt = wgt.reshape(wshape)
        out = a + (b - a) * wgt
    return np.ascontiguousarray(out, dtype=np.float32)


def smoothstep(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Hermite step: 0 below ``lo``, 1 above ``hi``, smooth in between (elementwise)."""
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    """Encode and decode an RGB image as baseline JPEG (4:2:0 chroma subsampling).

    Parameters
    ----------
    image : np.ndarray
        ``(H, W, 3)`` uint8.
    quality : int
        JPEG quality, 1..95.

    Returns
    -------
    np.ndarray
        ``(H, W, 3)`` uint8 with real JPEG blocking and chroma loss.
    """
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(
        buf, format="JPEG", quality=int(quality), subsampling=2
    )
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def camera(
    intensity: np.ndarray,
    rng: np.random.Generator,
    *,
    blur_sigma: float,
    noise_sigma: float,
    jpeg_quality: int | None,
) -> np.ndarray:
    """Optics and sensor: blur, signal-dependent noise, 8-bit quantisation, optional JPEG.

    Parameters
    ----------
    intensity : np.ndarray
        ``(H, W, 3)`` float, linear 0..255 light reaching the sensor.
    rng : numpy.random.Generator
        Source of the sensor noise.
    blur_sigma : float
        Gaussian point-spread sigma in pixels (0 = sharp).
    noise_sigma : float
        Noise standard deviation (grey levels) at full brightness; a third of it is
        signal-independent read noise, the rest scales with sqrt(signal) (shot noise).
    jpeg_quality : int or None
        JPEG round-trip quality, None for lossless.

    Returns
    -------
    np.ndarray
        ``(H, W, 3)`` uint8.
    """
    img = intensity.astype(np.float32, copy=False)
    if blur_sigma > 0:
        img = ndi.gaussian_filter(img, (blur_sigma, blur_sigma, 0))
    if noise_sigma > 0:
        sd = noise_sigma * np.sqrt(0.1 + 0.9 * np.clip(img, 0, 255) / 255.0)
        img = img + sd * rng.standard_normal(img.shape, dtype=np.float32)
    out = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    if jpeg_quality is not None:
        out = jpeg_roundtrip(out, jpeg_quality)
    return out


def unit(v: tuple[float, float, float]) -> np.ndarray:
    """Normalise a 3-vector to unit length (float32)."""
    a = np.asarray(v, dtype=np.float32)
    return a / np.linalg.norm(a)
