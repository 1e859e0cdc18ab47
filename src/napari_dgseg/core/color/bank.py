"""The DCIN reference bank stored in every bundle (Shah, Fukuda & Cap, "Color-Quality Invariance for Robust Medical Image Segmentation", 2025: GRIS and LRIS).

Per training image the bank keeps what test-time normalisation needs instead of the image
itself (methods.md section 3):

* ``hist``: its joint 8 x 8 x 8 RGB histogram, L2-normalised (512 values);
* ``embedding``: the model's own global-average-pooled bottleneck, L2-normalised (the paper used
  an ImageNet Swin-V2, which cannot be downloaded here; the segmentation encoder is the stand-in);
* ``mean`` / ``std``: its colour statistics (tissue pixels) in the bank's colour space;
* ``gris``: the index of the GRIS reference, the histogram medoid (the image with the smallest
  mean Euclidean distance to all others);
* ``ref_<method>``: its statistics for every normalization method of
  :mod:`napari_dgseg.core.color.normalizers` (``(N, D)``). Banks made before these existed are
  still valid: :func:`reference_stats` then estimates them from the histogram.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from napari_dgseg.core.color.tissue import image_color_stats
from napari_dgseg.core.errors import InputError

BANK_FILE = "bank"
BINS = 8


def rgb_histogram(rgb8: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Joint ``bins^3`` RGB histogram of a uint8 ``(H, W, 3)`` image, L2-normalised, flattened."""
    q = (rgb8.reshape(-1, 3).astype(np.int64) * bins) // 256
    idx = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]
    hist = np.bincount(idx, minlength=bins**3).astype(np.float64)
    norm = np.linalg.norm(hist)
    return (hist / norm if norm > 0 else hist).astype(np.float32)


def histogram_medoid(hists: np.ndarray) -> int:
    """Index of the row with the smallest mean Euclidean distance to all rows (GRIS)."""
    h = hists.astype(np.float64)
    sq = (h * h).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * h @ h.T, 0.0)
    return int(np.sqrt(d2).mean(1).argmin())


def downsample(rgb8: np.ndarray, max_side: int) -> np.ndarray:
    """Stride an image so its longer side is at most ``max_side`` (cheap, no interpolation)."""
    step = max(1, int(np.ceil(max(rgb8.shape[:2]) / max_side)))
    return np.ascontiguousarray(rgb8[::step, ::step])


def image_embedding(
    model: torch.nn.Module, rgb8: np.ndarray, input_spec: dict, *, max_side: int = 256
) -> np.ndarray:
    """The model's L2-normalised global embedding of an image (resized to <= ``max_side``)."""
    from napari_dgseg.core.models.base import normalise_input

    div = int(model.divisor)
    x = torch.from_numpy(np.array(rgb8, copy=True)).permute(2, 0, 1)[None].float().div(255.0)
    h, w = x.shape[-2:]
    scale = min(1.0, max_side / max(h, w))
    th = max(div, int(round(h * scale / div)) * div)
    tw = max(div, int(round(w * scale / div)) * div)
    x = F.interpolate(x, size=(th, tw), mode="bilinear", align_corners=False, antialias=True)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        emb = model.embed(normalise_input(x.to(device), input_spec))
    model.train(was_training)
    return emb[0].float().cpu().numpy()


def build_reference_bank(
    model: torch.nn.Module,
    images: Sequence[np.ndarray],
    input_spec: dict,
    *,
    space: str = "lab-reinhard",
    max_images: int = 256,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Build the bank from training images (uint8 RGB); at most ``max_images`` (random subset)."""
    if len(images) == 0:
        raise InputError("cannot build a reference bank from zero images")
    order = np.arange(len(images))
    if len(order) > max_images:
        order = np.sort(np.random.default_rng(seed).choice(order, max_images, replace=False))
    from napari_dgseg.core.color.normalizers import METHODS, get_normalizer, tissue_samples

    hists, embs, means, stds = [], [], [], []
    method_stats: dict[str, list[np.ndarray]] = {m: [] for m in METHODS}
    for i in order:
        rgb8 = downsample(np.asarray(images[i]), 512)
        hists.append(rgb_histogram(rgb8))
        embs.append(image_embedding(model, rgb8, input_spec))
        m, s = image_color_stats(rgb8, space=space)
        means.append(m)
        stds.append(s)
        samples = tissue_samples(np.ascontiguousarray(downsample(np.asarray(images[i]), 1024)))
        for name in METHODS:
            method_stats[name].append(get_normalizer(name).fit(*samples))
    hist = np.stack(hists)
    extra = {}
    for name, rows in method_stats.items():
        stacked = np.stack(rows).astype(np.float64)
        bad = ~np.isfinite(stacked).all(axis=1)
        if bad.all():
            continue  # the method could fit none of the images: it falls back (reference_stats)
        if bad.any():
            # an image the method could not fit (Macenko on a tile without two stains) takes
            # the median statistics of the others, so the bank stays finite and loadable
            stacked[bad] = np.median(stacked[~bad], axis=0)
        extra[f"ref_{name}"] = torch.from_numpy(stacked)
    return {
        **extra,
        "hist": torch.from_numpy(hist),
        "embedding": torch.from_numpy(np.stack(embs)),
        "mean": torch.from_numpy(np.stack(means)).float(),
        "std": torch.from_numpy(np.stack(stds)).float(),
        "gris": torch.tensor([histogram_medoid(hist)], dtype=torch.int64),
        "source_index": torch.from_numpy(order.astype(np.int64)),
    }


def add_bank_to_bundle(bundle: Any, images: Sequence[np.ndarray], names: Sequence[str] | None = None,
                       *, space: str = "lab-reinhard") -> dict[str, torch.Tensor]:
    """Compute the bank with the bundle's own model and store it (``bank.safetensors``)."""
    bank = build_reference_bank(bundle.model, images, bundle.input_spec, space=space)
    bundle.set_extra(BANK_FILE, bank)
    idx = bank["source_index"].tolist()
    gris = int(bank["gris"][0])
    bundle.manifest["dcin"] = {
        "space": space,
        "images": len(idx),
        "gris_reference": (names[idx[gris]] if names else f"training image {idx[gris]}"),
        "embedding": "model encoder, global-average-pooled bottleneck, L2-normalised",
        "names": [names[i] for i in idx] if names else None,
    }
    return bank


def reference_stats(bank: dict[str, torch.Tensor], index: int, normalizer: Any) -> tuple[np.ndarray, str]:
    """Statistics of bank image ``index`` for ``normalizer`` and where they came from.

    Returns
    -------
    stats : ndarray, shape (D,)
    origin : str
        ``"bank"`` (stored when the bank was built, or the stored Reinhard mean and std) or
        ``"histogram"`` (estimated from the stored colour histogram of an older bank).
    """
    from napari_dgseg.core.color.normalizers import get_normalizer, histogram_samples

    key = f"ref_{normalizer.name}"
    if key in bank and tuple(bank[key].shape) == (bank["hist"].shape[0], normalizer.size):
        return bank[key][index].double().numpy(), "bank"
    plain = np.concatenate([bank["mean"][index].double().numpy(), bank["std"][index].double().numpy()])
    if normalizer.name in ("reinhard", "reinhard-bounded"):
        return plain, "bank"
    if normalizer.name == "macenko":
        # stain vectors from 32-level bins are too coarse (measured: eosin vector off by ~15
        # degrees); without stored statistics macenko falls back to Reinhard
        return np.concatenate([plain, np.full(8, np.nan)]), "histogram: no stain statistics"
    samples = histogram_samples(bank["hist"][index].double().numpy())
    if len(samples[0]) == 0:
        return plain, "bank (no histogram: Reinhard statistics)"
    stats = normalizer.fit(*samples)
    # Bins are 32 grey levels wide: their centres shift the mean a little and inflate the std.
    # Use the histogram only for what the method changes relative to plain Reinhard, anchored on
    # the exact stored Reinhard statistics.
    coarse = get_normalizer("reinhard").fit(*samples)
    stats[:3] = plain[:3] + (stats[:3] - coarse[:3])
    stats[3:6] = plain[3:6] * (stats[3:6] / coarse[3:6])
    return stats, "histogram"


def validate_bank(bank: dict[str, torch.Tensor], model_name: str) -> None:
    """Refuse a reference bank that would silently spoil normalisation.

    Checks the keys, shapes (``hist`` ``(N, 512)``, ``embedding`` ``(N, D)``, ``mean`` and
    ``std`` ``(N, 3)``, ``gris`` one index in ``0..N-1``), that every value is finite and every
    ``std`` positive (a zero std maps the whole image to one colour: an all-background mask).

    Raises
    ------
    BundleError
        Naming the model and the defect; the fix is to rebuild the bank with ``dgseg bank``.
    """
    from napari_dgseg.core.errors import BundleError

    fix = f"; rebuild it with `dgseg bank {model_name} --source TRAINING_DIR`"

    def bad(what: str) -> BundleError:
        return BundleError(f"model {model_name!r}: the DCIN reference bank {what}{fix}")

    missing = sorted({"hist", "embedding", "mean", "std", "gris"} - set(bank))
    if missing:
        raise bad(f"lacks {missing}")
    n = int(bank["hist"].shape[0]) if bank["hist"].ndim == 2 else -1
    shapes = {"hist": (n, BINS**3), "mean": (n, 3), "std": (n, 3)}
    for key, shape in shapes.items():
        if n < 1 or tuple(bank[key].shape) != shape:
            raise bad(f"has {key} of shape {list(bank[key].shape)}, expected {list(shape)}")
    emb = bank["embedding"]
    if emb.ndim != 2 or emb.shape[0] != n or emb.shape[1] < 1:
        raise bad(f"has embedding of shape {list(emb.shape)}, expected [{n}, D]")
    gris = bank["gris"]
    if gris.numel() != 1 or gris.is_floating_point() or not 0 <= int(gris.reshape(-1)[0]) < n:
        raise bad(f"has a GRIS index {gris.tolist()} outside 0..{n - 1}")
    for key in ("hist", "embedding", "mean", "std"):
        if not bool(torch.isfinite(bank[key]).all()):
            raise bad(f"holds NaN or infinite values in {key}")
    if not bool((bank["std"] > 0).all()):
        raise bad("holds a zero or negative colour std")
