"""The shipped nuclei models on real H&E (no ground truth), with and without DCIN.

Uses the two real tiles in ``../shared/data/real-he`` (TIAToolbox's stain-normalisation target and
StarDist's H&E test image, both BSD-3-Clause; not shipped with the project). Without labels, the
reference is a haematoxylin mask: colour deconvolution (``skimage.color.rgb2hed``), Otsu threshold
on the H channel, small objects removed. Reports, per model and DCIN mode, the fraction of pixels
called nucleus and the Dice agreement with that reference. A model that calls the whole tile
"nucleus" scores badly; one that follows the haematoxylin scores well.

Stdout is exactly one JSON object; progress lines go to stderr. Usage::

    python benchmarks/real_he.py [--shared ../shared] [--models nuclei-unet nuclei-hovernet]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def haematoxylin_reference(rgb: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2hed
    from skimage.filters import threshold_otsu
    from skimage.morphology import remove_small_objects

    h = rgb2hed(rgb)[..., 0]
    return remove_small_objects(h > threshold_otsu(h), 20)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared"))
    ap.add_argument("--models", nargs="+", default=["nuclei-unet", "nuclei-unet-cqg", "nuclei-hovernet"])
    ap.add_argument("--modes", nargs="+", default=["none", "gris", "lris", "full"])
    args = ap.parse_args()

    from skimage.io import imread

    from napari_dgseg import list_bundles, load_bundle
    from napari_dgseg.core.metrics import dice

    folder = Path(args.shared) / "data" / "real-he"
    files = sorted(p for p in folder.glob("*") if p.suffix.lower() in (".png", ".jpg"))
    if not files:
        raise SystemExit(f"no real H&E images in {folder}")
    available = {b["name"] for b in list_bundles()}
    rows = []
    for path in files:
        rgb = imread(path)[..., :3]
        ref = haematoxylin_reference(rgb)
        for model in [m for m in args.models if m in available]:
            bundle = load_bundle(model)
            for mode in args.modes:
                pred = bundle.predict(rgb, dcin=mode, device="cpu")
                fg = pred.labels > 0
                rows.append({"image": path.name, "model": model, "dcin": mode,
                             "nucleus_fraction": round(float(fg.mean()), 4),
                             "reference_fraction": round(float(ref.mean()), 4),
                             "dice_vs_haematoxylin": round(float(dice(fg, ref)), 4)})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"benchmark": "real_he", "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
