"""Make docs/images/segment_dcin.png: the Segment widget with DCIN full on a shifted domain.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/make_dcin_screenshot.py

A 512 px synthetic tile of the ``warm-scanner`` domain (yellow white balance, uneven light), the
shipped ``nuclei-unet`` (trained on ``clean`` only), region = right half drawn as a rectangle,
DCIN ``full`` with the normalised image and the uncertainty map: the left half shows the original
colours, the right half the GRIS-normalised image under the labels.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main() -> int:
    import napari
    from make_screenshots import _save_png
    from qtpy.QtWidgets import QApplication

    from napari_dgseg._napari.widgets.segment import SegmentWidget
    from napari_dgseg.core.data.synthetic import make_nuclei

    target, _ = make_nuclei(512, domain="warm-scanner", seed=4)
    viewer = napari.Viewer(show=False, title="napari-dgseg: Segment with DCIN")
    viewer.window.resize(1500, 1000)
    viewer.add_image(target, name="warm scanner", rgb=True)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment", area="right")
    app = QApplication.instance()
    while widget.model_picker.loading:
        app.processEvents()
    if widget.model_picker.bundle is None or widget.model_picker.bundle.name != "nuclei-unet":
        widget.model_picker.load("nuclei-unet", sync=True)
    rect = np.array([[0, 256], [512, 256], [512, 512], [0, 512]], float)
    viewer.add_shapes([rect], shape_type="rectangle", name="region", edge_color="yellow",
                      edge_width=3, face_color="transparent")
    widget.image_picker.set_layer(viewer.layers["warm scanner"])
    widget.region_combo.setCurrentIndex(2)
    widget.shapes_picker.set_layer(viewer.layers["region"])
    widget.tile_spin.setValue(256)
    widget.overlap_spin.setValue(32)
    widget.dcin.mode_combo.setCurrentText("full")
    widget.dcin.normalized_check.setChecked(True)
    widget.dcin.uncertainty_check.setChecked(True)
    widget.run(sync=True)
    for layer in viewer.layers:
        if layer.name.endswith("normalized (lris)"):
            layer.visible = False
        if layer.name.startswith("warm scanner labels"):
            layer.contour = 2
    viewer.reset_view()
    for _ in range(30):
        app.processEvents()
    out = HERE / "images" / "segment_dcin.png"
    size = _save_png(viewer.screenshot(canvas_only=False, flash=False), out)
    print(f"wrote {out} ({size // 1024} KB):", widget.status_label.text())
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
