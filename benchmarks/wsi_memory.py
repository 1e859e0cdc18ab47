"""Peak memory and speed of streamed whole-slide inference against slide size; prints one JSON.

For each ``--sizes`` side it writes a synthetic SVS-like tiled pyramid (JPEG tiles of 512 px,
levels every 4x, ``MPP = 0.5``) tile by tile, mostly tissue (a band of glass ``--glass`` of the
side wide on the right and bottom, so blank blocks are skipped), then runs
:func:`napari_dgseg.core.wsi.predict_slide` in a fresh subprocess and reports that process's
peak resident memory (``VmHWM``, which includes the libraries: torch alone is a few hundred MB)
and the throughput (slide megapixels per second, and tissue-block megapixels per second).

With ``--sparse FRACTION`` the slide is a *sparse* one, as a biopsy is: the tissue is a few
islands (four fragments with irregular outlines, the same layout in slide coordinates at every
size) covering ``FRACTION`` of the slide, the rest glass; the tissue mask then skips the glass
blocks, so a network can be run on a 32k slide in a fraction of the time of a full one. The JSON
records the drawn tissue fraction and the blocks run and skipped per size.

The target: peak memory of a 16k and a 32k slide within 1.3x of a 4k slide. Rows are written to
``--out`` as each size finishes (``"complete": false`` until the last). Usage::

    nice -n 10 python benchmarks/wsi_memory.py --model vessels-ram-sgcg --sizes 4096 8192 16384 \\
        [--block 2048] [--sparse 0.15] [--out benchmarks/results/wsi_memory.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from _report import emit, load_average, machine_state

TILE = 512
SVS = "Aperio Image Library v12.0.15\n"


def base_tiles(n: int = 8, seed: int = 0) -> list[np.ndarray]:
    """``n`` tissue tiles (pink stroma, purple nuclei of 5-9 px radius)."""
    from skimage.draw import disk

    rng = np.random.default_rng(seed)
    tiles = []
    for _ in range(n):
        t = np.empty((TILE, TILE, 3), np.float32)
        t[:] = (222, 168, 198)
        for _ in range(260):
            r = int(rng.integers(5, 10))
            rr, cc = disk(tuple(int(v) for v in rng.integers(0, TILE, 2)), r, shape=(TILE, TILE))
            t[rr, cc] = (92, 44, 142)
        t += rng.normal(0, 5, t.shape)
        tiles.append(np.clip(t, 0, 255).astype(np.uint8))
    return tiles


def _downsample(tile: np.ndarray, f: int) -> np.ndarray:
    h, w = tile.shape[0] // f, tile.shape[1] // f
    return tile[: h * f, : w * f].reshape(h, f, w, f, 3).mean(axis=(1, 3)).astype(np.uint8)


#: Tissue fragments of a sparse slide, in slide coordinates (0..1): centre y, centre x, half
#: length, half width, angle (degrees), outline phase. Scaled together to the asked fraction.
FRAGMENTS = ((0.30, 0.27, 0.20, 0.075, 35.0, 0.3), (0.63, 0.57, 0.14, 0.11, -20.0, 1.7),
             (0.27, 0.74, 0.09, 0.06, 75.0, 2.9), (0.80, 0.22, 0.07, 0.05, 10.0, 4.1))


class Islands:
    """The tissue of a sparse slide: :data:`FRAGMENTS` with wavy outlines covering ``fraction``.

    Parameters
    ----------
    fraction : float
        Share of the slide's area that is tissue (0 < fraction < 0.5).
    """

    def __init__(self, fraction: float) -> None:
        if not 0.0 < fraction < 0.5:
            raise SystemExit("--sparse takes the tissue share of the slide, between 0 and 0.5")
        lo, hi = 0.05, 4.0  # bisection on the common scale of the fragments
        for _ in range(30):
            self.scale = (lo + hi) / 2
            if self.fraction() < fraction:
                lo = self.scale
            else:
                hi = self.scale

    def inside(self, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        """Whether the points (slide coordinates 0..1) are tissue."""
        out = np.zeros(np.broadcast_shapes(yy.shape, xx.shape), bool)
        for cy, cx, ry, rx, angle, phase in FRAGMENTS:
            reach = self.scale * max(ry, rx) * 1.25
            if (yy.max() < cy - reach or yy.min() > cy + reach or xx.max() < cx - reach
                    or xx.min() > cx + reach):
                continue
            a = np.deg2rad(angle)
            dy, dx = yy - cy, xx - cx
            u = (dx * np.cos(a) + dy * np.sin(a)) / (self.scale * ry)
            v = (-dx * np.sin(a) + dy * np.cos(a)) / (self.scale * rx)
            theta = np.arctan2(v, u)
            edge = 1.0 + 0.12 * np.sin(3 * theta + phase) + 0.06 * np.sin(7 * theta + 2 * phase)
            out |= u * u + v * v <= edge * edge
        return out

    def fraction(self, grid: int = 1024) -> float:
        """The tissue share of the slide, measured on a ``grid`` x ``grid`` lattice."""
        c = (np.arange(grid) + 0.5) / grid
        return float(self.inside(c[:, None], c[None, :]).mean())


def level_tiles(side: int, factor: int, tiles: list[np.ndarray], glass: float,
                islands: Islands | None = None) -> Iterator:
    """Tiles (row-major) of the level ``factor`` times smaller than level 0.

    Without ``islands``, tissue everywhere but a glass band ``glass`` of the side wide on the right
    and bottom; with them, tissue only inside the islands.
    """
    small = [_downsample(t, factor) if factor > 1 else t for t in tiles]
    lside = side // factor
    edge = side if islands is not None else int(side * (1.0 - glass)) // TILE * TILE  # glass band start
    per = TILE // factor  # level-0 tiles per output tile side: factor
    for ty in range(0, lside, TILE):
        for tx in range(0, lside, TILE):
            out = np.full((TILE, TILE, 3), 242, np.uint8)
            for j in range(factor):
                for i in range(factor):
                    y0, x0 = (ty * factor) + j * TILE, (tx * factor) + i * TILE
                    if y0 >= edge or x0 >= edge:
                        continue
                    k = ((y0 // TILE) * 7 + (x0 // TILE) * 3) % len(tiles)
                    out[j * per:(j + 1) * per, i * per:(i + 1) * per] = small[k]
            if islands is not None:  # level pixel centres in slide coordinates
                ys = ((ty + np.arange(TILE) + 0.5) * factor / side)[:, None]
                xs = ((tx + np.arange(TILE) + 0.5) * factor / side)[None, :]
                out[~islands.inside(ys, xs)] = 242
            yield out


def write_slide(path: Path, side: int, glass: float, islands: Islands | None = None) -> Path:
    """The synthetic pyramid (see the module docstring), written tile by tile."""
    import tifffile

    tiles = base_tiles()
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        factor = 1
        while side // factor >= TILE:
            lside = side // factor
            desc = (f"{SVS}{side}x{side} [0,0 {side}x{side}] ({TILE}x{TILE}) JPEG/RGB Q=90|"
                    f"AppMag = 20|MPP = 0.5" if factor == 1 else
                    f"{SVS}{side}x{side} -> {lside}x{lside}|MPP = 0.5")
            tw.write(level_tiles(side, factor, tiles, glass, islands), shape=(lside, lside, 3),
                     dtype=np.uint8, tile=(TILE, TILE), compression="jpeg", photometric="rgb",
                     description=desc, metadata=None)
            if factor == 1:  # SVS: page 1 is a small stripped thumbnail, then the levels
                thumb = next(level_tiles(side, max(1, side // TILE), tiles, glass, islands))
                tw.write(thumb, photometric="rgb", compression="jpeg", metadata=None,
                         description=f"{SVS}thumbnail|MPP = 0.5")
            factor *= 4
    return path


def child(args: argparse.Namespace) -> None:
    """Run one slide in this process and print its numbers."""
    from napari_dgseg.core.wsi import predict_slide

    t0 = time.perf_counter()
    summary = predict_slide(args.model, args.slide, args.out_zarr, block_size=args.block,
                            rescale="off", dcin="none", device="cpu")
    seconds = time.perf_counter() - t0
    import torch

    hwm = 0
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) * 1024
    print(json.dumps({"seconds": seconds, "peak_rss_bytes": hwm, "blocks": summary["blocks"],
                      "blocks_blank": summary["blocks_skipped_blank"],
                      "torch_threads": torch.get_num_threads()}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vessels-ram-sgcg")
    p.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192, 16384, 32768])
    p.add_argument("--block", type=int, default=2048)
    p.add_argument("--glass", type=float, default=0.1, help="glass band width (share of side)")
    p.add_argument("--sparse", type=float, default=None, metavar="FRACTION",
                   help="sparse slide: tissue islands covering this share (e.g. 0.15), no band")
    p.add_argument("--workdir", default=None, help="where slides and outputs go (default tmp)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--slide", help=argparse.SUPPRESS)
    p.add_argument("--out-zarr", dest="out_zarr", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    load = load_average()
    islands = Islands(args.sparse) if args.sparse is not None else None
    rows: list[dict] = []
    result = {"benchmark": "wsi_memory", "model": args.model, "block": args.block,
              "slide": ({"kind": "sparse", "tissue_fraction": round(islands.fraction(), 4),
                         "islands": len(FRAGMENTS)} if islands else
                        {"kind": "dense", "glass_band": args.glass}),
              "rows": rows, "target": "peak RSS of 16k and 32k within 1.3x of 4k"}
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for side in args.sizes:
            t_write = time.perf_counter()
            slide = write_slide(Path(tmp) / f"synthetic_{side}.svs", side, args.glass, islands)
            write_s = time.perf_counter() - t_write
            out = Path(tmp) / f"synthetic_{side}.zarr"
            env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
            run = subprocess.run([sys.executable, __file__, "--child", "--model", args.model,
                                  "--slide", str(slide), "--out-zarr", str(out),
                                  "--block", str(args.block)],
                                 capture_output=True, text=True, env=env, check=False)
            if run.returncode != 0:
                print(run.stderr[-2000:], file=sys.stderr)
                raise SystemExit(f"the {side} px run failed")
            res = json.loads(run.stdout.strip().splitlines()[-1])
            mp = side * side / 1e6
            tissue_blocks = res["blocks"] - res["blocks_blank"]
            row = {"side": side, "megapixels": round(mp, 1), "blocks": res["blocks"],
                   "blocks_blank": res["blocks_blank"],
                   "peak_rss_mb": round(res["peak_rss_bytes"] / 2**20, 1),
                   "seconds": round(res["seconds"], 1),
                   "slide_mp_per_s": round(mp / res["seconds"], 3),
                   "tissue_block_mp_per_s": round(
                       tissue_blocks * min(args.block, side) ** 2 / 1e6 / res["seconds"], 3),
                   "blocks_run": tissue_blocks, "torch_threads": res["torch_threads"],
                   "slide_write_seconds": round(write_s, 1), "loadavg_1_5_15": load_average()}
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
            row["peak_vs_smallest"] = round(row["peak_rss_mb"] / rows[0]["peak_rss_mb"], 3)
            slide.unlink()
            if args.out and side != args.sizes[-1]:  # keep what finished if a later size is cut
                Path(args.out).write_text(json.dumps(
                    {**result, "complete": False, "machine": machine_state(load)}, indent=2)
                    + "\n", encoding="utf-8")
    emit({**result, "complete": True, "machine": machine_state(load)}, args.out)


if __name__ == "__main__":
    main()
