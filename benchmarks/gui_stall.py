"""Event-loop stalls of napari during a whole-slide run and during adaptation; prints one JSON.

A ``--interval`` ms ``QTimer`` in the GUI thread records the time of every tick from pressing Run
until the result is in the viewer; a frozen GUI shows up as one long gap between ticks. The bound
asked of both scenarios: the largest gap at most 100 ms.

``slide``
    Writes a synthetic SVS-like tiled pyramid of ``--size`` px a side (JPEG tiles, mostly tissue:
    the ``write_slide`` of ``benchmarks/wsi_memory.py``, a 10 % glass band), opens it through the
    plugin reader in a napari viewer (not shown), docks the Segment widget with an untrained small
    U-Net (widths 8-16-32, as the widget tests use: only the speed matters here) and runs the
    whole slide, which the widget streams block by block into OME-Zarr
    (``napari_dgseg._napari.slide_job``). The result layer is added when Run is pressed and
    refreshed per block (``napari_dgseg._napari.slide_preview``). Gaps are split at the last
    block's progress signal: during the streamed blocks (Run included), and after (the pyramid
    built in the worker, the finished levels attached to the layer and drawn).
``adapt``
    Trains a tiny HoVer-Net bundle for 3 iterations (widths 8-16-32, as the Adapt widget tests),
    docks the Adapt widget on two 128 px target images and adapts for ``--iters`` iterations
    (crop 64). Gaps are split at the last iteration's progress signal: during the iterations
    (plot updates and previews arrive in the GUI thread), and after (the label-free check's
    result shown in the widget).

Needs a display::

    OMP_NUM_THREADS=1 nice -n 10 xvfb-run -a -s "-screen 0 1600x1000x24" \\
        python benchmarks/gui_stall.py --scenario both [--size 4096] [--iters 20] \\
        [--no-warm] [--out benchmarks/results/gui_stall.json]

``labels-cost``
    What a Labels layer costs napari in the GUI thread, the first of a session against a second:
    GUI-thread CPU and wall time of building the layer model and of ``viewer.add_layer`` (and the
    first draw) for two lazy multiscale 4096^2 label pyramids in turn (the live levels the Segment
    widget adds at Run, ``napari_dgseg._napari.slide_preview``), in a fresh process without and with the
    widgets' warm-up (``napari_dgseg._napari.warm``). No run, no timer.

``run-turns``
    Where the GUI thread's time goes when Run is pressed: the slide (4096^2) and adapt setups
    above, Run pressed with napari's pieces timed (GUI-thread CPU: the layer model, the
    insertion's handlers: viewer model, canvas with the layer visual, the overlay visuals and the
    first slicing, the layer controls; the runner's progress bar and worker start), and the CPU
    of each event-loop turn in the 0.3 s after (the steps of
    ``napari_dgseg._napari.staged_add``); then the job is cancelled. ``--repeats`` fresh
    processes per widget. No timer.

``both`` runs the slide and adapt scenarios each in a fresh process (the first Labels layer of a
session costs most).
``--no-warm`` skips the widgets' warm-up when built (``napari_dgseg._napari.warm``: pandas, a
throwaway Labels model, vispy's dash atlas, the garbage-collector freeze): the first Labels
layer's one-time work then falls on the run; ``--no-gc-freeze`` skips only the freeze.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _report import emit, load_average, machine_state

BOUND_MS = 100.0


def probe(app: Any, start: Callable[[], Any], running: Callable[[], bool], progressed: Any,
          interval: int, placed: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Run ``start()`` with a ``QTimer`` ticking every ``interval`` ms and measure the gaps.

    Parameters
    ----------
    app : QApplication
        The application whose event loop is probed (pumped here until ``running()`` is False).
    start : callable
        Presses Run (starts the job in the widget's worker).
    running : callable
        True while the job runs.
    progressed : Signal(int, int)
        The runner's progress signal; the gaps are split at its last ``done >= total`` emission.
    interval : int
        Timer interval in ms.
    placed : callable, optional
        True once the layer added at Run is in the viewer with its paint overlays shown
        (``napari_dgseg._napari.staged_add``); the gaps that start before are those *at Run*.

    Returns
    -------
    dict
        Run time, steps, and the largest / 95th-percentile gap overall, during the work and
        after it (the result handled in the GUI thread), with where the largest gap starts, and
        the GUI thread's own CPU time within the largest gap and within any one gap: a gap much
        longer than its CPU time was spent waiting (for the GIL held by the worker, or for a
        core on a loaded machine), not working in the GUI thread.
    """
    from qtpy.QtCore import QTimer

    last: list[float] = []
    signals: list[float] = []  # every progress signal
    steps: list[int] = [0]

    def on_progress(done: int, total: int) -> None:
        steps[0] = int(total)
        signals.append(time.perf_counter())
        if done >= total:
            last.append(time.perf_counter())

    progressed.connect(on_progress)
    ticks: list[float] = []
    cpu: list[float] = []  # the GUI thread's own CPU time at each tick

    def tick() -> None:
        ticks.append(time.perf_counter())
        cpu.append(time.thread_time())

    collections: list[tuple[float, float]] = []  # (start, seconds) of every full collection
    began: list[float] = [0.0]

    def on_gc(phase: str, info: dict) -> None:  # any thread: a collection holds the GIL
        if phase == "start":
            began[0] = time.perf_counter()
        elif info.get("generation") == 2:
            collections.append((began[0], time.perf_counter() - began[0]))

    gc.callbacks.append(on_gc)
    timer = QTimer()
    timer.timeout.connect(tick)
    timer.start(interval)
    t0, p0 = time.perf_counter(), time.process_time()
    t_placed: list[float] = []
    tick()
    start()
    while running():
        app.processEvents()
        if placed is not None and not t_placed and placed():
            t_placed.append(time.perf_counter())
        time.sleep(0.001)
    app.processEvents()
    tick()
    t1, p1 = ticks[-1], time.process_time()
    timer.stop()
    gc.callbacks.remove(on_gc)
    progressed.disconnect(on_progress)
    starts = np.asarray(ticks[:-1])
    gaps = np.diff(ticks) * 1000
    gaps_cpu = np.diff(cpu) * 1000
    t_work = last[-1] if last else t1
    during, after = gaps[starts < t_work], gaps[starts >= t_work]
    worst = int(gaps.argmax())
    # at Run: from pressing it until the layer it adds is in (the first gap without a predicate)
    at_run = gaps[starts < t_placed[0]] if t_placed else gaps[:1]
    if not at_run.size:
        at_run = gaps[:1]

    def r(v: float) -> float:
        return round(float(v), 1)

    return {
        "run_seconds": round(t1 - t0, 2),
        "work_seconds": round(t_work - t0, 2),
        "steps": steps[0],
        # CPU seconds of all this process's threads per second of the run (2 cores: at most 2)
        "process_cpu_per_wall_s": round((p1 - p0) / max(t1 - t0, 1e-9), 2),
        "ticks": len(ticks) - 2,
        "max_gap_ms": r(gaps.max()),
        "max_gap_starts_at_s": round(float(ticks[worst] - t0), 2),
        "p95_gap_ms": r(np.percentile(gaps, 95)),
        "p99_gap_ms": r(np.percentile(gaps, 99)),
        # from pressing Run until the layer added at Run is in with its overlays (s; None: never
        # seen, or no predicate), the largest gap in that time and every gap of it (ms)
        "layer_placed_after_s": round(t_placed[0] - t0, 3) if t_placed else None,
        "max_gap_at_run_ms": r(at_run.max()),
        "gaps_at_run_ms": [r(g) for g in at_run],
        "gui_thread_cpu_at_run_ms": [r(g) for g in gaps_cpu[:at_run.size]],
        "max_gap_after_run_ms": r(gaps[at_run.size:].max()) if gaps.size > at_run.size else None,
        "median_gap_ms": r(np.median(gaps)),
        "max_gap_during_work_ms": r(during.max()) if during.size else None,
        "p95_gap_during_work_ms": r(np.percentile(during, 95)) if during.size else None,
        "max_gap_after_work_ms": r(after.max()) if after.size else None,
        "max_gap_gui_thread_cpu_ms": r(gaps_cpu[worst]),
        "max_gui_thread_cpu_in_one_gap_ms": r(gaps_cpu.max()),
        "gaps_over_bound": int((gaps > BOUND_MS).sum()),
        # each gap over the bound: start (s from Run), length, GUI-thread CPU in it (ms), and the
        # time from the nearest progress signal to the gap's start (s; negative: signal after)
        "gaps_over_bound_detail": [
            [round(float(ticks[i] - t0), 2), r(gaps[i]), r(gaps_cpu[i]),
             round(float(min((ticks[i] - t for t in signals), key=abs, default=float("nan"))),
                   3)]
            for i in np.flatnonzero(gaps > BOUND_MS)],
        # full garbage collections during the run: count, longest, and their ms in each gap over
        # the bound (same order as the detail above)
        "full_gc_count": len(collections),
        "full_gc_max_ms": r(max((d for _, d in collections), default=0.0) * 1000),
        "full_gc_ms_in_gaps_over_bound": [
            r(sum(d for c, d in collections if ticks[i] <= c < ticks[i + 1]) * 1000)
            for i in np.flatnonzero(gaps > BOUND_MS)],
        "within_bound": bool(gaps.max() <= BOUND_MS),
    }


def layer_placed(viewer: Any, name: str) -> Callable[[], bool]:
    """A predicate: layer ``name`` is in ``viewer`` with its paint-tool overlays shown."""

    def check() -> bool:
        if name not in viewer.layers:
            return False
        overlays = getattr(viewer.layers[name], "_overlays", {})
        return all(overlays[k].visible for k in ("polygon", "brush_stroke") if k in overlays)

    return check


def dock_with_model(viewer: Any, widget_cls: Any, name: str, model: str) -> tuple[Any, float]:
    """Build and dock ``widget_cls`` (timed: the warm-up happens there) with ``model`` loaded."""
    from qtpy.QtWidgets import QApplication

    t_dock = time.perf_counter()
    widget = widget_cls(viewer)
    viewer.window.add_dock_widget(widget, name=name)
    dock_seconds = round(time.perf_counter() - t_dock, 2)
    while widget.model_picker.loading:
        QApplication.instance().processEvents()
    if widget.model_picker.bundle is None or widget.model_picker.bundle.name != model:
        widget.model_picker.load(model, sync=True)
    return widget, dock_seconds


def setup_slide(size: int, folder: Path) -> dict[str, Any]:
    """A viewer with the synthetic slide open and the Segment widget docked (not yet run)."""
    import napari
    import torch
    from qtpy.QtWidgets import QApplication
    from wsi_memory import write_slide

    from napari_dgseg._napari.reader import read_one
    from napari_dgseg._napari.widgets.segment import SegmentWidget
    from napari_dgseg.core.bundle import Bundle
    from napari_dgseg.core.registry import get_family

    torch.manual_seed(0)
    cfg = {"num_classes": 2, "widths": [8, 16, 32]}
    Bundle.create(get_family("unet").build_model(cfg), "unet", cfg, name="bench-unet",
                  class_names=["background", "nucleus"], task="nuclei",
                  ).save(folder / "bench-unet.dgseg")
    os.environ["DGSEG_MODEL_DIR"] = str(folder)
    slide = write_slide(folder / f"synthetic_{size}.svs", size, 0.1)

    viewer = napari.Viewer(show=False)
    app = QApplication.instance()
    widget, dock_seconds = dock_with_model(viewer, SegmentWidget, "Segment", "bench-unet")
    widget.device_combo.setCurrentText("cpu")
    data, kwargs, _ = read_one(slide)
    layer = viewer.add_image(data, **kwargs)
    app.processEvents()
    widget.set_image_layer(layer)
    return {"viewer": viewer, "app": app, "widget": widget, "image": layer,
            "start": lambda: widget.segment_layer(layer), "name": f"{layer.name} bench-unet",
            "dock_seconds": dock_seconds, "warmed": "pandas" in sys.modules}


def scenario_slide(size: int, interval: int, folder: Path) -> dict[str, Any]:
    """The Segment widget streams a whole ``size``-px synthetic slide; see the module docstring."""
    run = setup_slide(size, folder)
    viewer, widget, layer, name = run["viewer"], run["widget"], run["image"], run["name"]
    shown: list[Any] = []  # the result layer at each block's progress signal (None: not there)
    widget.runner.progressed.connect(
        lambda done, total: shown.append(viewer.layers[name] if name in viewer.layers else None))
    result = probe(run["app"], run["start"], lambda: widget.running,
                   widget.runner.progressed, interval, placed=layer_placed(viewer, name))
    added = [lyr.name for lyr in widget.last_result]
    same_layer = bool(shown) and all(s is widget.last_result[0] for s in shown)
    status = widget.status_label.text()
    viewer.close()
    return {"slide_px": [size, size], "model": "untrained U-Net 8-16-32 (speed only)",
            "dock_seconds": run["dock_seconds"], "pandas_imported_before_run": run["warmed"],
            "layer_multiscale": bool(layer.multiscale), "streamed": "streamed" in status,
            "layers_added": added, "result_layer_shown_from_first_progress": same_layer,
            "status": status, "steps_are": "blocks", **result}


def setup_adapt(iters: int, folder: Path) -> dict[str, Any]:
    """A viewer with two target images and the Adapt widget docked (not yet run)."""
    import napari
    from qtpy.QtWidgets import QApplication
    from skimage.draw import disk

    from napari_dgseg._napari.widgets.adapt import AdaptWidget
    from napari_dgseg.core.data.sample import Sample
    from napari_dgseg.core.train.source import train

    def disks(size: int, seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        img = np.full((size, size, 3), 230, np.uint8)
        lab = np.zeros((size, size), np.int32)
        for i in range(1, n + 1):
            r = int(rng.integers(5, 10))
            rr, cc = disk(tuple(rng.integers(r, size - r, 2)), r, shape=lab.shape)
            lab[rr, cc] = i
            img[rr, cc] = (90, 40, 140)
        return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8), lab

    models = folder / "adapt-models"
    models.mkdir()
    samples = [Sample(*disks(96, i, 8), f"s{i}", domain="a") for i in range(3)]
    train("hovernet", [samples], out=models / "bench-hovernet.dgseg", iters=3, size=64, batch=2,
          config={"widths": [8, 16, 32]}, seed=0)
    os.environ["DGSEG_MODEL_DIR"] = str(models)

    viewer = napari.Viewer(show=False)
    for i in range(2):
        img, _ = disks(128, 50 + i, 10)
        img[..., 0] = np.clip(img[..., 0].astype(int) + 40, 0, 255)  # another stain
        viewer.add_image(img, name=f"target{i}", rgb=True)
    app = QApplication.instance()
    widget, dock_seconds = dock_with_model(viewer, AdaptWidget, "Adapt", "bench-hovernet")
    widget.size_spin.setValue(64)
    widget.lr_spin.setValue(1e-3)
    widget.iters_spin.setValue(iters)
    widget.select_targets(["target0", "target1"])
    app.processEvents()
    return {"viewer": viewer, "app": app, "widget": widget, "start": widget.run,
            "name": "adapt preview", "dock_seconds": dock_seconds,
            "warmed": "pandas" in sys.modules}


def scenario_adapt(iters: int, interval: int, folder: Path) -> dict[str, Any]:
    """The Adapt widget adapts a tiny HoVer-Net for ``iters`` iterations; see the docstring."""
    run = setup_adapt(iters, folder)
    viewer, widget = run["viewer"], run["widget"]
    result = probe(run["app"], run["start"], lambda: widget.running, widget.runner.progressed,
                   interval, placed=layer_placed(viewer, run["name"]))
    done = None if widget.result is None else widget.result.provenance.get("iterations")
    status = widget.status.text()
    preview_every = int(widget.preview_spin.value())
    viewer.close()
    return {"model": "tiny HoVer-Net 8-16-32 trained 3 iterations (speed only)",
            "dock_seconds": run["dock_seconds"], "pandas_imported_before_run": run["warmed"],
            "targets": [[128, 128, 3], [128, 128, 3]], "crop": 64,
            "iterations_done": done, "preview_every": preview_every,
            "status": status, "steps_are": "iterations", **result}


def scenario_run_turns(which: str, folder: Path) -> dict[str, Any]:
    """GUI-thread CPU of each piece of Run and of each event-loop turn after it (module docs)."""
    import functools

    import napari._qt.layer_controls.qt_layer_controls_container as controls
    import napari._qt.qt_viewer as qt_viewer
    import napari._vispy.canvas as canvas
    import napari.components.viewer_model as viewer_model
    from napari.components.layerlist import LayerList
    from napari.layers import Labels

    import napari_dgseg._napari.widgets.adapt as adapt_widget
    import napari_dgseg._napari.widgets.segment as segment_widget
    from napari_dgseg._napari.runner import TaskRunner

    cpu: dict[str, float] = {}
    steps: list[list[Any]] = []

    def timed(func: Callable[..., Any], label: str) -> Callable[..., Any]:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t = time.thread_time()
            try:
                return func(*args, **kwargs)
            finally:
                cpu[label] = cpu.get(label, 0.0) + time.thread_time() - t
        return wrapper

    run = (setup_slide(4096, folder) if which == "slide" else setup_adapt(2, folder))
    app, widget = run["app"], run["widget"]
    for _ in range(20):  # the viewer settles: nothing pending when Run is pressed
        app.processEvents()
        time.sleep(0.01)
    # napari's pieces (nested: "insert" holds the three "insert:" ones, "canvas" the indented)
    patches = [(Labels, "__init__", "layer model (Labels)"),
               (segment_widget, "semantic_colormap", "widget: task colours"),
               (adapt_widget, "style_labels_for", "widget: task colours"),
               (LayerList, "insert", "insert (all of napari's handling)"),
               (viewer_model.ViewerModel, "_on_add_layer", "insert: viewer model"),
               (qt_viewer.QtViewer, "_on_add_layer_change", "insert: canvas (visual, overlays, "
                                                            "first slicing)"),
               (qt_viewer, "create_vispy_layer", "  canvas: layer visual"),
               (canvas, "create_vispy_overlay", "  canvas or later: overlay visuals"),
               (canvas.VispyCanvas, "on_draw", "  canvas: on_draw (slicing)"),
               (controls.QtLayerControlsContainer, "_add", "insert: layer controls"),
               (TaskRunner, "_open_pbar", "runner: napari progress bar"),
               (TaskRunner, "start", "runner: start (bar, worker)")]
    for owner, attr, label in patches:
        setattr(owner, attr, timed(getattr(owner, attr), label))
    try:
        import napari_dgseg._napari.staged_add as staged

        one = staged.StagedAdd._run_one

        def run_one(self: Any) -> None:
            name = getattr(self._steps[0], "__name__", "?").strip("_")
            t = time.thread_time()
            one(self)
            steps.append([name if name != "<lambda>" else "show paint overlay",
                          round((time.thread_time() - t) * 1e3, 1)])

        staged.StagedAdd._run_one = run_one
    except ImportError:  # a checkout from before staged_add: everything happens in Run's turn
        pass
    t0 = time.thread_time()
    run["start"]()
    run_cpu = time.thread_time() - t0
    turns = []
    for _ in range(60):  # 0.3 s of event-loop turns
        t = time.thread_time()
        app.processEvents()
        turns.append(round((time.thread_time() - t) * 1e3, 1))
        time.sleep(0.005)
    placed = layer_placed(run["viewer"], run["name"])()
    widget.runner.cancel()
    while widget.running:
        app.processEvents()
        time.sleep(0.01)
    run["viewer"].close()
    return {"widget": which, "run_slot_cpu_ms": round(run_cpu * 1e3, 1),
            "turns_after_run_cpu_ms": [t for t in turns if t >= 1.0],
            "staged_steps_cpu_ms": steps, "layer_placed_within_0_3_s": placed,
            "pieces_cpu_ms": {k: round(v * 1e3, 1) for k, v in cpu.items()}}


def scenario_labels_cost(warm: bool) -> dict[str, Any]:
    """GUI-thread cost of a first and a second Labels layer (see the module docstring)."""
    import napari
    from napari.layers import Layer
    from qtpy.QtWidgets import QApplication

    from napari_dgseg._napari.slide_preview import SlidePreview, live_levels
    from napari_dgseg.core.wsi.store import pyramid_shapes

    if warm:
        from napari_dgseg._napari.warm import warm_layer_imports

        warm_layer_imports()
    viewer = napari.Viewer(show=False)
    app = QApplication.instance()
    viewer.add_image(np.zeros((512, 512, 3), np.uint8), rgb=True, scale=(8.0, 8.0))
    for _ in range(10):
        app.processEvents()
    rows = []
    for i in range(2):
        levels = live_levels(pyramid_shapes((4096, 4096)), SlidePreview((4096, 4096)))
        c0, w0 = time.thread_time(), time.perf_counter()
        layer = Layer.create(levels, {"name": f"labels {i}", "multiscale": True}, "labels")
        c1 = time.thread_time()
        viewer.add_layer(layer)
        app.processEvents()
        c2, w2 = time.thread_time(), time.perf_counter()
        rows.append({"layer": i + 1, "create_cpu_ms": round((c1 - c0) * 1e3, 1),
                     "add_layer_cpu_ms": round((c2 - c1) * 1e3, 1),
                     "total_cpu_ms": round((c2 - c0) * 1e3, 1),
                     "total_wall_ms": round((w2 - w0) * 1e3, 1)})
    viewer.close()
    return {"warm": warm, "layers": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", choices=["slide", "adapt", "both", "labels-cost", "run-turns"],
                    default="both")
    ap.add_argument("--size", type=int, default=4096, help="slide side in px (slide scenario)")
    ap.add_argument("--iters", type=int, default=20, help="adaptation iterations (adapt)")
    ap.add_argument("--interval", type=int, default=10, help="QTimer interval in ms")
    ap.add_argument("--no-warm", action="store_true",
                    help="skip the widgets' warm-up when built (napari's first-Labels-layer "
                         "one-time work then falls on the run)")
    ap.add_argument("--no-gc-freeze", action="store_true",
                    help="skip the widgets' gc.freeze() when built (napari_dgseg._napari.warm)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="fresh processes (labels-cost, run-turns)")
    ap.add_argument("--out", default=None, help="also write the JSON to this file")
    args = ap.parse_args()
    if args.no_warm:
        import napari_dgseg._napari.warm as warm

        warm.warm_layer_imports = lambda: None
    if args.no_gc_freeze:
        import napari_dgseg._napari.warm as warm

        warm.freeze_gc = lambda: None
    if args.size < 4096:
        ap.error("--size must be at least 4096: smaller whole images are not streamed")
    load_before = load_average()

    out: dict[str, Any] = {
        "benchmark": "gui_stall",
        "command": f"python benchmarks/gui_stall.py --scenario {args.scenario} --size {args.size}"
                   f" --iters {args.iters} --interval {args.interval}"
                   + (" --no-warm" if args.no_warm else "")
                   + (" --no-gc-freeze" if args.no_gc_freeze else ""),
        "timer_interval_ms": args.interval,
        # False: a checkout from before the layer added at Run was put in over several turns
        "staged_add": importlib.util.find_spec("napari_dgseg._napari.staged_add") is not None,
        "bound_ms": BOUND_MS,
    }
    if args.scenario == "labels-cost":  # --repeats fresh processes each, all kept
        for warm in (False, True):
            runs = []
            for _ in range(args.repeats):
                here = str(Path(__file__).parent)
                code = (f"import json, sys; sys.path.insert(0, {here!r}); import gui_stall; "
                        f"print(json.dumps(gui_stall.scenario_labels_cost({warm!r})))")
                run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                     check=False)
                if run.returncode != 0:
                    sys.exit(f"the labels-cost scenario failed:\n{run.stderr[-2000:]}")
                runs.append(json.loads(run.stdout.strip().splitlines()[-1])["layers"])
            out["warm" if warm else "no_warm"] = runs
    elif args.scenario == "run-turns":  # each widget in fresh processes, --repeats each
        for which in ("slide", "adapt"):
            runs = []
            for _ in range(args.repeats):
                here = str(Path(__file__).parent)
                code = (f"import json, sys, tempfile, pathlib; sys.path.insert(0, {here!r}); "
                        f"import gui_stall; print(json.dumps(gui_stall.scenario_run_turns("
                        f"{which!r}, pathlib.Path(tempfile.mkdtemp(prefix='dgseg-turns-')))))")
                run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                     check=False)
                if run.returncode != 0:
                    sys.exit(f"the run-turns scenario failed:\n{run.stderr[-2000:]}")
                runs.append(json.loads(run.stdout.strip().splitlines()[-1]))
            out[f"run_turns_{which}"] = runs
    elif args.scenario == "both":  # each in a fresh process: the first result layer costs most
        for name in ("slide", "adapt"):
            with tempfile.TemporaryDirectory(prefix="dgseg-stall-") as tmp:
                part = Path(tmp) / f"{name}.json"
                cmd = [sys.executable, __file__, "--scenario", name, "--size", str(args.size),
                       "--iters", str(args.iters), "--interval", str(args.interval),
                       "--out", str(part)] + (["--no-warm"] if args.no_warm else []) + (
                    ["--no-gc-freeze"] if args.no_gc_freeze else [])
                run = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if run.returncode != 0 or not part.is_file():
                    sys.exit(f"the {name} scenario failed:\n{run.stderr[-2000:]}")
                child = json.loads(part.read_text(encoding="utf-8"))
            out[name] = child[name]
            out.setdefault("torch_threads", child.get("torch_threads"))
    else:
        with tempfile.TemporaryDirectory(prefix="dgseg-stall-") as tmp:
            run_one = scenario_slide if args.scenario == "slide" else scenario_adapt
            n = args.size if args.scenario == "slide" else args.iters
            out[args.scenario] = run_one(n, args.interval, Path(tmp))
        import torch

        out["torch_threads"] = torch.get_num_threads()
    out.update(machine_state(load_before))
    emit(out, args.out)


if __name__ == "__main__":
    main()
