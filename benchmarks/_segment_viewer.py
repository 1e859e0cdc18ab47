"""A shown napari window with the Segment widget docked, a model loaded and a slide opened.

Shared by the scripts that drive the widget on a slide (``benchmarks/wsi_real_slide.py``,
``docs/make_real_slide_screenshot.py``, ``docs/make_slide_screenshot.py``); imported as
``_segment_viewer`` from the benchmarks folder. A shown window, because a hidden one keeps a stale
dock layout (clipped screenshots).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


def segment_viewer(slide: str | Path, model: str, size: tuple[int, int] = (1400, 900),
                   streaming_from_slide_size: bool = False) -> tuple[Any, Any, Any]:
    """``(viewer, widget, image layer)``: the slide opened through the plugin reader, the Segment
    widget docked on the right with ``model`` on the CPU and the slide picked as its image.

    ``streaming_from_slide_size`` lowers the widget's whole-slide streaming threshold to the
    slide's own size (a small scanner region is under the default), so Run takes the slide path.
    """
    import napari
    from qtpy.QtWidgets import QApplication

    import napari_dgseg._napari.slide_job as slide_job
    from napari_dgseg._napari.reader import read_one
    from napari_dgseg._napari.widgets.segment import SegmentWidget

    viewer = napari.Viewer(show=True)
    viewer.window.resize(*size)
    app = QApplication.instance()
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment", area="right")
    while widget.model_picker.loading:
        app.processEvents()
        time.sleep(0.01)
    widget.set_model(model)
    widget.device_combo.setCurrentText("cpu")
    data, kwargs, _ = read_one(Path(slide))
    layer = viewer.add_image(data, **kwargs)
    widget.set_image_layer(layer)
    if streaming_from_slide_size:
        h, w = (layer.data[0] if layer.multiscale else layer.data).shape[:2]
        slide_job.SLIDE_JOB_MIN_PIXELS = min(slide_job.SLIDE_JOB_MIN_PIXELS, h * w)
    return viewer, widget, layer
