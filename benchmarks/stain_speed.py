"""Colour-normalization speed: this project's methods against public anchors, side by side.

One 4096 x 4096 synthetic H&E image (a 1024 px render of the training renderer tiled 4 x 4),
uint8 in and uint8 out, on the CPU, best of ``--repeat``; every repeat times every entry in
turn, so a change of machine load hits all of them alike. Each entry is split into

* ``fit``: statistics of the target (and, where the library does it per call, of the reference);
* ``transform``: the mapping of all 16.8 M pixels (with the uint8 <-> float conversions).

Entries:

* ``dgseg <method>`` for every method of ``napari_dgseg.core.color.normalizers``: target
  statistics from the tissue of a copy strided to <= 1024 px (what inference does once per
  slide), transform of the whole image as one torch tensor;
* ``torchstain macenko`` / ``torchstain reinhard`` (torch backend; fitting is inside
  ``normalize``, on every pixel);
* ``stainx macenko`` / ``stainx reinhard`` (torch backend, CPU);
* ``opencv cielab``: the DCIN authors' transfer as their code does it (8-bit OpenCV CIELAB,
  per-channel mean/std, truncation), written here from that description;
* ``staintools``: left out when it does not install (it needs ``spams``, which does not build
  here); the JSON says so.

The anchors are benchmark-only and are not project dependencies: install them into a separate
folder and point ``--anchors`` at it (e.g. ``pip install --no-deps --target /tmp/anchors
torchstain stainx opencv-python-headless``). A missing anchor is reported, not fatal.

Stdout is one JSON object::

    OMP_NUM_THREADS=1 python benchmarks/stain_speed.py --anchors /tmp/anchors \
        > benchmarks/results/stain_speed.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def dgseg_entry(method: str, img: np.ndarray, ref: np.ndarray):
    import torch

    from napari_dgseg.core.color.bank import downsample
    from napari_dgseg.core.color.normalizers import get_normalizer, tissue_samples

    norm = get_normalizer(method)
    r_stats = norm.fit(*tissue_samples(ref))
    state = {}

    def fit() -> None:
        state["t"] = norm.fit(*tissue_samples(downsample(img, 1024)))

    def transform() -> np.ndarray:
        branch = norm.branch(state["t"], r_stats)
        with torch.inference_mode():
            x = torch.from_numpy(img).permute(2, 0, 1).float().div_(255.0)
            y = branch(x)
            return y.mul_(255.0).round_().to(torch.uint8).permute(1, 2, 0).numpy()

    return fit, transform


def opencv_entry(img: np.ndarray, ref: np.ndarray):
    import cv2

    def stats(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        flat = lab.reshape(-1, 3).astype(np.float32)
        return flat.mean(0), flat.std(0)

    r_mean, r_std = stats(cv2.cvtColor(ref, cv2.COLOR_RGB2LAB))
    state = {}

    def fit() -> None:
        state["lab"] = cv2.cvtColor(img, cv2.COLOR_RGB2LAB)
        state["m"], state["s"] = stats(state["lab"])

    def transform() -> np.ndarray:
        lab = state["lab"].astype(np.float32)
        lab = (lab - state["m"]) / np.maximum(state["s"], 1e-6) * r_std + r_mean
        lab = np.clip(lab, 0, 255).astype(np.uint8)  # truncation, as the authors' code
        return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)

    return fit, transform


def torchstain_entry(kind: str, img: np.ndarray, ref: np.ndarray):
    import torch
    import torchstain

    n = torchstain.normalizers.MacenkoNormalizer(backend="torch") if kind == "macenko" else \
        torchstain.normalizers.ReinhardNormalizer(backend="torch")
    n.fit(torch.from_numpy(ref).permute(2, 0, 1).contiguous())
    x = torch.from_numpy(img).permute(2, 0, 1).contiguous()

    def transform():
        with torch.inference_mode():
            out = n.normalize(I=x, stains=False) if kind == "macenko" else n.normalize(x)
        return out[0] if isinstance(out, tuple) else out

    return (lambda: None), transform


def stainx_entry(kind: str, img: np.ndarray, ref: np.ndarray):
    import stainx
    import torch

    cls = stainx.Macenko if kind == "macenko" else stainx.Reinhard
    n = cls(device="cpu", backend="torch")
    n.fit(torch.from_numpy(ref).permute(2, 0, 1)[None].contiguous())
    x = torch.from_numpy(img).permute(2, 0, 1)[None].contiguous()

    def transform():
        with torch.inference_mode():
            return n.transform(x)

    return (lambda: None), transform


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--anchors", default=None, help="folder the anchor packages are installed in")
    args = ap.parse_args()
    if args.anchors:
        sys.path.append(args.anchors)

    import torch
    from _report import load_average, machine_state

    from napari_dgseg.core.color.normalizers import METHODS
    from napari_dgseg.core.data.synthetic import make_nuclei

    load_before = load_average()
    tile, _ = make_nuclei(1024, domain="warm-scanner", seed=1)
    reps = -(-args.size // 1024)
    img = np.ascontiguousarray(np.tile(tile, (reps, reps, 1))[: args.size, : args.size])
    ref, _ = make_nuclei(512, domain="clean", seed=2)

    entries: dict[str, tuple] = {f"dgseg {m}": dgseg_entry(m, img, ref) for m in METHODS}
    missing: dict[str, str] = {}
    for name, make in (("opencv cielab (DCIN authors' transfer)", lambda: opencv_entry(img, ref)),
                       ("torchstain macenko", lambda: torchstain_entry("macenko", img, ref)),
                       ("torchstain reinhard", lambda: torchstain_entry("reinhard", img, ref)),
                       ("stainx macenko", lambda: stainx_entry("macenko", img, ref)),
                       ("stainx reinhard", lambda: stainx_entry("reinhard", img, ref))):
        try:
            entries[name] = make()
        except Exception as exc:  # noqa: BLE001 - an anchor that does not import is reported
            missing[name] = f"{type(exc).__name__}: {exc}"[:200]
    try:
        import staintools  # noqa: F401

        missing["staintools"] = "installed but not benchmarked (no entry written)"
    except Exception as exc:  # noqa: BLE001
        missing["staintools"] = f"not installed ({type(exc).__name__}); it needs spams, which " \
                                "did not build here"
    times: dict[str, dict[str, list[float]]] = {k: {"fit": [], "transform": []} for k in entries}
    for _ in range(args.repeat):
        for name, (fit, transform) in entries.items():
            times[name]["fit"].append(best(fit, 1))
            times[name]["transform"].append(best(transform, 1))
            print(name, times[name]["transform"][-1], file=sys.stderr, flush=True)
    rows = []
    for name, t in times.items():
        f, tr = min(t["fit"]), min(t["transform"])
        rows.append({"entry": name, "fit_s": round(f, 3), "transform_s": round(tr, 3),
                     "total_s": round(f + tr, 3),
                     "megapixels_per_s": round(args.size**2 / 1e6 / (f + tr), 1)})
    versions = {}
    for mod in ("torchstain", "stainx", "cv2"):
        try:
            versions[mod] = getattr(__import__(mod), "__version__", "?")
        except Exception:  # noqa: BLE001
            versions[mod] = None
    out = {
        "benchmark": "stain_speed",
        "command": "python benchmarks/stain_speed.py " + " ".join(sys.argv[1:]),
        "image": [args.size, args.size, 3],
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "repeat": args.repeat,
        "rows": rows,
        "not_measured": missing,
        "versions": versions | {"torch": torch.__version__},
        "machine": machine_state(load_before),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
