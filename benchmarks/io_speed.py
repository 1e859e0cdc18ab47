"""Lazy slide reading: tiles decoded and times for an 8192 px OME-TIFF pyramid; prints one JSON.

Writes a tiled RGB OME-TIFF pyramid (``--side`` px, 4 levels, 256 px zlib tiles, written tile by
tile) to a temporary folder, then counts the chunks tifffile's Zarr store decodes per level
(by wrapping ``ZarrTiffStore.get``) and times, on level 0:

* ``open_image`` (first call, which imports the reader's libraries, and ``--repeat`` later calls);
* reading a 100 x 300 px region and ``--regions`` random 512 x 512 regions (``to_rgb_uint8``).

With ``--napari`` (needs a display, e.g. ``xvfb-run -a``) it also opens the file in a napari
viewer (1600 x 1000 canvas) with the napari-dgseg reader, draws the whole slide, then zooms to 4x
at full resolution, counting level-0 tiles decoded by each. Usage::

    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/io_speed.py --napari \\
        [--side 8192] [--out benchmarks/results/io_speed.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from _report import emit, load_average

TILE = 256


def _tiles(side: int) -> Iterator[np.ndarray]:
    """Light tiles with a purple square in every seventh one (compressible, not uniform)."""
    for i in range(side // TILE):
        for j in range(side // TILE):
            t = np.full((TILE, TILE, 3), (235, 230, 240), np.uint8)
            if (i + j) % 7 == 0:
                t[TILE // 8 : TILE // 2, TILE // 8 : TILE // 2] = (150, 60, 170)
            yield t


def write_pyramid(path: Path, side: int, levels: int = 4) -> None:
    """Tiled RGB OME-TIFF, reduced levels in SubIFDs, 0.5 um pixels."""
    import tifffile

    opts = {"tile": (TILE, TILE), "photometric": "rgb", "compression": "zlib", "dtype": np.uint8}
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(_tiles(side), shape=(side, side, 3), subifds=levels - 1,
                 metadata={"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5}, **opts)  # fmt: skip
        for k in range(1, levels):
            tw.write(_tiles(side >> k), shape=(side >> k, side >> k, 3), subfiletype=1, **opts)


def count_chunks() -> Counter[str]:
    """Wrap tifffile's Zarr store so every decoded pixel chunk is counted per level key."""
    import tifffile.zarr as tz

    counts: Counter[str] = Counter()
    original = tz.ZarrTiffStore.get

    async def get(store, key, *args, **kwargs):  # type: ignore[no-untyped-def]
        level, _, chunk = key.rpartition("/")
        if chunk and not chunk.startswith(".") and chunk != "zarr.json":
            counts[level] += 1
        return await original(store, key, *args, **kwargs)

    tz.ZarrTiffStore.get = get
    return counts


def napari_counts(path: Path, counts: Counter[str]) -> dict:
    """Level-0 tiles decoded when napari draws the whole slide, then a 4x zoom."""
    import napari

    viewer = napari.Viewer(show=False)
    viewer.window.resize(1600, 1000)
    counts.clear()
    [layer] = viewer.open(str(path), plugin="napari-dgseg")
    viewer.screenshot(canvas_only=True)
    whole = counts["0"]
    viewer.camera.center = (2500.0, 3000.0)
    viewer.camera.zoom = 4.0
    viewer.screenshot(canvas_only=True)
    zoom = counts["0"] - whole
    level = int(layer.data_level)
    viewer.close()
    return {"draw_whole_slide_level0_tiles": whole, "zoom_4x_level0_tiles": zoom,
            "zoom_4x_data_level": level}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=8192)
    ap.add_argument("--repeat", type=int, default=7, help="later open_image calls timed")
    ap.add_argument("--regions", type=int, default=20, help="random 512 px regions timed")
    ap.add_argument("--napari", action="store_true", help="also count tiles napari decodes")
    ap.add_argument("--out", default=None, help="also write the JSON to this file")
    args = ap.parse_args()
    load_before = load_average()
    path = Path(tempfile.mkdtemp(prefix="dgseg-io-")) / "slide.ome.tif"
    write_pyramid(path, args.side)
    counts = count_chunks()

    t0 = time.perf_counter()
    from napari_dgseg.core.slide import open_image, to_rgb_uint8

    opened = open_image(path)
    first_open = time.perf_counter() - t0
    open_level0 = counts["0"]
    probe = {k: v for k, v in counts.items() if k != "0"}
    opened.close()
    later = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        opened = open_image(path)
        later.append(time.perf_counter() - t0)
        opened.close()

    opened = open_image(path)
    counts.clear()
    np.asarray(opened.full[5000:5100, 6000:6300])
    small_region_tiles = counts["0"]
    rng = np.random.default_rng(0)
    region_s = []
    for _ in range(args.regions):
        y, x = rng.integers(0, args.side - 512, 2)
        t0 = time.perf_counter()
        to_rgb_uint8(opened.full[y : y + 512, x : x + 512])
        region_s.append(time.perf_counter() - t0)
    opened.close()

    result = {
        "benchmark": "io_speed",
        "command": f"python benchmarks/io_speed.py --side {args.side} --repeat {args.repeat} "
        f"--regions {args.regions}" + (" --napari" if args.napari else ""),
        "slide": {"side": args.side, "levels": 4, "tile": TILE, "compression": "zlib",
                  "level0_tiles": (args.side // TILE) ** 2},  # fmt: skip
        "open_level0_tiles": open_level0,
        "open_probe_tiles_by_level": probe,
        "region_100x300_level0_tiles": small_region_tiles,
        "first_open_image_s_with_imports": round(first_open, 3),
        "open_image_s": {"median": round(statistics.median(later), 4),
                         "min": round(min(later), 4), "max": round(max(later), 4)},  # fmt: skip
        "region_512_s": {"median": round(statistics.median(region_s), 4),
                         "min": round(min(region_s), 4), "max": round(max(region_s), 4)},  # fmt: skip
    }
    if args.napari:
        result["napari"] = napari_counts(path, counts)
    result["cpu_count"] = os.cpu_count()
    result["loadavg_1_5_15_before"] = load_before
    result["loadavg_1_5_15_after"] = [round(v, 2) for v in os.getloadavg()]
    emit(result, args.out)


if __name__ == "__main__":
    main()
