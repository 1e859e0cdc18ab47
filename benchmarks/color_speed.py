"""Speed of the torch Reinhard colour transfer vs a straightforward numpy implementation.

Transfers a random-textured 4096 x 4096 RGB image (float32 in [0, 1]) to fixed reference
statistics on the CPU and prints one JSON object with the best-of-``--repeat`` wall times, the
speed-up, and the largest difference between the two outputs. Also times the numpy-facing
``normalize_colors`` on the uint8 image (statistics on a downsampled copy + transfer), and the
torch transfer on CUDA when a GPU is present.

    python benchmarks/color_speed.py [--size 4096] [--repeat 3] [--threads 1 2] [--figure PNG] \
        [--out benchmarks/results/color_speed.json]

Every repeat times, in turn, the torch transfer and ``normalize_colors`` for each ``--threads``
value and then the two numpy references, so changes in the machine's load hit all of them alike;
the numpy BLAS threads follow ``OMP_NUM_THREADS`` (recorded in the JSON).

The JSON records the load average before and after the run (``os.getloadavg``), so a timing taken
on a busy machine can be recognised as such.

``--figure PNG`` also writes the documentation figure (docs/images/dcin_transfer.png): a colour
cast removed by transfer to a reference (skimage's bundled IHC image) and the two CQG views of a
fundus crop (skimage's bundled retina image).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable

import numpy as np
import torch
from _report import load_average

from napari_dgseg.core.color.transfer import color_stats, normalize_colors, transfer

M_LMS = np.array([[0.3811, 0.5783, 0.0402], [0.1967, 0.7244, 0.0782], [0.0241, 0.1288, 0.8444]])
M_LAB = np.diag([1 / np.sqrt(3), 1 / np.sqrt(6), 1 / np.sqrt(2)]) @ np.array(
    [[1, 1, 1], [1, 1, -2], [1, -1, 0]], dtype=np.float64
)


def numpy_transfer(
    rgb: np.ndarray, t_mean: np.ndarray, t_std: np.ndarray, r_mean: np.ndarray, r_std: np.ndarray
) -> np.ndarray:
    """Reference: the paper's equations on an (H, W, 3) array, in the array's dtype."""
    dt = rgb.dtype
    lms = rgb @ M_LMS.T.astype(dt)
    lab = np.log10(np.maximum(lms, dt.type(1e-6))) @ M_LAB.T.astype(dt)
    lab = (lab - t_mean.astype(dt)) / t_std.astype(dt) * r_std.astype(dt) + r_mean.astype(dt)
    out = (10.0 ** (lab @ np.linalg.inv(M_LAB).T.astype(dt))) @ np.linalg.inv(M_LMS).T.astype(dt)
    return np.clip(out, 0.0, 1.0)


def best_time(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def make_image(size: int, seed: int = 0) -> np.ndarray:
    """Smooth colour texture + noise, uint8 (H, W, 3)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0.2, 0.9, (3, size // 64 + 1, size // 64 + 1)).astype(np.float32)
    t = torch.nn.functional.interpolate(
        torch.from_numpy(coarse)[None], size=(size, size), mode="bilinear", align_corners=True
    )[0]
    img = t.permute(1, 2, 0).numpy() + rng.normal(0, 0.03, (size, size, 3)).astype(np.float32)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def write_figure(path: str) -> None:
    """Reference / colour-cast target / normalized (two spaces); fundus x, x1, x2 of CQG."""
    import skimage.data
    import skimage.io
    from skimage.transform import resize

    from napari_dgseg.core.augment_cqg import cqg_views

    def small(a: np.ndarray) -> np.ndarray:
        return (resize(a, (160, 160), anti_aliasing=True) * 255).astype(np.uint8)

    ihc = skimage.data.immunohistochemistry()
    ref, tgt = ihc[:256, :256], ihc[256:, 256:].astype(np.float64) / 255
    cast = np.clip(tgt ** np.array([0.7, 1.2, 0.9]) * np.array([0.95, 0.85, 1.0]), 0, 1)
    cast8 = (cast * 255).astype(np.uint8)
    row1 = [ref, cast8, normalize_colors(cast8, ref), normalize_colors(cast8, ref, space="cielab")]
    retina = skimage.data.retina()[300:812, 300:812]
    x = torch.from_numpy(retina).permute(2, 0, 1)[None].float() / 255
    labels = torch.zeros(1, 512, 512, dtype=torch.long)
    x1, x2, _ = cqg_views(x, labels, torch.Generator().manual_seed(3))
    views = [(v[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8) for v in (x, x1, x2)]
    row2 = [views[0], views[1], views[2], np.full_like(views[0], 255)]
    grid = np.concatenate(
        [np.concatenate([small(a) for a in row], axis=1) for row in (row1, row2)], axis=0
    )
    skimage.io.imsave(path, grid, check_contrast=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[0],
                        help="torch thread counts to time (0: torch default)")  # fmt: skip
    parser.add_argument("--figure", default=None, help="also write the docs figure to this PNG")
    parser.add_argument("--out", default=None, help="also write the JSON to this file")
    args = parser.parse_args()
    load_before = load_average()
    if args.figure:
        write_figure(args.figure)
    threads = [t or torch.get_num_threads() for t in args.threads]

    img8 = make_image(args.size)
    rgb = img8.astype(np.float32) / 255.0
    tensor = torch.from_numpy(rgb).permute(2, 0, 1)
    t_mean, t_std = (v.numpy().astype(np.float64) for v in color_stats(tensor[:, ::8, ::8]))
    r_mean, r_std = t_mean + np.array([0.05, -0.01, 0.005]), t_std * np.array([1.2, 0.9, 1.1])

    def run_torch() -> torch.Tensor:
        with torch.no_grad():
            return transfer(tensor, t_mean, t_std, r_mean, r_std)

    best = {t: {"torch": float("inf"), "norm": float("inf")} for t in threads}
    np64_s = np32_s = float("inf")
    out_t = out_64 = out_32 = None
    rgb64 = rgb.astype(np.float64)
    for _ in range(args.repeat):  # every timing once per round, so load drift hits all alike
        for t in threads:
            torch.set_num_threads(t)
            torch_s, out_t = best_time(run_torch, 1)
            norm_s, _ = best_time(lambda: normalize_colors(img8, (r_mean, r_std)), 1)
            best[t]["torch"] = min(best[t]["torch"], torch_s)
            best[t]["norm"] = min(best[t]["norm"], norm_s)
        s64, out_64 = best_time(lambda: numpy_transfer(rgb64, t_mean, t_std, r_mean, r_std), 1)
        s32, out_32 = best_time(lambda: numpy_transfer(rgb, t_mean, t_std, r_mean, r_std), 1)
        np64_s, np32_s = min(np64_s, s64), min(np32_s, s32)
    ours = out_t.permute(1, 2, 0).numpy()
    report = {
        "benchmark": "color_speed",
        "command": "python benchmarks/color_speed.py"
        + f" --size {args.size} --repeat {args.repeat} --threads "
        + " ".join(str(t) for t in args.threads),
        "image": [args.size, args.size, 3],
        "device": "cpu",
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "torch_version": torch.__version__,
        "numpy_transfer_float64_s": round(np64_s, 4),
        "numpy_transfer_float32_s": round(np32_s, 4),
        "max_abs_diff_vs_numpy_float64": float(np.abs(ours - out_64).max()),
        "max_abs_diff_vs_numpy_float32": float(np.abs(ours - out_32).max()),
        "by_torch_threads": {
            str(t): {
                "torch_transfer_float32_s": round(b["torch"], 4),
                "speedup_vs_numpy_float64": round(np64_s / b["torch"], 2),
                "speedup_vs_numpy_float32": round(np32_s / b["torch"], 2),
                "normalize_colors_uint8_s": round(b["norm"], 4),
            }
            for t, b in best.items()
        },
    }
    if torch.cuda.is_available():
        cuda = tensor.cuda()

        def run_cuda() -> torch.Tensor:
            with torch.no_grad():
                out = transfer(cuda, t_mean, t_std, r_mean, r_std)
            torch.cuda.synchronize()
            return out

        run_cuda()
        report["torch_transfer_cuda_s"] = round(best_time(run_cuda, args.repeat)[0], 4)
        report["cuda_device"] = torch.cuda.get_device_name()
    report["loadavg_1_5_15_before"] = load_before
    report["loadavg_1_5_15_after"] = [round(v, 2) for v in os.getloadavg()]
    text = json.dumps(report, indent=2)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
