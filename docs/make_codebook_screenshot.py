"""Make the documentation screenshots of the Codebook widget with the shipped ``nuclei-sqvae``.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/make_codebook_screenshot.py

Writes ``docs/images/codebook_widget.png`` (a tile of the unseen ``pale-scanner`` domain: the
shift score warns) and ``docs/images/codebook_in_domain.png`` (a ``clean`` tile: in domain).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _shot(domain: str, out: Path) -> str:
    import napari
    from make_screenshots import _save_png
    from qtpy.QtWidgets import QApplication

    from napari_dgseg._napari.widgets.codebook import CodebookWidget
    from napari_dgseg.core.data.synthetic import make_nuclei

    image, _ = make_nuclei(384, domain=domain, seed=7)
    viewer = napari.Viewer(show=False)
    viewer.window.resize(1400, 880)
    viewer.add_image(image, name=f"{domain} tile", rgb=True)
    widget = CodebookWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Codebook", area="right")
    end = time.monotonic() + 60
    while widget.model_picker.loading and time.monotonic() < end:  # it auto-picks an sqvae model
        QApplication.processEvents()
        time.sleep(0.02)
    if widget.model_picker.bundle is None or widget.model_picker.bundle.name != "nuclei-sqvae":
        widget.model_picker.load("nuclei-sqvae", sync=True)
    widget.image_picker.set_layer(viewer.layers[f"{domain} tile"])
    widget.run(sync=True)
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.02)
    size = _save_png(viewer.screenshot(canvas_only=False, flash=False), out)
    viewer.close()
    return f"wrote {out} ({size // 1024} KB)"


def main() -> int:
    print(_shot("pale-scanner", HERE / "images" / "codebook_widget.png"))
    print(_shot("clean", HERE / "images" / "codebook_in_domain.png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
