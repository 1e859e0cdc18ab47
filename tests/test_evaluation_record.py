"""Held-out scores recorded in a bundle's manifest and shown in model lists."""

from __future__ import annotations

import pytest

from napari_dgseg.core.bundle import load_bundle
from napari_dgseg.core.evaluation_record import (
    heldout_line,
    record_evaluation,
    summarize_generalization,
)


def _cell(v: float) -> dict:
    return {"mean": v, "sd": 0.0, "per_seed": [v]}


RUN = {
    "label": "after", "date": "2026-12-01", "seeds": [0, 1], "dcin": "auto",
    "tasks": {"nuclei": {
        "columns": {"clean": {"renderer": "training"}, "ho-a": {"renderer": "heldout"},
                    "ho-b": {"renderer": "heldout"},
                    "real:tile": {"renderer": "real", "reference": "haematoxylin threshold"}},
        "cells": {
            "mine": {"clean": {"dice": _cell(0.99), "aji": _cell(0.9), "pq": _cell(0.9)},
                     "ho-a": {"dice": _cell(0.9), "aji": _cell(0.6), "pq": _cell(0.5)},
                     "ho-b": {"dice": _cell(0.7), "aji": _cell(0.4), "pq": _cell(0.3)},
                     "real:tile": {"dice": _cell(0.8)}},
            "classical": {"ho-a": {"dice": _cell(0.8), "aji": _cell(0.5), "pq": _cell(0.4)},
                          "ho-b": {"dice": _cell(0.75), "aji": _cell(0.3), "pq": _cell(0.3)}},
        }}},
}


def test_summary_averages_heldout_styles_only_and_counts_wins():
    rec = summarize_generalization(RUN, "mine")
    assert rec["task"] == "nuclei" and rec["styles_total"] == 2 and rec["wins"] == 1
    assert rec["mean"] == {"dice": 0.8, "aji": 0.5, "pq": 0.4}  # the training style is not in it
    assert rec["baseline_mean"]["dice"] == pytest.approx(0.775)
    assert rec["real"] == {"tile": 0.8} and rec["source"]["label"] == "after"
    assert summarize_generalization(RUN, "absent") is None
    line = heldout_line(rec)
    assert line.startswith("held-out dice 0.800 / aji 0.500 / pq 0.400 (classical 0.775")
    assert line.endswith("beats it on 1/2 styles")
    assert heldout_line(None) == "" and heldout_line({}) == ""


def test_recorded_in_the_manifest_and_shown_by_the_model_list(tmp_path, tiny_bundle, monkeypatch):
    path = tiny_bundle.save(tmp_path / "mine.dgseg")
    before = load_bundle(path).state_dict()
    record_evaluation(path, summarize_generalization(RUN, "mine"))
    again = load_bundle(path)  # still verifies (hashes recomputed)
    assert again.manifest["evaluation"]["heldout"]["mean"]["dice"] == 0.8
    assert all((again.state_dict()[k] == v).all() for k, v in before.items())
    from napari_dgseg.core import bundle_index

    monkeypatch.setenv("DGSEG_MODEL_DIR", str(tmp_path))
    rows = [r for r in bundle_index.list_bundles() if r["name"] == "mine"]
    assert rows and rows[0]["heldout_metrics"]["mean"]["dice"] == 0.8
    from napari_dgseg._napari.widgets.model_picker import describe_bundle

    assert "held-out dice 0.800" in describe_bundle(again.manifest)


def _record_dcin_auto():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "record_dcin_auto.py"
    spec = importlib.util.spec_from_file_location("record_dcin_auto", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _guarded_run(full_faded: float, full_pale: float) -> dict:
    """A dcin_in_domain.py --auto full result: two held-out styles, one training style."""
    rows, per_style = [], {}
    for style, renderer, none, full, shift in (
        ("faded", "heldout", 0.70, full_faded, 0.6),
        ("pale", "heldout", 0.94, full_pale, 1.0),
        ("clean", "training", 0.99, 0.99, 0.05),
    ):
        for i in range(2):
            rows.append({"style": style, "renderer": renderer, "seed": 100, "tile": i,
                         "nearest_shift": shift, "none": {"dice": none}, "full": {"dice": full}})
        chosen = none if shift < 0.5 else full  # the sweep at T = 0.5
        per_style[style] = {"dice": chosen, "minus_none": chosen - none}
    return {"model": "m", "seeds": [100], "n": 2, "chosen": 0.5, "rows": rows,
            "sweep": [{"threshold": 0.5, "per_style": per_style}]}


def test_guarded_record_compares_the_held_out_means_and_names_the_extremes():
    rec = _record_dcin_auto()
    # faded +0.10, pale -0.06: held-out mean +0.02 > margin -> full, threshold kept
    d = rec.guarded_decision(_guarded_run(0.80, 0.88), 0.005)
    assert d["auto"] == "full" and d["threshold"] == 0.5
    assert d["none"] == pytest.approx(0.82) and d["guarded"] == pytest.approx(0.84)
    assert "-0.060 (pale)" in d["evidence"] and "+0.100 (faded)" in d["evidence"]
    assert "force none for images like pale" in d["evidence"]
    # faded +0.10, pale -0.095: mean +0.0025 < margin -> none; the hint names the faded style
    d = rec.guarded_decision(_guarded_run(0.80, 0.845), 0.005)
    assert d["auto"] == "none" and "force full for images like faded" in d["evidence"]
    # the training style is not in the held-out mean
    assert d["none"] == pytest.approx(0.82)
