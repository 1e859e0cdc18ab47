"""Make docs/images/segment_dcin_guard.png: the guard of DCIN ``auto`` falling back, in the widget.

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/make_dcin_guard_screenshot.py

The shipped ``nuclei-unet`` on the 256 px crop with the fewest haematoxylin pixels of the real
H&E tile ``../shared/data/real-he/he_tumour_1000px.png`` (TIAToolbox's stain-normalisation
target, BSD-3-Clause; not shipped with the project), DCIN ``auto``. Plain Reinhard normalisation
would stretch this stroma-rich crop to the contrast of the dense training tiles and call much of
the stroma "nucleus"; the guard's pilot pass sees the mask grow while the colours are already
close to the training colours, and segments the image as it is. The DCIN panel says so. Without
the real image, a sparse 256 px crop of a synthetic ``clean`` tile is used (the guard then
usually keeps normalisation, which the panel says as well).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "benchmarks"))


def _crop() -> tuple[np.ndarray, str]:
    real = HERE.parents[1] / "shared" / "data" / "real-he" / "he_tumour_1000px.png"
    from dcin_guard import _sparsest

    if real.is_file():
        from real_he import haematoxylin_reference
        from skimage.io import imread

        rgb = np.ascontiguousarray(imread(real)[..., :3])
        y, x = _sparsest(haematoxylin_reference(rgb), 256, 32)
        return np.ascontiguousarray(rgb[y:y + 256, x:x + 256]), "real H&E, sparse crop"
    from napari_dgseg.core.data.synthetic import make_nuclei

    img, gt = make_nuclei(1024, domain="clean", seed=70_001)
    y, x = _sparsest(gt > 0, 256, 32)
    return np.ascontiguousarray(img[y:y + 256, x:x + 256]), "synthetic, sparse crop"


def main() -> int:
    import napari
    from make_screenshots import _save_png
    from qtpy.QtWidgets import QApplication

    from napari_dgseg._napari.widgets.segment import SegmentWidget

    crop, name = _crop()
    viewer = napari.Viewer(show=False, title="napari-dgseg: DCIN auto with its guard")
    viewer.window.resize(1500, 1000)
    viewer.add_image(crop, name=name, rgb=True)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment", area="right")
    app = QApplication.instance()
    while widget.model_picker.loading:
        app.processEvents()
    if widget.model_picker.bundle is None or widget.model_picker.bundle.name != "nuclei-unet":
        widget.model_picker.load("nuclei-unet", sync=True)
    widget.device_combo.setCurrentText("cpu")
    widget.dcin.mode_combo.setCurrentText("auto")
    widget.run(sync=True)
    for _ in range(20):
        app.processEvents()
    viewer.reset_view()
    out = HERE / "images" / "segment_dcin_guard.png"
    size = _save_png(viewer.screenshot(canvas_only=False, flash=False), out)
    print(f"{out} {size} | {widget.status_label.text()} | {widget.dcin.guard_label.text()}")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
