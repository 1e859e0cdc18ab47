"""Store what the shipped bundles predict on a fixed synthetic image (a regression net).

Run from the repository root to (re)write ``tests/data/bundle_outputs/<bundle>.npz``::

    python tests/data/make_bundle_outputs.py

Each file holds, for DCIN ``none`` and ``auto``: ``<dcin>_labels`` (int32), and where the bundle
returns them ``<dcin>_probabilities`` (float32), ``<dcin>_codebook_indices`` (int32) and
``<dcin>_uncertainty`` (float32), and every numeric array in ``extras`` as
``<dcin>_extra_<key>`` (HoVer-Net's HV maps, SQ-VAE's code usage). ``tests/test_shipped_bundles.py`` asserts the current code
reproduces them (labels exactly, floats to 1e-5). Rewrite them only when a change of the
predictions is intended, and say why in the commit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: Side of the synthetic input (small: the stored files stay a few hundred kB in all).
SIZE = 96
#: DCIN modes stored per bundle.
DCIN_MODES = ("none", "auto")
#: Prediction fields stored when present.
FIELDS = ("probabilities", "codebook_indices", "uncertainty")
OUT_DIR = Path(__file__).resolve().parent / "bundle_outputs"


def synthetic_input(size: int = SIZE, seed: int = 2024) -> np.ndarray:
    """A deterministic H&E-like ``(size, size, 3)`` uint8 image: purple disks and a dark line.

    Built from numpy only (no package code), so the input never changes with the package.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    img = np.empty((size, size, 3), np.float32)
    img[:] = (225.0, 190.0, 215.0)
    for _ in range(9):
        cy, cx = rng.uniform(8, size - 8, 2)
        r = rng.uniform(4, 9)
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        img[inside] = (110.0, 60.0, 150.0)
    line = np.abs((yy - 0.6 * xx) - size * 0.3) < 2.5
    img[line] = (150.0, 50.0, 80.0)
    img += rng.normal(0.0, 5.0, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def bundle_outputs(bundle) -> dict[str, np.ndarray]:
    """Predictions of ``bundle`` on :func:`synthetic_input` for every mode in ``DCIN_MODES``."""
    image = synthetic_input()
    out: dict[str, np.ndarray] = {}
    for mode in DCIN_MODES:
        # at the image's own scale: this checks the models and the pipeline; the scale decision
        # (which would resample these disks) has its own tests (tests/test_scale*.py)
        pred = bundle.predict(image, device="cpu", dcin=mode, tile=128, overlap=32, batch=1,
                              rescale="off")
        out[f"{mode}_labels"] = np.asarray(pred.labels, dtype=np.int32)
        for field in FIELDS:
            value = getattr(pred, field)
            if value is not None:
                dtype = np.int32 if field == "codebook_indices" else np.float32
                out[f"{mode}_{field}"] = np.asarray(value, dtype=dtype)
        for key, value in sorted(pred.extras.items()):
            if isinstance(value, np.ndarray) and value.dtype.kind in "fiu":
                out[f"{mode}_extra_{key}"] = value
    return out


def shipped_bundle_paths() -> list[Path]:
    """The ``.dgseg`` files shipped in the package, sorted by name."""
    from napari_dgseg.core.bundle import shipped_dir

    return sorted(Path(shipped_dir()).glob("*.dgseg"))


def main() -> None:
    """Write one ``.npz`` per shipped bundle."""
    import torch

    from napari_dgseg.core.bundle import load_bundle

    torch.set_num_threads(1)
    OUT_DIR.mkdir(exist_ok=True)
    for path in shipped_bundle_paths():
        arrays = bundle_outputs(load_bundle(path))
        np.savez_compressed(OUT_DIR / f"{path.stem}.npz", **arrays)
        print(path.stem, sorted(arrays))


if __name__ == "__main__":
    main()
