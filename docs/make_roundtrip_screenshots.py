"""Screenshots of the annotator's round trip on real images (docs/round-trip.md), in one run.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/make_roundtrip_screenshots.py

Writes into ``docs/images/``:

``roundtrip_slide.png`` / ``roundtrip_slide_zoom.png``
    A slide opened with the plugin's reader, a drawn rectangle segmented with the Segment widget
    (default nuclei model), the mask corrected (threshold), saved with napari's own save path
    (the plugin's writer), the labels layer removed and the saved file **reopened** on the
    slide; the zoomed shot shows single pixels of the reopened mask on their nuclei. There is no
    real whole-slide file on this machine: the slide is built here as a tiled (256 px), 3-level
    OME-TIFF pyramid with a pixel size of 0.25 um (our choice: the shipped nuclei models' training
    scale) from the real H&E tile ``he_tumour_1000px.png`` (TIAToolbox's stain target,
    BSD-3-Clause, in ``../shared/data/real-he``; not shipped with the project).
``roundtrip_fundus.png`` / ``roundtrip_fundus_native.png``
    scikit-image's real fundus photograph (``skimage.data.retina()``, 1411 x 1411 px, native
    size) segmented with the default vessels model: vessels in cyan over the red fundus; first
    with the widget's defaults (Scale auto), then with Scale "off" (no resampling).
``roundtrip_codebook.png``
    The Codebook widget (``nuclei-sqvae``) on the real H&E tile: codebook-index map with its
    legend of class-group hues, the tissue showing through ("Show tissue"), the domain score.

``roundtrip_adapt.png``
    The Adapt widget (``nuclei-hovernet``, 30 MaNi iterations) with eight 256 px crops of the real
    tile as unlabelled targets, each placed where it lies on the tile (0.25 um pixels); "Compare
    before / after" puts the adapted model's labels over the first crop, on the tile.

Options: ``--out-dir`` (default ``docs/images``), ``--he`` (the H&E tile), ``--work`` (where
the slide and the saved mask are written; default a temporary folder), ``--only`` (``slide``,
``fundus``, ``codebook`` or ``adapt``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "src"))

from make_screenshots import _save_png  # noqa: E402

PLUGIN = "napari-dgseg"
HE_TILE = ROOT.parent / "shared" / "data" / "real-he" / "he_tumour_1000px.png"
#: Pixel size given to the built slide (the shipped nuclei models' training scale).
SLIDE_PIXEL_UM = 0.25
#: The drawn rectangle in slide pixels: rows y0..y1, columns x0..x1 (odd sizes on purpose).
RECT = (281, 203, 281 + 437, 203 + 561)
WINDOW = (1400, 960)


def _app() -> Any:
    from qtpy.QtWidgets import QApplication

    return QApplication.instance()


def _settle(n: int = 30) -> None:
    """Let Qt and vispy draw (and napari load the tiles of a multiscale layer)."""
    app = _app()
    for _ in range(n):
        app.processEvents()
        time.sleep(0.03)


def _viewer(title: str) -> Any:
    import napari

    viewer = napari.Viewer(show=True, title=title)
    viewer.window._qt_window.resize(*WINDOW)
    return viewer


def _shoot(viewer: Any, out: Path) -> str:
    from qtpy.QtWidgets import QWidget

    for toast in viewer.window._qt_window.findChildren(QWidget):
        if type(toast).__name__ == "NapariQtNotification":  # said in the widget's status too
            toast.close()
    _settle()
    shot = viewer.screenshot(canvas_only=False, flash=False)
    size = _save_png(shot, out)
    return f"wrote {out} ({shot.shape[1]} x {shot.shape[0]} px, {size // 1000} KB)"


def write_slide(tile: np.ndarray, path: Path, pixel_um: float = SLIDE_PIXEL_UM) -> Path:
    """A tiled (256 px, zlib) RGB OME-TIFF pyramid of ``tile``: level 0 plus two halvings in
    SubIFDs, with ``PhysicalSizeX/Y = pixel_um`` micrometres."""
    import tifffile
    from skimage.transform import resize

    levels = [tile]
    for _ in range(2):
        prev = levels[-1]
        shape = (prev.shape[0] // 2, prev.shape[1] // 2, 3)
        levels.append((resize(prev, shape, anti_aliasing=True) * 255).round().astype(np.uint8))
    opts = {"tile": (256, 256), "photometric": "rgb", "compression": "zlib"}
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(levels[0], subifds=len(levels) - 1, metadata={
            "axes": "YXS", "PhysicalSizeX": pixel_um, "PhysicalSizeY": pixel_um,
            "PhysicalSizeXUnit": "\u00b5m", "PhysicalSizeYUnit": "\u00b5m",
        }, **opts)  # fmt: skip
        for level in levels[1:]:
            tw.write(level, subfiletype=1, **opts)
    return path


def _dock(viewer: Any, widget: Any, name: str, width: int = 400) -> None:
    """Dock ``widget`` on the right, wide enough for the model names in full."""
    from qtpy.QtCore import Qt

    dock = viewer.window.add_dock_widget(widget, name=name, area="right")
    viewer.window._qt_window.resizeDocks([dock], [width], Qt.Orientation.Horizontal)


def _segment_widget(viewer: Any, model: str) -> Any:
    from napari_dgseg._napari.widgets.segment import SegmentWidget

    widget = SegmentWidget(viewer)
    _dock(viewer, widget, "Segment")
    if widget.set_model(model) is None:
        raise SystemExit(f"could not load model {model!r}")
    widget.device_combo.setCurrentText("cpu")
    return widget


def _scroll_to_bottom(widget: Any) -> None:
    """Scroll a dock widget's scroll area down to its Run buttons and status line."""
    from qtpy.QtWidgets import QScrollArea

    for area in widget.findChildren(QScrollArea):
        area.verticalScrollBar().setValue(area.verticalScrollBar().maximum())


def shot_slide(he: Path, work: Path, out_dir: Path) -> list[str]:
    """Open the slide, segment a rectangle, correct, save, remove, reopen; two screenshots."""
    from skimage.io import imread

    tile = np.asarray(imread(he))[..., :3]
    slide = write_slide(tile, work / "he_tumour_slide.ome.tif")
    viewer = _viewer("napari-dgseg: a saved mask reopened on its slide")
    viewer.canvas.overlays.scale_bar.visible = True
    [image] = viewer.open(str(slide), plugin=PLUGIN)
    assert image.multiscale and len(image.data) == 3, "the slide must open as a 3-level pyramid"
    y0, x0, y1, x1 = RECT
    (wy0, wx0), (wy1, wx1) = (image.data_to_world(c) for c in ((y0, x0), (y1, x1)))
    shapes = viewer.add_shapes(
        [np.array([[wy0, wx0], [wy0, wx1], [wy1, wx1], [wy1, wx0]])], shape_type="rectangle",
        name="drawn rectangle", edge_color="white", face_color="transparent", edge_width=1.0,
        units=viewer.layers.extent.units,
    )  # fmt: skip
    widget = _segment_widget(viewer, "nuclei-hovernet")
    widget.set_image_layer(image)
    widget.region_combo.setCurrentText("drawn rectangle")
    widget.shapes_picker.set_layer(shapes)
    widget.tile_spin.setValue(512)
    widget.run(sync=True)
    labels = viewer.layers[f"{image.name} labels (nuclei-hovernet)"]
    widget.threshold_spin.setValue(0.6)  # the correction: a stricter threshold ...
    widget.min_size_spin.setValue(60)  # ... and no specks below 60 px (no new forward pass)
    run_line = widget.status_label.text()

    mask = work / "he_tumour_slide_mask.tif"
    viewer.layers.selection = {labels}
    written = viewer.layers.save(str(mask), selected=True)  # napari's save path, plugin writer
    assert written == [str(mask)], written
    saved = np.asarray(labels.data).copy()
    placement = (tuple(labels.scale), tuple(labels.translate))
    viewer.layers.remove(labels)
    for name in [lyr.name for lyr in viewer.layers if lyr is not image and lyr is not shapes]:
        viewer.layers.remove(name)  # probabilities etc.: only the reopened mask stays
    [back] = viewer.open(str(mask), plugin=PLUGIN)
    assert np.array_equal(np.asarray(back.data), saved), "reopened mask differs from the saved one"
    assert np.allclose(back.scale, placement[0]) and np.allclose(back.translate, placement[1])
    back.contour = 2  # instance outlines (the reader restores colour and opacity, not outline)
    back.opacity = 1.0
    widget.status_label.setText(
        f"{run_line}\nSaved as {mask.name}, layer removed, file reopened: scale "
        f"{back.scale[0]:g} \u00b5m, translate ({back.translate[0]:g}, {back.translate[1]:g}) "
        f"\u00b5m, {saved.shape[0]} x {saved.shape[1]} px, identical pixels."
    )
    viewer.layers.selection = {back}
    viewer.reset_view()
    _settle()
    _scroll_to_bottom(widget)
    messages = [_shoot(viewer, out_dir / "roundtrip_slide.png")]

    # zoom on the top-left corner of the rectangle: single pixels of the reopened mask
    corner = np.asarray(image.data_to_world((y0 + 45, x0 + 70)))
    camera = viewer.scene.camera
    camera.center = tuple(corner)
    camera.zoom = camera.zoom * 5
    back.contour = 1
    messages.append(_shoot(viewer, out_dir / "roundtrip_slide_zoom.png"))
    viewer.close()
    return messages


def shot_fundus(out_dir: Path) -> list[str]:
    """The real fundus photograph at native size with the default vessels model: once with
    the defaults (Scale auto), once with Scale off (the model on the photograph's own pixels)."""
    from skimage import data

    viewer = _viewer("napari-dgseg: vessels on a real fundus photograph")
    retina = viewer.add_image(np.asarray(data.retina())[..., :3], name="retina", rgb=True)
    widget = _segment_widget(viewer, "vessels-ram-sgcg")
    widget.set_image_layer(retina)
    widget.tile_spin.setValue(512)
    messages = []
    for mode, name in (("auto", "roundtrip_fundus.png"), ("off", "roundtrip_fundus_native.png")):
        widget.scale_controls.set_mode(mode)
        widget.run(sync=True)
        viewer.layers.selection = {viewer.layers["retina labels (vessels-ram-sgcg)"]}
        viewer.reset_view()
        _settle()
        _scroll_to_bottom(widget)
        messages.append(_shoot(viewer, out_dir / name) + f": {widget.status_label.text()}")
    viewer.close()
    return messages


def shot_codebook(he: Path, out_dir: Path) -> list[str]:
    """The Codebook widget on the real H&E tile: map, legend, tissue showing through."""
    from skimage.io import imread

    from napari_dgseg._napari.widgets.codebook import CodebookWidget

    viewer = _viewer("napari-dgseg: codebook map of a real H&E tile")
    tile = viewer.add_image(np.asarray(imread(he))[..., :3], name=he.stem, rgb=True)
    widget = CodebookWidget(viewer)
    _dock(viewer, widget, "Codebook")
    widget.model_picker.wait()
    if widget.model_picker.bundle is None or widget.model_picker.bundle.name != "nuclei-sqvae":
        widget.model_picker.load("nuclei-sqvae", sync=True)
    widget.image_picker.set_layer(tile)
    widget.opacity_slider.setValue(45)  # show the tissue under the map
    widget.run(sync=True)
    if not widget.legend.isVisible():
        raise SystemExit("the codebook legend is not shown")
    viewer.reset_view()
    messages = [_shoot(viewer, out_dir / "roundtrip_codebook.png")]
    messages[-1] += f": {widget.score_label.text()}"
    viewer.close()
    return messages


def shot_adapt(he: Path, out_dir: Path, work: Path) -> list[str]:
    """The Adapt widget on real H&E: crops of the tile as unlabelled targets, each placed at its
    position on the whole tile (0.25 um), a short MaNi run, then "Compare before / after"."""
    import os

    from skimage.io import imread

    from napari_dgseg._napari.widgets.adapt import AdaptWidget

    os.environ["DGSEG_MODEL_DIR"] = str(work / "models")  # the user's model folder untouched
    tile = np.asarray(imread(he))[..., :3]
    viewer = _viewer("napari-dgseg: adapting to real H&E, before / after in place")
    viewer.canvas.overlays.scale_bar.visible = True
    um = (SLIDE_PIXEL_UM, SLIDE_PIXEL_UM)
    viewer.add_image(tile, name=he.stem, rgb=True, scale=um, units=("um", "um"))
    names = []
    side = 256
    for i, (y, x) in enumerate([(y, x) for y in (40, 360, 680) for x in (40, 360, 680)][:8]):
        name = f"target {i} ({y}, {x})"
        viewer.add_image(tile[y:y + side, x:x + side], name=name, rgb=True, scale=um,
                         translate=(y * um[0], x * um[1]), units=("um", "um"), visible=i == 0)
        names.append(name)
    widget = AdaptWidget(viewer)
    _dock(viewer, widget, "Adapt")
    widget.model_picker.wait()
    if widget.model_picker.bundle is None or widget.model_picker.bundle.name != "nuclei-hovernet":
        widget.model_picker.load("nuclei-hovernet", sync=True)
    widget.refresh_layers()
    widget.select_targets(names)
    widget.iters_spin.setValue(30)
    widget.size_spin.setValue(128)
    widget.preview_spin.setValue(5)
    widget.run(sync=True)
    widget.compare(sync=True)
    source = names[0]
    viewer.layers[f"{source} before (parent)"].visible = False
    viewer.layers[f"{source} after (adapted)"].opacity = 1.0
    if "adapt preview" in viewer.layers:
        viewer.layers["adapt preview"].visible = False
    viewer.reset_view()
    y, x = 40, 40  # the first target's outline, and the view centred on it
    box = np.array([[y, x], [y, x + side], [y + side, x + side], [y + side, x]], float) * um[0]
    viewer.add_shapes([box], shape_type="rectangle", name=f"{source} outline",
                      edge_color="white", face_color="transparent", edge_width=0.75,
                      units=viewer.layers.extent.units)  # fmt: skip
    camera = viewer.scene.camera
    centre = (y + side / 2) * um[0], (x + side / 2) * um[1]
    camera.center = (0.0,) * (len(camera.center) - 2) + centre
    camera.zoom = camera.zoom * 1.9
    viewer.layers.selection.active = viewer.layers[f"{source} after (adapted)"]
    messages = [_shoot(viewer, out_dir / "roundtrip_adapt.png")]
    messages[-1] += f": {widget.status.text()} {widget.signal_label.text()}"
    viewer.close()
    return messages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=str(HERE / "images"))
    parser.add_argument("--he", default=str(HE_TILE), help="real H&E tile (RGB image file)")
    parser.add_argument("--work", default=None, help="folder for the slide and the saved mask")
    parser.add_argument("--only", choices=("slide", "fundus", "codebook", "adapt"), default=None)
    args = parser.parse_args(argv)
    he, out_dir = Path(args.he), Path(args.out_dir)
    if args.only != "fundus" and not he.is_file():
        print(f"{he}: no such H&E tile; pass --he with a real H&E image", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        messages: list[str] = []
        if args.only in (None, "slide"):
            messages += shot_slide(he, work, out_dir)
        if args.only in (None, "fundus"):
            messages += shot_fundus(out_dir)
        if args.only in (None, "codebook"):
            messages += shot_codebook(he, out_dir)
        if args.only in (None, "adapt"):
            messages += shot_adapt(he, out_dir, work)
    print("\n".join(messages))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
