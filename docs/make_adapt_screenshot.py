"""Make docs/images/adapt_widget.png: the Adapt widget after a short MaNi run.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/make_adapt_screenshot.py

Eight 256 px tiles of the held-out renderer's faded, JPEG-compressed style ``ho-faded-jpeg`` as
unlabelled targets (two of them held out for the label-free check), the shipped
``nuclei-hovernet`` (trained on the other renderer's five domains),
40 iterations of MaNi at crops of 128 px, then "Compare before / after"; the widget shows the
parent vs adapted label-free signal under the status line. The adapted model is not saved (user model folder untouched: a
temporary folder stands in for it).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main() -> int:
    os.environ["DGSEG_MODEL_DIR"] = tempfile.mkdtemp(prefix="dgseg-shot-")
    import napari
    from make_screenshots import _save_png
    from qtpy.QtWidgets import QApplication

    from napari_dgseg._napari.widgets.adapt import AdaptWidget
    from napari_dgseg.core.data.heldout_nuclei import make_heldout_nuclei

    # a shown window: a hidden one keeps a stale layout (the dock kept its first width and the
    # screenshot clipped its right side although the widget fits a 1400 px window)
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 900)
    for i in range(8):
        img, _ = make_heldout_nuclei(256, "ho-faded-jpeg", seed=200 + i)
        viewer.add_image(img, name=f"faded tile {i}", rgb=True)
    widget = AdaptWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Adapt", area="right")
    app = QApplication.instance()
    end = time.monotonic() + 60
    while widget.model_picker.loading and time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)
    if widget.model_picker.bundle is None or widget.model_picker.bundle.name != "nuclei-hovernet":
        widget.model_picker.load("nuclei-hovernet", sync=True)
    widget.refresh_layers()
    widget.select_targets([f"faded tile {i}" for i in range(8)])
    widget.iters_spin.setValue(40)
    widget.size_spin.setValue(128)
    widget.preview_spin.setValue(5)
    widget.run(sync=True)
    widget.compare(sync=True)
    viewer.reset_view()
    for _ in range(30):
        app.processEvents()
        time.sleep(0.02)
    out = HERE / "images" / "adapt_widget.png"
    size = _save_png(viewer.screenshot(canvas_only=False, flash=False), out)
    print(f"wrote {out} ({size // 1024} KB):", widget.status.text(), widget.signal_label.text())
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
