"""Make the documentation screenshot of the Segment widget: docs/images/segment_widget.png.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/make_screenshots.py \
        [--model nuclei-unet] [--image FILE] [--out docs/images/segment_widget.png]

Opens a napari viewer with the synthetic H&E nuclei sample (``--image FILE`` for another image;
scikit-image's IHC image when the synthetic generator is not installed), docks the Segment widget, loads the model (the shipped
``nuclei-unet`` by default, or any name/path given with ``--model``), segments the image and
saves a screenshot of the whole window. The PNG is palette-quantised when needed to stay under
300 KB.

``--vessels`` uses the synthetic fundus sample instead (pair it with ``--model vessels-ram-sgcg``
to show the vessel colour on a red fundus); ``--threshold``, ``--min-size``, ``--opacity`` and
``--outline`` set the widget's Masks controls after the run (re-derived without a new forward
pass)::

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/make_screenshots.py \
        --vessels --model vessels-ram-sgcg --out docs/images/segment_vessels.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

MAX_BYTES = 300_000


def _sample_image(path: str | None = None, vessels: bool = False) -> tuple[np.ndarray, str]:
    """The image at ``path``, else the synthetic nuclei tile (512 px), else scikit-image's IHC.

    ``vessels``: the synthetic fundus sample (512 px) instead of the nuclei tile.
    """
    if vessels and not path:
        from napari_dgseg.core.data.synthetic import make_vessels

        image, _, _ = make_vessels(size=512, domain="camera-a", seed=0)
        return np.asarray(image), "synthetic fundus"
    if path:
        from skimage.io import imread

        image = np.asarray(imread(path))
        return (image[..., :3] if image.ndim == 3 else image), Path(path).stem
    try:
        from napari_dgseg.core.data.synthetic import make_nuclei
    except ImportError:
        from skimage.data import immunohistochemistry

        return immunohistochemistry(), "immunohistochemistry"
    image, _ = make_nuclei(size=512, domain="clean", seed=0)
    return np.asarray(image), "synthetic H&E"


def _save_png(image: np.ndarray, out: Path) -> int:
    """Write ``image`` (H, W, 3|4) uint8 as PNG, quantised if larger than :data:`MAX_BYTES`."""
    from PIL import Image

    pil = Image.fromarray(np.ascontiguousarray(image[..., :3]))
    out.parent.mkdir(parents=True, exist_ok=True)
    pil.save(out, optimize=True)
    if out.stat().st_size > MAX_BYTES:
        pil.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    return out.stat().st_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="nuclei-unet", help="bundle name or .dgseg path")
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "images" / "segment_widget.png")
    )
    parser.add_argument("--image", default=None, help="RGB image file (default: the sample)")
    parser.add_argument("--size", default="1400x960", help="window size WIDTHxHEIGHT")
    parser.add_argument("--vessels", action="store_true", help="use the synthetic fundus sample")
    parser.add_argument("--threshold", type=float, default=None, help="mask threshold")
    parser.add_argument("--min-size", type=int, default=None, help="minimum object size (px)")
    parser.add_argument("--opacity", type=float, default=None, help="mask opacity")
    parser.add_argument("--outline", type=int, default=None, help="mask outline width (px)")
    args = parser.parse_args(argv)

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_dgseg._napari.widgets.segment import SegmentWidget

    image, name = _sample_image(args.image, args.vessels)
    viewer = napari.Viewer(show=True, title="napari-dgseg: Segment")
    width, height = (int(v) for v in args.size.lower().split("x"))
    viewer.window._qt_window.resize(width, height)
    viewer.add_image(image, name=name, rgb=True)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment", area="right")
    app: Any = QApplication.instance()
    while widget.model_picker.loading:
        app.processEvents()
    widget.model_picker.load(args.model, sync=True)
    bundle = widget.model_picker.bundle
    if bundle is None or (bundle.name != args.model and Path(args.model).stem != bundle.name):
        print(f"could not load model {args.model!r}", file=sys.stderr)
        return 2
    widget.tile_spin.setValue(512)
    widget.overlap_spin.setValue(48)
    widget.probabilities_check.setChecked(True)
    widget.run(sync=True)
    for value, spin in (
        (args.threshold, widget.threshold_spin),
        (args.min_size, widget.min_size_spin),
        (args.opacity, widget.opacity_spin),
        (args.outline, widget.contour_spin),
    ):
        if value is not None:
            spin.setValue(value)
    viewer.layers.selection.active = viewer.layers[name]
    for _ in range(20):
        app.processEvents()
    shot = viewer.screenshot(canvas_only=False, flash=False)
    size = _save_png(shot, Path(args.out))
    print(
        f"wrote {args.out} ({shot.shape[1]} x {shot.shape[0]} px, {size / 1000:.0f} KB): "
        f"{widget.status_label.text()}"
    )
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
