"""Smoke test of ``benchmarks/generalization.py --quick`` (one task, one model, tiny tiles)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from test_records import result_tables_without_command

ROOT = Path(__file__).resolve().parents[1]


def _load_benchmark():
    spec = importlib.util.spec_from_file_location(
        "generalization_bench", ROOT / "benchmarks" / "generalization.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_writes_json_and_a_valid_doc_block(tmp_path, capsys):
    bench = _load_benchmark()
    doc, out = tmp_path / "g.md", tmp_path / "g.json"
    doc.write_text("# Generalisation\n\nProse that must survive.\n", encoding="utf-8")
    argv = ["--quick", "--task", "vessels", "--models", "vessels-ram-sgcg", "--label", "smoke",
            "--doc", str(doc), "--out", str(out)]  # fmt: skip
    result = bench.main(argv)
    printed = json.loads(capsys.readouterr().out)
    assert printed["label"] == "smoke" and printed["quick"] is True
    task = result["tasks"]["vessels"]
    assert task["methods"] == ["vessels-ram-sgcg", "classical"]
    renderers = {c["renderer"] for c in task["columns"].values()}
    assert renderers == {"training", "heldout", "real"}
    for method in task["methods"]:
        for cell in task["cells"][method].values():
            assert set(cell) == {"dice", "cldice"}
            assert all(0.0 <= v["mean"] <= 1.0 for v in cell.values())
    # the classical row is the weak reference on the real fundus: 1 by construction
    assert task["cells"]["classical"]["real:retina-half"]["dice"]["mean"] == 1.0
    assert "camera-a" in task["trained_on"]["vessels-ram-sgcg"]
    lesions = task["confounder_false_positives"]["classical"]
    assert lesions and set(lesions) <= {"haemorrhage", "exudate", "drusen", "cotton_wool"}
    assert all(0.0 <= c["fraction"] <= 1.0 and c["pixels"] > 0 for c in lesions.values())
    # the doc keeps its prose, gets one block with Reproduce lines; a rerun replaces the block
    text = doc.read_text(encoding="utf-8")
    assert "Prose that must survive." in text and text.count("generalization:smoke:begin") == 1
    assert result_tables_without_command(text, ROOT) == []
    assert "| `classical` |" in text and "| ref |" in text
    # the Reproduce lines give the command as it was run, not a generic one
    assert "python benchmarks/generalization.py --quick --task vessels --models vessels-ram-sgcg" in text
    bench.write_doc(doc, result)
    assert doc.read_text(encoding="utf-8").count("generalization:smoke:begin") == 1
    record = json.loads(out.read_text(encoding="utf-8"))
    assert list(record["runs"]) == ["smoke"]


def _load(name: str):
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_instance_errors_puts_each_nucleus_in_one_class():
    import numpy as np

    errors = _load("instance_errors").error_counts
    gt = np.zeros((40, 60), np.int32)
    gt[2:12, 2:12], gt[2:12, 14:24], gt[20:30, 2:12], gt[20:30, 30:40], gt[2:12, 40:50] = 1, 2, 3, 4, 5
    pred = np.zeros_like(gt)
    pred[2:12, 2:24] = 7          # one object over nuclei 1 and 2: both merged
    pred[20:30, 2:12] = 3         # nucleus 3 found
    pred[20:30, 30:35] = 8        # nucleus 4 cut in two halves: found (by one half) and split
    pred[20:30, 35:40] = 9
    pred[32:38, 50:58] = 6        # on no nucleus: spurious; nucleus 5 missed
    got = errors(pred, gt)
    assert got == {"nuclei": 5, "predicted": 5, "found": 2, "merged": 2, "missed": 1, "split": 1,
                   "spurious": 1}
    assert errors(gt, gt) == {"nuclei": 5, "predicted": 5, "found": 5, "merged": 0, "missed": 0,
                              "split": 0, "spurious": 0}
