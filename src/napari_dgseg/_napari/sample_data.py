"""napari sample data: synthetic images with ground truth and the real images scikit-image ships.

Each function returns a list of layer data tuples ``(data, kwargs, layer_type)`` (npe2
``sample_data`` commands). Synthetic images come from :mod:`napari_dgseg.core.data.synthetic`
(imported inside the functions so that the plugin manifest loads fast), seeded, so every call
gives the same image.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "ihc_sample",
    "nuclei_sample",
    "nuclei_slide_sample",
    "retina_sample",
    "vessels_sample",
]

LayerData = tuple[Any, dict[str, Any], str]

#: Side (pixels) of the synthetic nuclei and fundus samples.
TILE_SIDE = 512
#: Side (pixels) of the synthetic slide region.
SLIDE_SIDE = 2048
#: Domain of the synthetic samples.
NUCLEI_DOMAIN = "clean"
VESSELS_DOMAIN = "camera-a"


def _meta(source: str, **extra: Any) -> dict[str, Any]:
    return {"source_path": None, "sample": source, **extra}


def nuclei_sample() -> list[LayerData]:
    """A 512 px synthetic H&E tile and its ground-truth nucleus instances.

    Returns
    -------
    list of tuple
        ``[(image (512, 512, 3) uint8, ..., "image"), (labels (512, 512) int32, ..., "labels")]``.
    """
    from napari_dgseg.core.data.synthetic import make_nuclei

    image, labels = make_nuclei(size=TILE_SIDE, domain=NUCLEI_DOMAIN, seed=0)
    meta = _meta("synthetic nuclei", domain=NUCLEI_DOMAIN, seed=0)
    return [
        (np.asarray(image), {"name": "synthetic H&E", "rgb": True, "metadata": meta}, "image"),
        (
            np.asarray(labels),
            {"name": "nuclei ground truth", "opacity": 0.5, "metadata": dict(meta)},
            "labels",
        ),
    ]


def nuclei_slide_sample() -> list[LayerData]:
    """A 2048 x 2048 synthetic H&E region (image only), for tiled inference on a larger image.

    Returns
    -------
    list of tuple
        ``[(image (2048, 2048, 3) uint8, {"name": "synthetic slide", ...}, "image")]``.
    """
    from napari_dgseg.core.data.synthetic import make_nuclei

    image, _ = make_nuclei(size=SLIDE_SIDE, domain=NUCLEI_DOMAIN, seed=1)
    meta = _meta("synthetic slide", domain=NUCLEI_DOMAIN, seed=1)
    return [
        (np.asarray(image), {"name": "synthetic slide", "rgb": True, "metadata": meta}, "image")
    ]


def vessels_sample() -> list[LayerData]:
    """A 512 px synthetic fundus photograph and its ground-truth vessel mask.

    Returns
    -------
    list of tuple
        ``[(image (512, 512, 3) uint8, ..., "image"), (vessels (512, 512) uint8, ..., "labels")]``;
        the field-of-view mask is in the image layer's metadata under ``"fov"``.
    """
    from napari_dgseg.core.data.synthetic import make_vessels

    image, labels, fov = make_vessels(size=TILE_SIDE, domain=VESSELS_DOMAIN, seed=0)
    meta = _meta("synthetic fundus", domain=VESSELS_DOMAIN, seed=0)
    image_meta = {**meta, "fov": np.asarray(fov, dtype=bool)}
    return [
        (
            np.asarray(image),
            {"name": "synthetic fundus", "rgb": True, "metadata": image_meta},
            "image",
        ),
        (
            np.asarray(labels),
            {"name": "vessels ground truth", "opacity": 0.6, "metadata": dict(meta)},
            "labels",
        ),
    ]


def retina_sample() -> list[LayerData]:
    """The fundus photograph scikit-image ships (``skimage.data.retina()``, 1411 x 1411 RGB)."""
    from skimage import data

    meta = _meta("skimage.data.retina")
    return [(data.retina(), {"name": "retina", "rgb": True, "metadata": meta}, "image")]


def ihc_sample() -> list[LayerData]:
    """The immunohistochemistry tissue image scikit-image ships (512 x 512 RGB)."""
    from skimage import data

    meta = _meta("skimage.data.immunohistochemistry")
    return [(data.immunohistochemistry(), {"name": "ihc", "rgb": True, "metadata": meta}, "image")]
