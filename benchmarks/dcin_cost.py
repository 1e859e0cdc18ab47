"""What DCIN costs in a prediction: through the API, through the Segment widget, and its colour part.

On one ``--size`` x ``--size`` synthetic H&E image, CPU, interleaved repeats (best of
``--repeats``):

* ``api_none``, ``api_full``, ``api_auto``: ``Bundle.predict(image, dcin=...)``;
* ``widget_none``, ``widget_full``, ``widget_auto``: the Segment widget's run in its worker
  thread (a napari viewer that is not shown; the event loop ticks every 5 ms), from pressing
  *Segment* to the layers being in the viewer, with the widget's default settings (show
  normalized image and uncertainty map off);
* ``colour_transforms``: the colour work alone inside ``api_full``: target statistics, the
  reference statistics, and the colour branches applied to every tile of the run (measured by
  timing the branch calls during the prediction).

Ratios: ``widget_X / api_X`` (target <= 1.10) and ``colour_transforms / api_full`` (target
<= 0.15). Stdout is one JSON object. Run under Xvfb::

    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/dcin_cost.py --size 1024
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--model", default="nuclei-unet")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--modes", nargs="+", default=["none", "full", "auto"])
    args = ap.parse_args()

    import napari
    import torch
    from _report import load_average, machine_state

    import napari_dgseg.core.color.dcin as dcin_mod
    from napari_dgseg import load_bundle
    from napari_dgseg._napari.widgets.segment import SegmentWidget
    from napari_dgseg.core.data.synthetic import make_nuclei

    load_before = load_average()
    img, _ = make_nuclei(args.size, domain="warm-scanner", seed=50_000)
    bundle = load_bundle(args.model)
    viewer = napari.Viewer(show=False)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment")
    from qtpy.QtWidgets import QApplication

    while widget.model_picker.loading:  # the widget loads its default model in a worker
        QApplication.processEvents()
        time.sleep(0.05)
    widget.model_picker.load(args.model, sync=True)
    widget.device_combo.setCurrentText("cpu")
    layer = viewer.add_image(img, name="he", rgb=True)

    # time spent inside colour branches (wraps every branch the plans build)
    colour = {"seconds": 0.0}
    original_plan = dcin_mod.plan_dcin

    def timed_plan(*a, **k):
        t0 = time.perf_counter()
        plan = original_plan(*a, **k)
        colour["seconds"] += time.perf_counter() - t0 if k.get("guard") is False else 0.0
        wrapped = []
        for br in plan.branches:
            if br is dcin_mod._identity:
                wrapped.append(br)
                continue

            def timed(x, _br=br):
                t1 = time.perf_counter()
                out = _br(x)
                colour["seconds"] += time.perf_counter() - t1
                return out

            wrapped.append(timed)
        plan.branches = wrapped
        return plan

    times: dict[str, list[float]] = {}
    colour_full: list[float] = []
    stats_seconds: list[float] = []
    for _ in range(args.repeats):
        for mode in args.modes:
            t0 = time.perf_counter()
            bundle.predict(img, device="cpu", dcin=mode, tile=widget.tile_spin.value(),
                           overlap=widget.overlap_spin.value())
            times.setdefault(f"api_{mode}", []).append(time.perf_counter() - t0)
            widget.dcin.mode_combo.setCurrentText(mode)
            viewer.layers.selection.active = layer
            t0 = time.perf_counter()
            widget.segment_layer(layer)  # in the worker thread, as a user runs it
            while widget.running:
                QApplication.processEvents()
                time.sleep(0.005)
            QApplication.processEvents()
            times.setdefault(f"widget_{mode}", []).append(time.perf_counter() - t0)
            for lay in [x for x in viewer.layers if x is not layer]:
                viewer.layers.remove(lay)
        # colour work in a full prediction: plan (statistics) + branch calls
        dcin_mod.plan_dcin = timed_plan
        import napari_dgseg.core.inference as inf

        inf.plan_dcin = timed_plan
        colour["seconds"] = 0.0
        t0 = time.perf_counter()
        plan = original_plan(bundle, dcin_mod.ImageAdapter.from_array(img)
                             if hasattr(dcin_mod, "ImageAdapter") else _adapter(img), "full",
                             guard=False)
        stats_seconds.append(time.perf_counter() - t0)
        del plan
        colour["seconds"] = 0.0
        bundle.predict(img, device="cpu", dcin="full", tile=widget.tile_spin.value(),
                       overlap=widget.overlap_spin.value())
        colour_full.append(colour["seconds"] + stats_seconds[-1])
        dcin_mod.plan_dcin = original_plan
        inf.plan_dcin = original_plan
    best = {k: round(min(v), 3) for k, v in times.items()}
    result = {
        "benchmark": "dcin_cost",
        "command": "python benchmarks/dcin_cost.py " + " ".join(sys.argv[1:]),
        "image": [args.size, args.size, 3],
        "model": args.model,
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "tile": widget.tile_spin.value(),
        "overlap": widget.overlap_spin.value(),
        "seconds_best": best,
        "seconds_all": {k: [round(t, 3) for t in v] for k, v in times.items()},
        "ratio_widget_over_api": {m: round(best[f"widget_{m}"] / best[f"api_{m}"], 3)
                                  for m in args.modes},
        "ratio_full_over_none": {"api": round(best["api_full"] / best["api_none"], 3),
                                 "widget": round(best["widget_full"] / best["widget_none"], 3)},
        "colour_seconds_in_full": round(min(colour_full), 3),
        "colour_statistics_seconds": round(min(stats_seconds), 3),
        "colour_share_of_full": round(min(colour_full) / best["api_full"], 3),
        "machine": machine_state(load_before),
    }
    viewer.close()
    print(json.dumps(result, indent=2))


def _adapter(img):
    from napari_dgseg.core.imageprep import ImageAdapter

    return ImageAdapter.from_array(img)


if __name__ == "__main__":
    main()
