"""Make docs/images/local_mask_real_he.png and docs/images/local_mask_injected.png: the Segment
widget's "Domain-gap map" (Mind the Gap's D1 fitted to the model's frozen features, its replay
set against the image) over an image.

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/make_local_mask_screenshot.py

* ``local_mask_real_he.png``: the shipped ``nuclei-unet`` (trained on five synthetic H&E domains)
  on the real H&E tile ``../shared/data/real-he/he_tumour_1000px.png`` (TIAToolbox's
  stain-normalisation target, BSD-3-Clause; not shipped with the project; a synthetic tile of the
  ``warm-scanner`` domain with a darker, blurred stain is used when it is missing).
* ``local_mask_injected.png``: a 512 px tile of the independent held-out H&E renderer (a
  shifted domain the model never trained on) with a 192 px square of blue marker ink pasted over
  the tissue (outlined by a Shapes layer). The map is as dark on the shifted tissue as on the
  model's own training crops and bright on the ink.

The shipped models were trained on five stains and their last decoder features, which D1 reads,
barely change with the stain; a re-stained square is not singled out, foreign material is
(docs/local-masks.md gives the numbers).

Each screenshot shows the image with the map over it (hide the map layer to compare) and the
widget's status line with the mean mask and D1's accuracy.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

MODEL = "nuclei-unet"
SQUARE = (160, 96, 192)  # y0, x0, side of the pasted square in the 512 px tile


def restained(img: np.ndarray) -> np.ndarray:
    """A stain the model never saw: channels permuted, tinted, blurred (fallback image)."""
    from scipy.ndimage import gaussian_filter

    out = img[..., [2, 0, 1]].astype(float) * np.array([0.75, 0.95, 0.6])
    return np.clip(gaussian_filter(out, sigma=(1.5, 1.5, 0)), 0, 255).astype(np.uint8)


def blue_ink(img: np.ndarray) -> np.ndarray:
    """Marker ink over tissue: the tissue shows through a dark blue."""
    return np.clip(img.astype(float) * np.array([0.25, 0.45, 0.9]), 0, 255).astype(np.uint8)


def real_he() -> tuple[np.ndarray, str]:
    real = HERE.parents[1] / "shared" / "data" / "real-he" / "he_tumour_1000px.png"
    if real.is_file():
        from skimage.io import imread

        return np.ascontiguousarray(imread(real)[..., :3]), "he_tumour_1000px (real H&E)"
    from napari_dgseg.core.data.synthetic import make_nuclei

    return restained(make_nuclei(1000, domain="warm-scanner", seed=70_002)[0]), "synthetic"


def injected() -> tuple[np.ndarray, str]:
    from napari_dgseg.core.data.synthetic import make_heldout_nuclei

    img = make_heldout_nuclei(512, seed=70_003)[0].copy()
    y0, x0, s = SQUARE
    img[y0:y0 + s, x0:x0 + s] = blue_ink(img)[y0:y0 + s, x0:x0 + s]
    return img, "held-out tile + ink square"


def shoot(image: np.ndarray, name: str, out: Path, square: bool = False,
          model: str = MODEL) -> str:
    import napari
    from make_screenshots import _save_png
    from qtpy.QtWidgets import QApplication

    from napari_dgseg._napari.widgets.segment import SegmentWidget

    viewer = napari.Viewer(show=False, title="napari-dgseg: domain-gap map")
    viewer.window.resize(1500, 1000)
    viewer.add_image(image, name=name, rgb=True)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment", area="right")
    app = QApplication.instance()
    while widget.model_picker.loading:
        app.processEvents()
    if widget.model_picker.bundle is None or widget.model_picker.bundle.name != model:
        widget.model_picker.load(model, sync=True)
    widget.device_combo.setCurrentText("cpu")
    layer = widget.gap_map.run(sync=True)
    if layer is None:
        raise SystemExit(f"no map: {widget.gap_map.status_label.text()}")
    if square:
        y0, x0, s = SQUARE
        viewer.add_shapes([[[y0, x0], [y0 + s, x0 + s]]], shape_type="rectangle",
                          edge_color="cyan", face_color="transparent", edge_width=3,
                          name="pasted square")
    viewer.layers.selection.active = layer
    for _ in range(20):
        app.processEvents()
    viewer.reset_view()
    size = _save_png(viewer.screenshot(canvas_only=False, flash=False), out)
    status = widget.gap_map.status_label.text()
    mask = np.asarray(layer.data)
    note = ""
    if square:
        y0, x0, s = SQUARE
        inside = np.zeros(mask.shape, bool)
        inside[y0:y0 + s, x0:x0 + s] = True
        note = f" | mean inside {mask[inside].mean():.2f}, outside {mask[~inside].mean():.2f}"
    viewer.close()
    return f"{out} {size} bytes | {status}{note}"


def main() -> int:
    img, name = real_he()
    print(shoot(img, name, HERE / "images" / "local_mask_real_he.png"))
    img, name = injected()
    print(shoot(img, name, HERE / "images" / "local_mask_injected.png", square=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
