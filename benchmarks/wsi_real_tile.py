"""A real-tissue whole-slide check of ``dgseg predict --out X.zarr``; prints one JSON object.

There is no scanner slide on this machine, so the slide is *built from a real tile*: the 1000 px
H&E tile of ``../shared/data/real-he/he_tumour_1000px.png`` (TIAToolbox's stain-normalisation
target, BSD-3-Clause; not shipped) is mirrored into a ``--repeat`` x ``--repeat`` mosaic (4000 px
a side by default: every seam continues the tissue), written as an SVS-like tiled JPEG pyramid
(level 0, thumbnail, 4x level) and segmented whole by the CLI (streamed, default options). The
streamed instances of block 0 are compared with ``Bundle.predict`` on exactly that block's window
(same pixels, same context), and the top-left copy of the tile (which is the tile itself) with
``Bundle.predict`` on the tile alone; beside them, the in-memory path's own change between the
tile alone and the larger window, for scale (AJI on the tile at least ``--inner`` px from its
right/bottom edge, where the mirrored context starts).

Usage::

    nice -n 10 python benchmarks/wsi_real_tile.py [--model nuclei-hovernet] [--repeat 4]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _report import emit, load_average, machine_state

SVS = "Aperio Image Library v12.0.15\n"


def mosaic(tile: np.ndarray, repeat: int) -> np.ndarray:
    """``repeat`` x ``repeat`` copies, every other one mirrored so that seams continue."""
    rows = []
    for r in range(repeat):
        row = []
        for c in range(repeat):
            t = tile[::-1] if r % 2 else tile
            row.append(t[:, ::-1] if c % 2 else t)
        rows.append(np.concatenate(row, axis=1))
    return np.concatenate(rows, axis=0)


def write_svs_like(path: Path, data: np.ndarray) -> Path:
    """Tiled JPEG level 0, a thumbnail, a 4x level; no pixel size (the scan's is unknown)."""
    import tifffile

    h, w = data.shape[:2]
    with tifffile.TiffWriter(path) as tw:
        tw.write(data, tile=(256, 256), compression="jpeg", photometric="rgb", metadata=None,
                 description=f"{SVS}{w}x{h} [0,0 {w}x{h}] (256x256) JPEG/RGB Q=90")
        tw.write(data[::16, ::16], compression="jpeg", photometric="rgb", metadata=None,
                 description=f"{SVS}thumbnail")
        tw.write(np.ascontiguousarray(data[::4, ::4]), tile=(256, 256), compression="jpeg",
                 photometric="rgb", metadata=None, description=f"{SVS}{w}x{h} -> {w // 4}x{h // 4}")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared"))
    ap.add_argument("--model", default="nuclei-hovernet")
    ap.add_argument("--repeat", type=int, default=4)
    ap.add_argument("--inner", type=int, default=128)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from skimage.io import imread

    from napari_dgseg.core.bundle import load_bundle
    from napari_dgseg.core.metrics import instance_scores

    tile_path = Path(args.shared) / "data" / "real-he" / "he_tumour_1000px.png"
    tile = imread(tile_path)[..., :3]
    load = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        slide = write_svs_like(Path(tmp) / "real_mosaic.svs", mosaic(tile, args.repeat))
        out = Path(tmp) / "real_mosaic.zarr"
        t0 = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "napari_dgseg.cli", "predict", "--model",
                              args.model, "--out", str(out), "--quiet", str(slide)],
                             capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - t0
        if run.returncode != 0:
            raise SystemExit(run.stderr.strip().splitlines()[-1])
        row = json.loads(run.stdout)["outputs"][0]
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        import zarr

        root = zarr.open_group(str(out), mode="r")
        prov = dict(root.attrs["napari_dgseg_provenance"])
        streamed = np.asarray(root["0"][: tile.shape[0], : tile.shape[1]])
        factor = float(prov["options"]["scale_factor"])
        kwargs = {"scale": factor} if factor != 1.0 else {"rescale": "off"}
        bundle = load_bundle(args.model)
        from napari_dgseg.core.slide import open_image
        from napari_dgseg.core.wsi.store import stored_plan

        plan = stored_plan(out)
        y0, x0, y1, x1 = plan.window(0)
        with open_image(slide) as opened:
            window0 = np.asarray(opened.full[y0:y1, x0:x1])
        same_context = bundle.predict(window0, **kwargs).labels
        alone = bundle.predict(tile, **kwargs).labels
        k = tile.shape[0] - args.inner
        inner = plan.block_size - plan.margin
        big = np.asarray(root["0"][:inner, :inner])
        scores = {
            # block 0 against the in-memory run on exactly its window (same context)
            "streamed_vs_in_memory_same_window": instance_scores(big, same_context[:inner, :inner]),
            # the top-left tile against the tile alone (other context at its right/bottom)
            "streamed_vs_in_memory_tile_alone": instance_scores(streamed[:k, :k], alone[:k, :k]),
            # the in-memory path's own sensitivity to that context change, for comparison
            "in_memory_window_vs_tile_alone": instance_scores(same_context[:k, :k],
                                                              alone[:k, :k]),
        }
    side = tile.shape[0] * args.repeat
    emit({"benchmark": "wsi_real_tile", "model": args.model, "source": str(tile_path.name),
          "slide_side": side, "built_from": "a real 1000 px H&E tile mirrored, not a scan",
          "blocks": row["blocks"], "instances": row["instances"],
          "scale_factor": factor, "seconds": round(seconds, 1),
          "slide_mp_per_s": round(side * side / 1e6 / seconds, 3),
          "peak_rss_mb": round(peak / 2**20, 1),
          "agreement": {name: {"aji": round(float(v["aji"]), 4), "pq": round(float(v["pq"]), 4),
                               "n": [int(v["n_pred"]), int(v["n_gt"])]}
                        for name, v in scores.items()},
          "machine": machine_state(load)}, args.out)


if __name__ == "__main__":
    main()
