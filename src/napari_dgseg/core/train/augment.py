"""Training augmentations for generalization: stain, camera and scale (``train(augment=...)``).

Each function takes and returns uint8 RGB ``(H, W, 3)`` and draws from the given generator, so a
seed reproduces a run.

* :func:`stain_jitter`: per-stain scale and bias in optical-density space after colour
  deconvolution, the "HED" augmentation of Tellez et al., "Quantifying the effects of data
  augmentation and stain color normalization in convolutional neural networks for computational
  pathology", 2019 (their ``sigma``/``bias`` become :data:`STAIN_SCALE` and :data:`STAIN_BIAS`),
  plus a small random rotation of the stain vectors (other staining protocols have other hues).
* :func:`nucleus_jitter`: the haematoxylin density of each labelled nucleus scaled on its own
  (``augment="stain-nuclei"``, before :func:`stain_jitter`). A per-image jitter keeps every
  nucleus of a crop as dark relative to the others as the renderer drew it; in tissue, pale
  vesicular nuclei (open chromatin) lie beside dark, hyperchromatic ones, and a model that has
  only seen uniformly stained nuclei calls the pale ones background.
* :func:`camera_jitter`: white balance, gamma, contrast, blur, sensor noise and a real JPEG round
  trip (scanner and fundus-camera effects).
* :func:`fundus_jitter`: the fundus analogue of the stain jitter: what differs between fundus
  cameras and eyes before the sensor's own effects: per-channel gain (sensor and pigmentation
  colour balance), saturation, a smooth illumination field (vignetting, uneven light) and
  sharpening (some cameras sharpen in firmware). Followed by :func:`camera_jitter`.
* :func:`rescale_crop`: object-size augmentation (a crop of ``size / factor`` pixels resized to
  ``size``), labels by nearest neighbour so instance ids survive.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from napari_dgseg.core.data._synth_common import jpeg_roundtrip
from napari_dgseg.core.input_features import OD_TO_STAIN, STAINS

#: The synthetic renderers' real JPEG round trip, used for the camera augmentation too.
jpeg_round_trip = jpeg_roundtrip

#: Per-stain optical-density scale range (log-uniform) and bias range.
STAIN_SCALE = (0.65, 1.5)
STAIN_BIAS = 0.04
#: Standard deviation of the stain-vector perturbation (per RGB component, before re-normalising).
STAIN_HUE = 0.06
#: ``nucleus_jitter``: share of the nuclei of a crop whose haematoxylin is scaled, and the range
#: of that scale (log-uniform); the factor map is smoothed so no edge is drawn at the label border.
P_NUCLEUS = 0.5
NUCLEUS_SCALE = (0.35, 1.0)
NUCLEUS_EDGE_SIGMA = 1.0
#: Probabilities of the camera effects.
P_BLUR, P_NOISE, P_JPEG = 0.3, 0.3, 0.25

_STAINS = STAINS
_INV_STAINS = OD_TO_STAIN.astype(np.float32)
_OD_LUT = (-np.log10((np.arange(256, dtype=np.float64) + 1.0) / 256.0)).astype(np.float32)


def _from_od(od: np.ndarray) -> np.ndarray:
    return np.clip(256.0 * np.power(10.0, -od) - 1.0, 0, 255).round().astype(np.uint8)


def stain_jitter(rgb8: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scale and shift each stain's concentration and perturb the stain vectors (see module)."""
    od = _OD_LUT[rgb8].reshape(-1, 3)
    conc = od @ _INV_STAINS
    scale = np.exp(rng.uniform(np.log(STAIN_SCALE[0]), np.log(STAIN_SCALE[1]), size=3))
    bias = rng.uniform(-STAIN_BIAS, STAIN_BIAS, size=3)
    conc = conc * scale.astype(np.float32) + (bias.astype(np.float32)
                                              * (conc.sum(axis=1, keepdims=True) > 0.05))
    stains = np.abs(_STAINS + rng.normal(0.0, STAIN_HUE, size=_STAINS.shape))
    stains /= np.linalg.norm(stains, axis=1, keepdims=True)
    out = np.clip(conc, 0.0, None) @ stains.astype(np.float32)
    return _from_od(out.reshape(rgb8.shape))


def nucleus_jitter(rgb8: np.ndarray, regions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scale the haematoxylin density of a random share of the nuclei, each by its own factor.

    ``regions`` holds one id per nucleus (instance labels; 0 and negative: not a nucleus).
    """
    ids = np.unique(regions[regions > 0])
    if ids.size == 0:
        return rgb8
    chosen = ids[rng.random(ids.size) < P_NUCLEUS]
    if chosen.size == 0:
        return rgb8
    factors = np.ones(int(ids.max()) + 1, np.float32)
    factors[chosen] = np.exp(rng.uniform(np.log(NUCLEUS_SCALE[0]), np.log(NUCLEUS_SCALE[1]),
                                         size=chosen.size)).astype(np.float32)
    fmap = ndi.gaussian_filter(factors[np.maximum(regions, 0)], NUCLEUS_EDGE_SIGMA).reshape(-1)
    od = _OD_LUT[rgb8].reshape(-1, 3)
    h = np.clip(od @ _INV_STAINS[:, 0], 0.0, None)
    # only the haematoxylin component moves (along its stain vector); other pixels keep their OD
    od = od + ((fmap - 1.0) * h)[:, None] * _STAINS[0].astype(np.float32)
    return _from_od(np.clip(od, 0.0, None).reshape(rgb8.shape))


def camera_jitter(rgb8: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """White balance, gamma, contrast, then maybe blur, noise and JPEG (see module)."""
    x = rgb8.astype(np.float32) / 255.0
    x = x * rng.uniform(0.92, 1.06, size=3).astype(np.float32)
    x = np.clip(x, 0.0, 1.0) ** np.float32(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))
    mid = np.float32(x.mean())
    x = (x - mid) * np.float32(rng.uniform(0.8, 1.2)) + mid
    if rng.random() < P_BLUR:
        sigma = float(rng.uniform(0.3, 1.5))
        x = ndi.gaussian_filter(x, sigma=(sigma, sigma, 0))
    if rng.random() < P_NOISE:
        x = x + rng.normal(0.0, rng.uniform(1.0, 6.0) / 255.0, size=x.shape).astype(np.float32)
    out = np.clip(x * 255.0, 0, 255).round().astype(np.uint8)
    if rng.random() < P_JPEG:
        out = jpeg_round_trip(out, int(rng.integers(25, 91)))
    return out


#: Per-channel gain range (log-uniform) of the fundus jitter.
FUNDUS_GAIN = (0.7, 1.4)
#: Saturation factor range (0 = grey, 1 = unchanged).
FUNDUS_SATURATION = (0.45, 1.25)
#: Largest relative dip of the illumination field; probability of sharpening.
FUNDUS_ILLUMINATION, P_SHARPEN = 0.45, 0.3


def fundus_jitter(rgb8: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Channel gains, saturation, a smooth illumination field and maybe sharpening (see module)."""
    x = rgb8.astype(np.float32) / 255.0
    x = x * np.exp(rng.uniform(np.log(FUNDUS_GAIN[0]), np.log(FUNDUS_GAIN[1]), size=3)).astype(np.float32)
    grey = x.mean(axis=2, keepdims=True)
    x = grey + (x - grey) * np.float32(rng.uniform(*FUNDUS_SATURATION))
    h, w = x.shape[:2]
    coarse = rng.uniform(1.0 - rng.uniform(0.0, FUNDUS_ILLUMINATION), 1.0, size=(3, 3))
    field = ndi.zoom(coarse, (h / 3.0, w / 3.0), order=1, mode="nearest")[:h, :w]
    x = x * field[..., None].astype(np.float32)
    if rng.random() < P_SHARPEN:
        amount = np.float32(rng.uniform(0.3, 1.0))
        x = x + amount * (x - ndi.gaussian_filter(x, sigma=(1.0, 1.0, 0)))
    out = np.clip(x * 255.0, 0, 255).round().astype(np.uint8)
    return camera_jitter(out, rng)


def rescale_crop(
    image: np.ndarray, labels: np.ndarray, size: int, factor: float
) -> tuple[np.ndarray, np.ndarray]:
    """Resize a square crop ``(c, c)`` to ``(size, size)``: image bilinearly, labels nearest.

    ``factor = size / c`` is how much larger objects appear afterwards. Pixel centres are
    aligned (``align_corners=False`` / nearest source pixel of each output centre).
    """
    import torch
    import torch.nn.functional as F

    c = image.shape[0]
    if c == size:
        return image, labels
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    img = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                        antialias=c > size)
    img = img[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
    src = np.minimum(((np.arange(size) + 0.5) * (c / size)).astype(np.int64), c - 1)
    return np.ascontiguousarray(img), labels[np.ix_(src, src)]
