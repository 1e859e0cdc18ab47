"""Make docs/images/real_slide_overview.png and real_slide_nuclei.png: a real Aperio slide with
its streamed OME-Zarr nuclei on top, in a shown napari window.

    bash scripts/fetch_real_slide.sh
    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/wsi_real_slide.py   # writes both outputs
    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/make_real_slide_screenshot.py

The slide ``out/real-slide/CMU-1-Small-Region.svs`` (Aperio ScanScope, CMU-1, CC0 1.0) is opened
through the plugin reader; ``out/real-slide/cli/CMU-1-Small-Region.zarr`` (written by
``dgseg predict --out X.zarr``) is opened through the plugin reader too, as a file dragged in
would be, and drawn as outlines. The Segment widget is docked and run on the whole slide with
the same model: its output beside the slide (``CMU-1-Small-Region_<model>.zarr``, written by
the benchmark's widget run) is complete, so the run resumes it at once and its status line
says so; its result layer is hidden (it holds the same labels). Nothing is segmented here.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "benchmarks"))

#: Centre (y, x) of the zoomed view in micrometres: the epidermis at the slide's lower middle.
ZOOM_CENTRE_UM = (1000.0, 560.0)
#: Screen pixels per micrometre in the zoomed view (a nucleus of 8 um is about 30 px wide).
ZOOM = 4.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="nuclei-hovernet")
    ap.add_argument("--slide", default=str(ROOT / "out" / "real-slide" / "CMU-1-Small-Region.svs"))
    args = ap.parse_args(argv)
    slide = Path(args.slide).resolve()
    result = slide.parent / "cli" / f"{slide.stem}.zarr"
    for path in (slide, result):
        if not path.exists():
            raise SystemExit(f"{path} is missing; run scripts/fetch_real_slide.sh and "
                             "benchmarks/wsi_real_slide.py first")
    from _segment_viewer import segment_viewer
    from make_screenshots import _save_png
    from qtpy.QtWidgets import QApplication

    # the slide (6.6 Mpx) is under the widget's streaming threshold: as in the benchmark
    viewer, widget, image = segment_viewer(slide, args.model, (1600, 980),
                                           streaming_from_slide_size=True)
    app = QApplication.instance()
    widget.segment_layer(image)
    while widget.running:
        app.processEvents()
        time.sleep(0.02)
    for layer in widget.last_result:
        layer.visible = False
    [labels] = viewer.open(str(result), plugin="napari-dgseg")
    labels.name = f"{result.name} (dgseg predict)"
    labels.contour = 2
    labels.opacity = 0.9
    viewer.layers.selection.active = labels
    print(f"widget: {widget.status_label.text()}")
    print(f"slide layer scale {tuple(image.scale)} translate {tuple(image.translate)}; "
          f"result layer scale {tuple(labels.scale)} translate {tuple(labels.translate)}")

    def shot(name: str) -> int:
        for _ in range(30):  # let the lazy levels load and draw
            app.processEvents()
            time.sleep(0.1)
        return _save_png(viewer.screenshot(canvas_only=False, flash=False), HERE / "images" / name)

    viewer.reset_view()
    sizes = {"real_slide_overview.png": shot("real_slide_overview.png")}
    viewer.camera.center = ZOOM_CENTRE_UM
    viewer.camera.zoom = ZOOM
    sizes["real_slide_nuclei.png"] = shot("real_slide_nuclei.png")
    print(sizes)
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
