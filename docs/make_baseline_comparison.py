"""Default model vs classical baseline, side by side on real images: docs/images/baseline_*.png.

    .venv/bin/python docs/make_baseline_comparison.py

Real H&E: ``../shared/data/real-he/he_tumour_500x300.jpg`` and ``he_tumour_1000px.png`` (BSD-3,
from the StarDist and TIAToolbox wheels; not shipped); real fundus: scikit-image's
``retina.jpg`` at native size. Each figure: left the task's default model, right the classical
baseline, drawn on the image (yellow nucleus outlines; cyan vessels); the H&E panels are a
central 300 px crop of a prediction on the whole tile.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "real-he"


def _images() -> list[tuple[str, np.ndarray, str]]:
    from skimage import data
    from skimage.io import imread

    out = []
    for name in ("he_tumour_500x300.jpg", "he_tumour_1000px.png"):
        if (SHARED / name).is_file():
            out.append((Path(name).stem, imread(SHARED / name)[..., :3], "nuclei"))
    out.append(("retina", data.retina()[..., :3], "vessels"))
    return out


def _overlay(image: np.ndarray, labels: np.ndarray, task: str) -> np.ndarray:
    """The image with the mask drawn on it: instance outlines (nuclei) or a tinted mask (vessels)."""
    from skimage.segmentation import find_boundaries

    out = image.astype(np.float32).copy()
    if task == "nuclei":
        edge = find_boundaries(labels, mode="inner")
        out[edge] = (255.0, 255.0, 0.0)
    else:
        fg = labels > 0
        out[fg] = 0.35 * out[fg] + 0.65 * np.array([0.0, 255.0, 255.0])
    return out.clip(0, 255).astype(np.uint8)


def main() -> None:
    from skimage.io import imsave

    from napari_dgseg.core.bundle import load_bundle
    from napari_dgseg.core.bundle_index import default_models

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "images"))
    args = ap.parse_args()
    defaults = default_models()
    classical = {"nuclei": "classical-he", "vessels": "classical-fundus"}
    for stem, image, task in _images():
        h, w = image.shape[:2]
        side = min(h, w, 300) if task == "nuclei" else min(h, w)
        y0, x0 = (h - side) // 2, (w - side) // 2
        view = (slice(y0, y0 + side), slice(x0, x0 + side))
        panels = []
        for name in (defaults[task], classical[task]):
            labels = np.asarray(load_bundle(name).predict(image).labels)  # the whole image
            n = len(np.unique(labels)) - 1
            frac = float(np.mean(labels > 0))
            print(stem, name, f"objects {n}" if task == "nuclei" else "", f"fraction {frac:.3f}")
            panels.append(_overlay(image[view], labels[view], task))
            panels.append(np.full((side, 8, 3), 255, np.uint8))
        figure = np.concatenate(panels[:-1], axis=1)
        if figure.shape[1] > 1600:  # keep the docs light: the fundus figure at half size
            figure = figure[::2, ::2]
        path = Path(args.out) / f"baseline_{stem}.png"
        imsave(path, figure, check_contrast=False)
        print(path)


if __name__ == "__main__":
    main()
