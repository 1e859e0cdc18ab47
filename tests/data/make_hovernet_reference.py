"""Make the stored HoVer-Net post-processing cases ``tests/data/hovernet_<case>.npz``.

Run from the repository root (deterministic: fixed seeds, no package code involved in the
expected labels)::

    python tests/data/make_hovernet_reference.py

Each file holds ``np_prob`` (H, W) and ``hv`` (2, H, W) as float16 (the inputs, exactly what the
test feeds in after a cast to float32) and ``expected`` (H, W) int16 instance ids, numbered
``1..n`` in raster order of each instance's first pixel. ``expected`` is computed by the
independent step-by-step implementation ``reference_instances`` in
``tests/test_hovernet_reference.py``. If OpenCV (``cv2``) is importable, every case is also run
through a transcription of the HoVer-Net reference code's own calls (``cv2.normalize``,
``cv2.Sobel(ksize=21)``, ``cv2.GaussianBlur((3, 3), 0)``, ``cv2.morphologyEx(MORPH_OPEN,
MORPH_ELLIPSE 5x5)``, scipy's ``binary_fill_holes`` and ``label``, scikit-image's
``watershed``) and the script stops if the two disagree on any pixel; the OpenCV version used is
stored as ``opencv`` ("" if it was not available).

The inputs (nuclei drawn here, HV maps from a per-instance loop, Gaussian noise) are made without
package code, so a bug in the package cannot leak into the stored data.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from test_hovernet_reference import canonical, reference_instances  # noqa: E402


def hv_maps(inst: np.ndarray) -> np.ndarray:
    """HV targets by a per-instance loop: x / y distance to the centre of mass, each side to +-1."""
    out = np.zeros((2, *inst.shape), np.float64)
    for i in np.unique(inst[inst > 0]):
        ys, xs = np.nonzero(inst == i)
        for ch, coord in ((0, xs), (1, ys)):
            d = coord - coord.mean()
            v = np.zeros_like(d, dtype=np.float64)
            if (d < 0).any():
                v[d < 0] = d[d < 0] / -d[d < 0].min()
            if (d > 0).any():
                v[d > 0] = d[d > 0] / d[d > 0].max()
            out[ch, ys, xs] = v
    return out


def touching_ellipses(size: int, n: int, seed: int) -> np.ndarray:
    """Up to ``n`` random ellipses that may touch (each keeps >= 85 % of its own area)."""
    rng = np.random.default_rng(seed)
    lab = np.zeros((size, size), np.int32)
    yy, xx = np.mgrid[:size, :size]
    i = 0
    for _ in range(20 * n):
        if i == n:
            break
        cy, cx = rng.uniform(8, size - 8, 2)
        a, b = rng.uniform(6, 12, 2)
        t = rng.uniform(0, np.pi)
        c, s = np.cos(t), np.sin(t)
        dy, dx = yy - cy, xx - cx
        inside = ((dx * c + dy * s) / a) ** 2 + ((-dx * s + dy * c) / b) ** 2 <= 1
        if np.count_nonzero(inside & (lab > 0)) > 0.15 * np.count_nonzero(inside):
            continue
        i += 1
        lab[inside & (lab == 0)] = i
    return lab


def border_ellipses(seed: int) -> np.ndarray:
    """Eight ellipses, seven of them cut by the image border (64 x 64)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:64, :64]
    lab = np.zeros((64, 64), np.int32)
    centres = [(0, 20), (0, 50), (63, 10), (63, 40), (25, 0), (50, 63), (15, 63), (40, 30)]
    for i, (cy, cx) in enumerate(centres, start=1):
        a, b = rng.uniform(6, 10, 2)
        inside = ((yy - cy) / a) ** 2 + ((xx - cx) / b) ** 2 <= 1
        lab[inside & (lab == 0)] = i
    return lab


def predicted_maps(gt: np.ndarray, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Network-like outputs: blurred NP probability and HV targets, both with Gaussian noise."""
    rng = np.random.default_rng(seed)
    hv = hv_maps(gt) + noise * rng.normal(size=(2, *gt.shape))
    prob = ndi.gaussian_filter((gt > 0).astype(np.float64), 1.0)
    prob = np.clip(prob + 0.3 * noise * rng.normal(size=gt.shape), 0.0, 1.0)
    return prob, hv


def thin_nucleus() -> tuple[np.ndarray, np.ndarray]:
    """A 5 px wide, 35 px long nucleus and a disk of radius 6, with perfect maps (48 x 64)."""
    gt = np.zeros((48, 64), np.int32)
    gt[20:25, 10:45] = 1
    yy, xx = np.mgrid[:48, :64]
    gt[(yy - 12) ** 2 + (xx - 52) ** 2 <= 36] = 2
    return (gt > 0).astype(np.float64), hv_maps(gt)


def cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """All stored cases as ``name -> (np_prob, hv)`` (before the float16 cast)."""
    return {
        "touching_clean": predicted_maps(touching_ellipses(96, 14, 0), 0.3, 0),
        "touching_noisy": predicted_maps(touching_ellipses(96, 14, 0), 1.0, 0),
        "border_noisy": predicted_maps(border_ellipses(2), 0.3, 2),
        # two more border layouts whose labels depend on the Sobel smoothing's border rule
        # (reflect-101) along y for the h map and along x for the v map respectively
        "border_sobel_h": predicted_maps(border_ellipses(25), 0.5, 25),
        "border_sobel_v": predicted_maps(border_ellipses(18), 0.5, 18),
        "thin_nucleus": thin_nucleus(),
    }


def opencv_instances(np_prob: np.ndarray, hv: np.ndarray) -> np.ndarray:
    """The reference code's OpenCV/scipy/scikit-image calls, in order (cross-check only)."""
    import cv2
    from scipy.ndimage import binary_fill_holes, label
    from skimage.segmentation import watershed

    def drop_small(lab: np.ndarray) -> np.ndarray:
        ids, counts = np.unique(lab, return_counts=True)
        return np.where(np.isin(lab, ids[(ids > 0) & (counts < 10)]), 0, lab)

    blb = drop_small(label((np_prob >= 0.5).astype(np.int32))[0])
    blb = (blb > 0).astype(np.int32)
    mm = {"alpha": 0, "beta": 1, "norm_type": cv2.NORM_MINMAX, "dtype": cv2.CV_32F}
    h = cv2.normalize(hv[0], None, **mm)
    v = cv2.normalize(hv[1], None, **mm)
    sh = 1 - cv2.normalize(cv2.Sobel(h, cv2.CV_64F, 1, 0, ksize=21), None, **mm)
    sv = 1 - cv2.normalize(cv2.Sobel(v, cv2.CV_64F, 0, 1, ksize=21), None, **mm)
    overall = np.maximum(sh, sv) - (1 - blb)
    overall[overall < 0] = 0
    dist = -cv2.GaussianBlur((1.0 - overall) * blb, (3, 3), 0)
    marker = blb - (overall >= 0.4).astype(np.int32)
    marker[marker < 0] = 0
    marker = binary_fill_holes(marker).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    marker = cv2.morphologyEx(marker, cv2.MORPH_OPEN, kernel)
    marker = drop_small(label(marker)[0])
    return canonical(watershed(dist, markers=marker, mask=blb))


def main() -> None:
    try:
        import cv2

        opencv = cv2.__version__
    except ImportError:
        opencv = ""
    for name, (prob, hv) in cases().items():
        prob16, hv16 = prob.astype(np.float16), hv.astype(np.float16)
        p32, h32 = prob16.astype(np.float32), hv16.astype(np.float32)
        expected = reference_instances(p32, h32)
        if opencv:
            other = opencv_instances(p32, h32)
            if not np.array_equal(other, expected):
                raise SystemExit(f"{name}: OpenCV transcription differs on {(other != expected).sum()} px")
        out = HERE / f"hovernet_{name}.npz"
        np.savez_compressed(out, np_prob=prob16, hv=hv16, expected=expected.astype(np.int16),
                            opencv=np.array(opencv))
        print(f"{out.name}: {expected.max()} instances, {out.stat().st_size} bytes, opencv={opencv or 'no'}")


if __name__ == "__main__":
    main()
