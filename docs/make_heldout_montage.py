"""Make docs/images/heldout_nuclei.png and docs/images/heldout_vessels.png.

    python docs/make_heldout_montage.py

One row per style of the held-out renderers (:mod:`napari_dgseg.core.data.heldout_nuclei`,
:mod:`napari_dgseg.core.data.heldout_vessels`): three images (seeds 1-3, 192 px) and, last, the
ground truth of the first one (nuclei: instance outlines in green over the image; vessels: the
vessel mask, grey outside the field of view). Deterministic: rerunning gives the same files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SIZE = 192
SEEDS = (1, 2, 3)
GAP = 4


def _row(tiles: list[np.ndarray]) -> np.ndarray:
    gap = np.full((tiles[0].shape[0], GAP, 3), 255, np.uint8)
    parts = []
    for t in tiles:
        parts += [t, gap]
    return np.concatenate(parts[:-1], 1)


def _stack(rows: list[np.ndarray]) -> np.ndarray:
    gap = np.full((GAP, rows[0].shape[1], 3), 255, np.uint8)
    parts = []
    for r in rows:
        parts += [r, gap]
    return np.concatenate(parts[:-1], 0)


def main() -> int:
    from PIL import Image
    from skimage.segmentation import find_boundaries

    from napari_dgseg.core.data.heldout_nuclei import HELDOUT_NUCLEI_STYLES, make_heldout_nuclei
    from napari_dgseg.core.data.heldout_vessels import HELDOUT_VESSEL_STYLES, make_heldout_vessels

    out = HERE / "images"
    rows = []
    for style in HELDOUT_NUCLEI_STYLES:
        tiles = [make_heldout_nuclei(SIZE, style, s) for s in SEEDS]
        gt = tiles[0][0].copy()
        gt[find_boundaries(tiles[0][1], mode="inner")] = (0, 230, 0)
        rows.append(_row([t[0] for t in tiles] + [gt]))
    Image.fromarray(_stack(rows)).save(out / "heldout_nuclei.png", optimize=True)
    rows = []
    for style in HELDOUT_VESSEL_STYLES:
        tiles = [make_heldout_vessels(SIZE, style, s) for s in SEEDS]
        _, lab, fov = tiles[0]
        gt = np.where(lab[..., None] > 0, 255, np.where(fov[..., None], 0, 90)).astype(np.uint8)
        rows.append(_row([t[0] for t in tiles] + [np.repeat(gt, 3, -1)]))
    Image.fromarray(_stack(rows)).save(out / "heldout_vessels.png", optimize=True)
    print(out / "heldout_nuclei.png", out / "heldout_vessels.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
