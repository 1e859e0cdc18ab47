"""Make docs/images/slide_mid_run.png: the Segment widget streaming a whole slide, half-way.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/make_slide_screenshot.py

A synthetic 4096 x 4096 biopsy-like slide (``benchmarks/wsi_memory.py --sparse``: four tissue
fragments covering a quarter of the slide, SVS-like JPEG pyramid, 0.5 um/px) opened through the
plugin reader, the network-free ``classical-he`` model, blocks of 1024 px (16 blocks, one of them
glass), the whole image streamed by the Segment widget in its worker thread. The screenshot is
taken at the progress signal of block 7: the result layer is already in the layer list and shows
the blocks written so far (the rest of the slide is not segmented yet). Slide and output go to a
temporary folder.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "benchmarks"))

#: The block whose progress signal triggers the screenshot.
AT_BLOCK = 7


def main() -> int:
    from _segment_viewer import segment_viewer
    from make_screenshots import _save_png
    from qtpy.QtWidgets import QApplication
    from wsi_memory import Islands, write_slide

    import napari_dgseg.core.wsi as wsi

    wsi.DEFAULT_BLOCK = 1024  # 16 blocks on 4096^2: the growth is visible
    folder = Path(tempfile.mkdtemp(prefix="dgseg-slide-shot-"))
    slide = write_slide(folder / "biopsy.svs", 4096, 0.0, Islands(0.25))
    viewer, widget, layer = segment_viewer(slide, "classical-he")
    app = QApplication.instance()
    shots: list[int] = []

    def on_progress(done: int, _total: int) -> None:
        if done == AT_BLOCK and not shots:
            for _ in range(5):
                app.processEvents()
                time.sleep(0.02)
            image = viewer.screenshot(canvas_only=False, flash=False)
            shots.append(_save_png(image, HERE / "images" / "slide_mid_run.png"))

    widget.runner.progressed.connect(on_progress)
    widget.segment_layer(layer)
    while widget.running:
        app.processEvents()
        time.sleep(0.01)
    print(f"slide_mid_run.png: {shots} bytes; {widget.status_label.text()}")
    viewer.close()
    return 0 if shots else 1


if __name__ == "__main__":
    raise SystemExit(main())
