"""GUI responsiveness of the Segment widget during a run; prints one JSON object.

A napari viewer (not shown) docks the Segment widget with an untrained small U-Net (widths
8-16-32, as in the widget tests), segments a random ``--size`` x ``--size`` RGB image on the CPU
with tile ``--tile`` (overlap 32), and a ``--interval`` ms ``QTimer`` in the GUI thread records
the time of every tick from pressing Run until the result layers are added. Reported: the run
time, the number of ticks, and the largest and 95th-percentile gap between ticks (a frozen GUI
shows up as one long gap), overall, during inference (until the last tile's progress signal) and
after it (building the result layers in the GUI thread). Needs a display::

    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/widget_responsiveness.py \\
        [--size 2048] [--tile 512] [--interval 10] [--out benchmarks/results/widget_responsiveness.json]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from _report import emit, load_average, machine_state


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--interval", type=int, default=10, help="QTimer interval in ms")
    ap.add_argument("--out", default=None, help="also write the JSON to this file")
    args = ap.parse_args()
    load_before = load_average()

    import torch

    from napari_dgseg.core.bundle import Bundle
    from napari_dgseg.core.registry import get_family

    folder = Path(tempfile.mkdtemp(prefix="dgseg-bench-"))
    os.environ["DGSEG_MODEL_DIR"] = str(folder)
    torch.manual_seed(0)
    cfg = {"num_classes": 2, "widths": [8, 16, 32]}
    model = get_family("unet").build_model(cfg)
    Bundle.create(model, "unet", cfg, name="bench-unet", class_names=["background", "nucleus"],
                  task="nuclei").save(folder / "bench-unet.dgseg")  # fmt: skip

    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_dgseg._napari.widgets.segment import SegmentWidget

    viewer = napari.Viewer(show=False)
    app = QApplication.instance()
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment")
    while widget.model_picker.loading:
        app.processEvents()
    if widget.model_picker.bundle is None or widget.model_picker.bundle.name != "bench-unet":
        widget.model_picker.load("bench-unet", sync=True)
    widget.tile_spin.setValue(args.tile)
    widget.overlap_spin.setValue(32)
    widget.device_combo.setCurrentText("cpu")
    image = np.random.default_rng(0).integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    viewer.add_image(image, name="img", rgb=True)

    last_tile: list[float] = []

    def on_progress(done: int, total: int) -> None:
        if done >= total:
            last_tile.append(time.perf_counter())

    widget._runner.progressed.connect(on_progress)
    ticks: list[float] = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(args.interval)
    t0 = time.perf_counter()
    ticks.append(t0)
    widget.run()
    while widget.running:
        app.processEvents()
        time.sleep(0.001)
    app.processEvents()
    t1 = time.perf_counter()
    ticks.append(t1)
    timer.stop()
    gaps_ms = np.diff(ticks) * 1000
    # gaps that start before the last tile's progress signal reached the GUI: inference only
    t_inf = last_tile[0] if last_tile else t1
    during = gaps_ms[np.asarray(ticks[:-1]) < t_inf]
    result = {
        "benchmark": "widget_responsiveness",
        "command": "python benchmarks/widget_responsiveness.py"
        + f" --size {args.size} --tile {args.tile} --interval {args.interval}",
        "image": [args.size, args.size, 3],
        "tile": args.tile,
        "timer_interval_ms": args.interval,
        "run_seconds": round(t1 - t0, 2),
        "labels_added": "img labels (bench-unet)" in viewer.layers,
        "ticks": len(ticks) - 2,
        "max_gap_ms": round(float(gaps_ms.max()), 1),
        "max_gap_starts_at_s": round(float(ticks[int(gaps_ms.argmax())] - t0), 2),
        "p95_gap_ms": round(float(np.percentile(gaps_ms, 95)), 1),
        "median_gap_ms": round(float(np.median(gaps_ms)), 1),
        "inference_seconds": round(t_inf - t0, 2),
        "max_gap_during_inference_ms": round(float(during.max()), 1),
        "p95_gap_during_inference_ms": round(float(np.percentile(during, 95)), 1),
        "max_gap_after_inference_ms": round(float(gaps_ms[len(during):].max()), 1),
        "torch_threads": torch.get_num_threads(),
        **machine_state(load_before),
    }
    viewer.close()
    emit(result, args.out)


if __name__ == "__main__":
    main()
