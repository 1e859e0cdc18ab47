"""``dgseg evaluate``: JSON output for files and folders, and every bad input answered clearly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_dgseg.cli import main
from napari_dgseg.core.metrics import instance_scores, semantic_scores


def _inst(h: int = 10, w: int = 12, shift: int = 0) -> np.ndarray:
    lab = np.zeros((h, w), np.uint16)
    lab[1:4, 1 + shift : 5 + shift] = 7
    lab[6:9, 3:9] = 40
    return lab


def _run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _error(capsys, *argv) -> str:
    rc, out, err = _run(capsys, *argv)
    assert rc == 2, (rc, out, err)
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dgseg evaluate: error: ")
    return lines[0]


def test_instance_two_files(tmp_path, capsys):
    gt, pred = _inst(), _inst(shift=1)
    tifffile.imwrite(tmp_path / "gt.tif", gt)
    np.save(tmp_path / "pred.npy", pred.astype(np.int32))
    rc, out, _ = _run(capsys, "evaluate", tmp_path / "pred.npy", tmp_path / "gt.tif", "--instance")
    assert rc == 0
    res = json.loads(out)
    want = instance_scores(pred, gt)
    assert res["task"] == "instance" and res["n_images"] == 1
    for k in ("dice", "aji", "aji_plus", "dq", "sq", "pq"):
        assert res["images"][0][k] == pytest.approx(want[k])
        assert res["mean"][k] == pytest.approx(want[k])
    # by hand: instance 7 is 12 px, shifted by one column: overlap 9, union 15
    assert res["images"][0]["aji"] == pytest.approx((9 + 18) / (15 + 18))


def test_semantic_folders_pairing_mean_and_mask(tmp_path, capsys):
    (tmp_path / "pred").mkdir()
    (tmp_path / "gt").mkdir()
    gts, preds = {}, {}
    for i, name in enumerate(("a", "b")):
        g = np.zeros((8, 8), np.uint8)
        g[2:6, 2:6] = 1
        g[0, 0:3] = 2
        p = g.copy()
        p[2:6, 2 + i : 4 + i] = 0
        gts[name], preds[name] = g, p
        Image.fromarray(g).save(tmp_path / "gt" / f"{name}.png")
    tifffile.imwrite(tmp_path / "pred" / "a_labels.tif", preds["a"])
    np.save(tmp_path / "pred" / "b.npy", preds["b"])
    mask = np.ones((8, 8), np.uint8) * 255
    mask[0, :] = 0
    Image.fromarray(mask).save(tmp_path / "fov.png")
    rc, out, _ = _run(capsys, "evaluate", tmp_path / "pred", tmp_path / "gt", "--mask", tmp_path / "fov.png")  # fmt: skip
    assert rc == 0
    res = json.loads(out)
    assert res["task"] == "semantic" and res["num_classes"] == 3
    assert [r["name"] for r in res["images"]] == ["a", "b"]
    assert res["images"][0]["pred"].endswith("a_labels.tif")
    per = [semantic_scores(preds[n], gts[n], 3, mask=mask > 0) for n in ("a", "b")]
    for row, want in zip(res["images"], per, strict=True):
        assert row["dice"] == pytest.approx(want["dice"])
        assert row["asd"] == pytest.approx(want["asd"])
    # class 2 lies outside the mask: absent in both -> 1.0; class 1 Dice 2*8/(16+8) for both
    assert res["mean"]["dice"]["2"] == 1.0
    assert res["mean"]["dice"]["1"] == pytest.approx(16 / 24)
    assert res["mean"]["mean_dice"] == pytest.approx((16 / 24 + 1) / 2)


def test_folder_instance_mean_is_mean_of_rows(tmp_path, capsys):
    for d in ("p", "g"):
        (tmp_path / d).mkdir()
    for i in range(3):
        tifffile.imwrite(tmp_path / "g" / f"im{i}.tif", _inst())
        tifffile.imwrite(tmp_path / "p" / f"im{i}_labels.tif", _inst(shift=i))
    rc, out, _ = _run(capsys, "evaluate", tmp_path / "p", tmp_path / "g", "--instance")
    res = json.loads(out)
    assert rc == 0 and res["n_images"] == 3
    assert res["images"][0]["pq"] == 1.0
    assert res["mean"]["pq"] == pytest.approx(np.mean([r["pq"] for r in res["images"]]))


# ------------------------------------------------------------------------------------------
# bad input: exit code 2, one line on stderr naming the file(s) and what to do
# ------------------------------------------------------------------------------------------


def test_float_labels_rejected(tmp_path, capsys):
    tifffile.imwrite(tmp_path / "gt.tif", _inst())
    np.save(tmp_path / "prob.npy", np.full((10, 12), 0.3, np.float32))
    msg = _error(capsys, "evaluate", tmp_path / "prob.npy", tmp_path / "gt.tif", "--instance")
    assert "prob.npy" in msg and "not integral" in msg and "threshold or argmax" in msg
    # integral floats and bool are fine
    np.save(tmp_path / "ok.npy", _inst().astype(np.float64))
    assert _run(capsys, "evaluate", tmp_path / "ok.npy", tmp_path / "gt.tif")[0] == 0
    np.save(tmp_path / "ok.npy", _inst() > 0)
    assert _run(capsys, "evaluate", tmp_path / "ok.npy", tmp_path / "gt.tif")[0] == 0


def test_rgb_labels_rejected(tmp_path, capsys):
    tifffile.imwrite(tmp_path / "gt.tif", _inst())
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(tmp_path / "rgb.png")
    msg = _error(capsys, "evaluate", tmp_path / "rgb.png", tmp_path / "gt.tif")
    assert "rgb.png" in msg and "colour image" in msg and "(10, 12, 3)" in msg


def test_mismatched_shapes(tmp_path, capsys):
    tifffile.imwrite(tmp_path / "gt.tif", _inst())
    tifffile.imwrite(tmp_path / "pred.tif", _inst(12, 10))
    msg = _error(capsys, "evaluate", tmp_path / "pred.tif", tmp_path / "gt.tif", "--instance")
    assert "pred.tif has shape (12, 10)" in msg and "gt.tif has shape (10, 12)" in msg


def test_empty_file(tmp_path, capsys):
    tifffile.imwrite(tmp_path / "gt.tif", _inst())
    (tmp_path / "pred.tif").write_bytes(b"")
    msg = _error(capsys, "evaluate", tmp_path / "pred.tif", tmp_path / "gt.tif")
    assert "pred.tif" in msg and "empty" in msg


def test_text_file_named_tif(tmp_path, capsys):
    tifffile.imwrite(tmp_path / "pred.tif", _inst())
    (tmp_path / "gt.tif").write_text("these are my notes, not an image\n")
    msg = _error(capsys, "evaluate", tmp_path / "pred.tif", tmp_path / "gt.tif")
    assert "gt.tif: cannot read the file as a TIF image" in msg and "re-export" in msg


def test_missing_pairs(tmp_path, capsys):
    for d in ("p", "g"):
        (tmp_path / d).mkdir()
    tifffile.imwrite(tmp_path / "g" / "x.tif", _inst())
    tifffile.imwrite(tmp_path / "p" / "x_labels.tif", _inst())
    tifffile.imwrite(tmp_path / "p" / "orphan.tif", _inst())
    msg = _error(capsys, "evaluate", tmp_path / "p", tmp_path / "g")
    assert "no ground truth" in msg and "orphan.tif" in msg
    (tmp_path / "p" / "orphan.tif").unlink()
    tifffile.imwrite(tmp_path / "g" / "y.tif", _inst())
    msg = _error(capsys, "evaluate", tmp_path / "p", tmp_path / "g")
    assert "no prediction" in msg and "y.tif" in msg
    msg = _error(capsys, "evaluate", tmp_path / "p", tmp_path / "g" / "x.tif")
    assert "is a folder" in msg and "two files or two folders" in msg
    msg = _error(capsys, "evaluate", tmp_path / "nothere.tif", tmp_path / "g" / "x.tif")
    assert "nothere.tif: no such file or folder" in msg


def test_bad_mask_and_classes(tmp_path, capsys):
    tifffile.imwrite(tmp_path / "gt.tif", _inst())
    tifffile.imwrite(tmp_path / "m.tif", np.ones((3, 3), np.uint8))
    msg = _error(capsys, "evaluate", tmp_path / "gt.tif", tmp_path / "gt.tif", "--mask", tmp_path / "m.tif")  # fmt: skip
    assert "m.tif has shape (3, 3)" in msg
    msg = _error(capsys, "evaluate", tmp_path / "gt.tif", tmp_path / "gt.tif", "--num-classes", "3")
    assert "--num-classes 41" in msg and "gt.tif" in msg


@pytest.mark.slow
def test_console_script(tmp_path):
    tifffile.imwrite(tmp_path / "gt.tif", _inst())
    tifffile.imwrite(tmp_path / "pred.tif", _inst(shift=1))
    script = Path(sys.executable).parent / "dgseg"
    if not script.exists():
        pytest.skip("console script not installed next to this interpreter")
    ok = subprocess.run(
        [script, "evaluate", tmp_path / "pred.tif", tmp_path / "gt.tif", "--instance"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["images"][0]["pq"] == pytest.approx((0.6 + 1.0) / 2)
    (tmp_path / "bad.tif").write_text("text")
    bad = subprocess.run(
        [script, "evaluate", tmp_path / "bad.tif", tmp_path / "gt.tif"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2 and bad.stdout == ""
    assert "bad.tif" in bad.stderr and "Traceback" not in bad.stderr


def test_mask_folder_paired_by_stem(tmp_path, capsys):
    for d in ("p", "g", "m"):
        (tmp_path / d).mkdir()
    g = np.zeros((8, 8), np.uint8)
    g[2:5, 2:5] = 1
    p = g.copy()
    p[7, 7] = 1  # a false positive outside the field of view
    fov = np.ones((8, 8), np.uint8)
    fov[7, 7] = 0
    tifffile.imwrite(tmp_path / "g" / "a.tif", g)
    tifffile.imwrite(tmp_path / "p" / "a_labels.tif", p)
    Image.fromarray(fov * 255).save(tmp_path / "m" / "a_mask.png")
    rc, out, _ = _run(capsys, "evaluate", tmp_path / "p", tmp_path / "g", "--mask", tmp_path / "m")
    assert rc == 0 and json.loads(out)["mean"]["mean_dice"] == 1.0
    rc, out, _ = _run(capsys, "evaluate", tmp_path / "p", tmp_path / "g")
    assert json.loads(out)["mean"]["mean_dice"] == pytest.approx(18 / 19)
    (tmp_path / "m" / "a_mask.png").rename(tmp_path / "m" / "other.png")
    msg = _error(capsys, "evaluate", tmp_path / "p", tmp_path / "g", "--mask", tmp_path / "m")
    assert "no mask for image 'a'" in msg


def _many_instances() -> np.ndarray:
    lab = np.zeros((40, 40), np.uint16)
    for k in range(6):  # six separate objects, ids 3, 8, 13, ... (not consecutive)
        r, c = divmod(k, 3)
        lab[2 + r * 18 : 12 + r * 18, 2 + c * 13 : 10 + c * 13] = 3 + 5 * k
    return lab


def _recurring_classes() -> np.ndarray:
    lab = np.zeros((40, 40), np.uint8)
    for k in range(6):  # three classes, each in two separate regions
        r, c = divmod(k, 3)
        lab[2 + r * 18 : 12 + r * 18, 2 + c * 13 : 10 + c * 13] = 1 + k % 3
    return lab


def test_instance_ground_truth_is_detected_without_flag(tmp_path, capsys):
    gt = _many_instances()
    pred = gt.copy()
    pred[pred == 8] = 0  # one object missed
    tifffile.imwrite(tmp_path / "gt.tif", gt)
    tifffile.imwrite(tmp_path / "pred.tif", pred)
    rc, out, err = _run(capsys, "evaluate", tmp_path / "pred.tif", tmp_path / "gt.tif")
    assert rc == 0
    res = json.loads(out)
    assert res["task"] == "instance" and res["task_source"] == "detected"
    assert "object ids" in res["task_reason"] and res["num_classes"] is None
    assert res["images"][0]["pq"] == pytest.approx(instance_scores(pred, gt)["pq"])
    assert "scoring as instance" in err and "--task semantic" in err  # the user is told
    # forcing semantic is possible and recorded as the user's choice
    rc, out, err = _run(capsys, "evaluate", tmp_path / "pred.tif", tmp_path / "gt.tif", "--task", "semantic")  # fmt: skip
    res = json.loads(out)
    assert res["task"] == "semantic" and res["task_source"] == "option" and err == ""


def test_semantic_ground_truth_with_recurring_classes_stays_semantic(tmp_path, capsys):
    gt = _recurring_classes()
    tifffile.imwrite(tmp_path / "gt.tif", gt)
    tifffile.imwrite(tmp_path / "pred.tif", gt)
    rc, out, err = _run(capsys, "evaluate", tmp_path / "pred.tif", tmp_path / "gt.tif")
    res = json.loads(out)
    assert rc == 0 and res["task"] == "semantic" and res["task_source"] == "detected"
    assert res["num_classes"] == 4 and "recur" in res["task_reason"]
    assert "scoring as semantic" in err


def test_binary_ground_truth_is_semantic_and_num_classes_decides(tmp_path, capsys):
    gt = (_many_instances() > 0).astype(np.uint8)
    tifffile.imwrite(tmp_path / "gt.tif", gt)
    tifffile.imwrite(tmp_path / "pred.tif", gt)
    res = json.loads(_run(capsys, "evaluate", tmp_path / "pred.tif", tmp_path / "gt.tif")[1])
    assert res["task"] == "semantic" and res["num_classes"] == 2
    tifffile.imwrite(tmp_path / "gt2.tif", _many_instances())
    tifffile.imwrite(tmp_path / "pred2.tif", _many_instances())
    res = json.loads(
        _run(capsys, "evaluate", tmp_path / "pred2.tif", tmp_path / "gt2.tif", "--num-classes", "29")[1]
    )
    assert res["task"] == "semantic" and res["task_source"] == "option"
    msg = _error(capsys, "evaluate", tmp_path / "pred.tif", tmp_path / "gt.tif", "--instance", "--task", "semantic")  # fmt: skip
    assert "contradict" in msg


@pytest.mark.parametrize(
    ("top", "dtype"), [(200, np.uint8), (300, np.uint16), (70000, np.uint32)]
)
def test_every_stored_label_dtype_is_evaluated(tmp_path, capsys, top, dtype):
    gt = _many_instances().astype(np.int64)  # ids up to 28
    gt[gt == 3] = top  # the largest id decides the stored type
    from napari_dgseg.core.labels_io import write_labels

    path = write_labels(tmp_path / "gt.tif", gt)
    assert tifffile.imread(path).dtype == dtype  # the smallest type that holds the ids
    res = json.loads(_run(capsys, "evaluate", path, path)[1])
    assert res["task"] == "instance" and res["images"][0]["pq"] == 1.0
