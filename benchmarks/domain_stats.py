"""Per-domain image statistics of the synthetic generator: the domains differ, measurably.

For each domain: Lab colour mean and spread (skimage ``rgb2lab`` over all pixels of ``--n``
images; vessels over the field of view), sharpness (variance of the Laplacian of the grey image),
noise level (Immerkaer's fast estimator: Laplacian-difference mask, 8-bit units), JPEG blockiness (mean |step| across 8-pixel
block borders / elsewhere), and generation time per image. Optionally writes a montage per kind.

Usage::

    python benchmarks/domain_stats.py [--n 8] [--size 256] [--montage docs/images]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def _immerkaer(g: np.ndarray) -> float:
    """Immerkaer (1996) noise sigma: sqrt(pi/2) / (6 (W-2)(H-2)) * sum |g * M|."""
    from scipy import ndimage as ndi

    m = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], float)
    conv = np.abs(ndi.convolve(g, m))[1:-1, 1:-1]
    h, w = g.shape
    return float(np.sqrt(np.pi / 2) * conv.sum() / (6 * (w - 2) * (h - 2)))


def _stats(images, masks):
    from scipy import ndimage as ndi
    from skimage.color import rgb2gray, rgb2lab

    labs, sharp, noise, block = [], [], [], []
    for img, m in zip(images, masks, strict=True):
        lab = rgb2lab(img)
        labs.append(lab[m] if m is not None else lab.reshape(-1, 3))
        g = rgb2gray(img)
        lap = ndi.laplace(g)
        sharp.append(float(lap[m].var() if m is not None else lap.var()))
        noise.append(_immerkaer(g) * 255)
        d = np.abs(np.diff(g, axis=1)).mean(axis=0)
        at = d[7::8].mean()
        block.append(float(at / np.delete(d, np.s_[7::8]).mean()))
    all_lab = np.concatenate(labs)
    return {
        "lab_mean": [round(float(v), 2) for v in all_lab.mean(0)],
        "lab_std": [round(float(v), 2) for v in all_lab.std(0)],
        "sharpness_laplacian_var": round(float(np.mean(sharp)) * 1e4, 2),
        "noise_sigma_8bit": round(float(np.mean(noise)), 2),
        "jpeg_blockiness": round(float(np.mean(block)), 3),
    }


def main() -> None:
    from napari_dgseg.core.data.synthetic import list_domains, make_sample

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--montage", default=None, help="folder for domain_<kind>_<name>.png images")
    args = ap.parse_args()
    result = {"benchmark": "domain_stats", "n": args.n, "size": args.size, "domains": {}}
    for kind, names in list_domains().items():
        result["domains"][kind] = {}
        for name in names:
            t0 = time.perf_counter()
            samples = [make_sample(kind, args.size, name, seed=100 + i) for i in range(args.n)]
            dt = (time.perf_counter() - t0) / args.n
            row = _stats([s.image for s in samples], [s.mask for s in samples])
            row["seconds_per_image"] = round(dt, 4)
            result["domains"][kind][name] = row
            if args.montage:
                from pathlib import Path

                from skimage.io import imsave

                tiles = [make_sample(kind, 192, name, seed=s).image for s in (1, 2, 3)]
                Path(args.montage).mkdir(parents=True, exist_ok=True)
                imsave(Path(args.montage) / f"domain_{kind}_{name}.png",
                       np.concatenate(tiles, axis=1), check_contrast=False)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
