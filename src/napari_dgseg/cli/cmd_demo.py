"""``dgseg demo``: the main job. napari + plugin + a sample slide + the shipped default model.

With a display it opens the viewer with the Segment widget docked, the sample slide loaded and the
default model segmenting it. ``--headless`` (used by ``scripts/main.sh`` without a display, under
Xvfb) does the same without showing the window and writes the masks (TIFF with provenance), a JSON
summary and a screenshot of the whole window to ``--out``.

Existing files in ``--out`` are kept unless ``--overwrite`` - except in a folder that an earlier
``dgseg demo`` wrote (it holds that run's ``summary.json``): that folder is the demo's own, so
``scripts/main.sh`` can be run again and again.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_dgseg.cli._common import add_overwrite, output_folder, print_json

SAMPLES = ("nuclei-slide", "nuclei", "vessels", "retina", "ihc")
#: The task of each sample: its model is that task's shipped default (bundles/defaults.json).
SAMPLE_TASKS = {"nuclei-slide": "nuclei", "nuclei": "nuclei", "ihc": "nuclei",
                "vessels": "vessels", "retina": "vessels"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="open napari with a sample slide segmented by the default model")
    p.add_argument("--sample", default="nuclei-slide", choices=SAMPLES)
    p.add_argument("--model", default=None, help="bundle name or file (default: per sample)")
    p.add_argument("--headless", action="store_true",
                   help="do not show the window; write masks, summary and screenshot to --out")
    p.add_argument("--out", default="out/demo", help="output folder for --headless")
    add_overwrite(p)
    p.set_defaults(func=run)


def _sample_layers(sample: str) -> list:
    from napari_dgseg._napari import sample_data

    fn = {
        "nuclei-slide": sample_data.nuclei_slide_sample,
        "nuclei": sample_data.nuclei_sample,
        "vessels": sample_data.vessels_sample,
        "retina": sample_data.retina_sample,
        "ihc": sample_data.ihc_sample,
    }[sample]
    return fn()


def _resolve_model(name: str | None, sample: str) -> str:
    """The model to run: ``name`` when given (a bundle name or file), else the sample's default."""
    from napari_dgseg.core.bundle_index import default_models, list_bundles
    from napari_dgseg.core.errors import InputError

    rows = [b for b in list_bundles() if not b.get("broken")]
    names = [b["name"] for b in rows]
    if name is not None:
        if name in names or Path(name).is_file():
            return name
        raise InputError(f"no model named {name!r}; installed: {', '.join(names) or 'none'} "
                         "(or give a .dgseg file)")
    task = SAMPLE_TASKS[sample]
    default = default_models().get(task)
    if default in names:
        return default
    for row in rows:  # no default recorded: the first shipped model of the task
        if row["task"] == task:
            return row["name"]
    raise InputError(f"no {task} model is installed; train one with `dgseg train`")


def run(args: argparse.Namespace) -> int:
    import napari

    from napari_dgseg._napari.widgets.segment import SegmentWidget
    from napari_dgseg.core.outputs import refuse_existing

    if args.headless:  # refuse before the window opens, not after the work
        out = output_folder(args.out)
        overwrite = args.overwrite or _demo_folder(out)
        refuse_existing([out / "screenshot.png", out / "summary.json"], overwrite=overwrite)
    model = _resolve_model(args.model, args.sample)
    viewer = napari.Viewer(show=not args.headless, title="napari-dgseg demo")
    viewer.window.resize(1500, 950)
    for data, kwargs, kind in _sample_layers(args.sample):
        if kind == "image":
            viewer.add_image(data, **kwargs)
        elif kind == "labels":
            kwargs = {**kwargs, "visible": False}
            viewer.add_labels(data, **kwargs)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment (napari-dgseg)", area="right")
    if widget.set_model(model, sync=True) is None:  # waits for the picker's own first load
        print(f"dgseg demo: could not load the model {model!r}; see `dgseg models`")
        viewer.close()
        return 1
    image_layer = next(layer for layer in viewer.layers if isinstance(layer, napari.layers.Image))
    widget.set_image_layer(image_layer)
    if not args.headless:
        widget.run()
        napari.run()
        return 0
    added = widget.run(sync=True) or []
    from napari_dgseg.core.atomic import atomic_write
    from napari_dgseg.core.labels_io import write_labels

    written = {}
    for layer in added:
        if isinstance(layer, napari.layers.Labels):
            path = write_labels(out / f"{_safe(layer.name)}.tif", layer.data,
                                layer.metadata.get("provenance", {}), overwrite=overwrite)
            written[layer.name] = str(path)
    viewer.reset_view()
    viewer.camera.zoom *= 2.5  # close enough to see single nuclei in the screenshot
    shot = out / "screenshot.png"
    from skimage.io import imsave

    pixels = viewer.screenshot(canvas_only=False, flash=False)
    atomic_write(shot, lambda tmp: imsave(tmp, pixels, check_contrast=False), overwrite=overwrite)
    summary = {"sample": args.sample, "model": model, "image": image_layer.name,
               "layers": [layer.name for layer in viewer.layers], "masks": written,
               "status": widget.status, "screenshot": str(shot)}
    import json

    text = json.dumps(summary, indent=2)
    atomic_write(out / "summary.json", lambda tmp: tmp.write_text(text), overwrite=overwrite)
    print_json(summary)
    viewer.close()
    return 0 if written else 1


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("_")


def _demo_folder(out: Path) -> bool:
    """True when ``out`` holds the ``summary.json`` of an earlier ``dgseg demo`` run."""
    import json

    try:
        summary = json.loads((out / "summary.json").read_text()[:1_000_000])
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and {"sample", "masks", "screenshot"} <= set(summary)
