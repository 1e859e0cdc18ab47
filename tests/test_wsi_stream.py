"""Streamed whole-slide inference (napari_dgseg.core.wsi): equal to the in-memory path, resumable,
tissue-only, refusing foreign outputs, readable as a placed multiscale labels layer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from napari_dgseg.core.errors import CancelledError, OutputExistsError
from napari_dgseg.core.slide import open_image
from napari_dgseg.core.wsi import SlidePlan, plan_slide, predict_slide
from napari_dgseg.core.wsi.store import done_blocks, stored_plan

SVS_HEADER = "Aperio Image Library v12.0.15\n"


def nuclei_slide(h: int, w: int, seed: int = 0, blank_right: int = 0) -> np.ndarray:
    """Pink tissue with dark purple disks; the rightmost ``blank_right`` columns are glass."""
    from skimage.draw import disk

    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.uint8)
    img[:] = (225, 170, 200)
    for _ in range(h * w // 900):
        r = int(rng.integers(5, 10))
        cy, cx = int(rng.integers(r, h - r)), int(rng.integers(r, w - r))
        rr, cc = disk((cy, cx), r, shape=(h, w))
        img[rr, cc] = (90, 40, 140)
    noisy = np.clip(img + rng.normal(0, 5, img.shape), 0, 255).astype(np.uint8)
    if blank_right:
        noisy[:, w - blank_right:] = (242, 242, 242)
    return noisy


def write_pyramid(path: Path, data: np.ndarray, mpp: float = 0.5) -> Path:
    """An SVS-like tiled pyramid (level 0, thumbnail, a 4x level) with its pixel size."""
    h, w = data.shape[:2]
    desc = f"{SVS_HEADER}{w}x{h} [0,0 {w}x{h}] (256x256) RAW|AppMag = 20|MPP = {mpp}"
    with tifffile.TiffWriter(path) as tw:
        tw.write(data, tile=(256, 256), photometric="rgb", description=desc, metadata=None)
        tw.write(data[::16, ::16], photometric="rgb", metadata=None,
                 description=f"{SVS_HEADER}thumbnail|MPP = {mpp}")
        tw.write(data[::4, ::4], tile=(64, 64), photometric="rgb",
                 description=f"{SVS_HEADER}{w}x{h} -> {w // 4}x{h // 4}|MPP = {mpp}",
                 metadata=None)
    return path


@pytest.fixture
def slide(tmp_path):
    return write_pyramid(tmp_path / "slide.svs", nuclei_slide(704, 896, blank_right=320))


def test_streamed_semantic_equals_in_memory(tiny_bundle, slide, tmp_path):
    out = tmp_path / "out.zarr"
    summary = predict_slide(tiny_bundle, slide, out, block_size=256, margin=96,
                            outputs=["labels", "probabilities"], rescale="off", tissue=False)
    assert summary["blocks"] == 3 * 4 and summary["blocks_run"] == 12
    with open_image(slide) as opened:
        ref = tiny_bundle.predict(np.asarray(opened.full), rescale="off")
    labels = zarr.open_array(str(out / "0"), mode="r")[...]
    probs = zarr.open_array(str(out / "probabilities" / "0"), mode="r")[...]
    np.testing.assert_array_equal(labels, ref.labels)
    np.testing.assert_allclose(probs, ref.probabilities, atol=1e-4)
    # the pyramid: nearest for labels, mean for probabilities
    level1 = zarr.open_array(str(out / "1"), mode="r")[...]
    np.testing.assert_array_equal(level1, ref.labels[::2, ::2])
    p1 = zarr.open_array(str(out / "probabilities" / "1"), mode="r")[...]
    np.testing.assert_allclose(p1[:, 10, 10], ref.probabilities[:, 20:22, 20:22].mean(axis=(1, 2)),
                               atol=1e-4)


def test_plan_round_trips_through_json(tiny_bundle, slide, tmp_path):
    plan = plan_slide(slide, tiny_bundle, tmp_path / "p.zarr", block_size=256, margin=64,
                      rescale="off")
    again = SlidePlan.from_json(plan.to_json())
    assert again == plan
    assert again.mismatch(plan) is None
    assert plan.window(5) == (192, 192, 576, 576)  # block (1, 1) of a 3 x 4 grid, +-64


def test_blank_blocks_are_skipped_and_background(tiny_bundle, slide, tmp_path):
    plan = plan_slide(slide, tiny_bundle, tmp_path / "p.zarr", block_size=256, margin=64,
                      rescale="off")
    blank = [b.id for b in plan.blocks if not b.tissue]
    assert blank == [3, 7, 11]  # the right column (x >= 768) is glass, beyond the margin too
    calls: list[int] = []

    def spy(plan_, ids, progress):
        from napari_dgseg.core.wsi import run_block

        for k, i in enumerate(ids, 1):
            calls.append(i)
            run_block(tiny_bundle, plan_, i)
            progress(k, len(ids))

    out = tmp_path / "t.zarr"
    seen = []
    predict_slide(tiny_bundle, slide, out, block_size=256, margin=64, rescale="off",
                  block_executor=spy, progress=lambda d, t: seen.append((d, t)))
    assert sorted(calls) == list(range(12))  # blank blocks go through run_block, cheaply
    records = [json.loads((out / ".dgseg-blocks" / f"{i}.done").read_text()) for i in blank]
    assert all(r["skipped"] for r in records)
    labels = zarr.open_array(str(out / "0"), mode="r")[...]
    assert not labels[:, 768:].any()
    assert seen[0] == (0, 12) and seen[-1] == (12, 12)


@pytest.fixture(scope="module")
def unet():
    from napari_dgseg.core.bundle import load_bundle

    return load_bundle("nuclei-unet")


def test_killed_run_resumes_to_the_same_result(unet, slide, tmp_path):
    from napari_dgseg.core.wsi import run_block

    tiny_bundle = unet  # a trained model, so that there are instances to stitch

    full = tmp_path / "full.zarr"
    predict_slide(tiny_bundle, slide, full, block_size=256, margin=64, rescale="off",
                  instances=True)
    part = tmp_path / "part.zarr"

    def dies_after_four(plan, ids, progress):
        for k, i in enumerate(ids[:4], 1):
            run_block(tiny_bundle, plan, i)
            progress(k, len(ids))
        raise KeyboardInterrupt  # the process is killed in the fifth block

    with pytest.raises(KeyboardInterrupt):
        predict_slide(tiny_bundle, slide, part, block_size=256, margin=64, rescale="off",
                      instances=True, block_executor=dies_after_four)
    plan = stored_plan(part)
    assert done_blocks(plan) == {0, 1, 2, 3}
    assert not (part / ".dgseg-blocks" / "finalized").exists()
    summary = predict_slide(tiny_bundle, slide, part, block_size=256, margin=64,
                            rescale="off", instances=True)
    assert summary["resumed"] == 4 and summary["blocks_run"] == 8
    a = zarr.open_array(str(full / "0"), mode="r")[...]
    b = zarr.open_array(str(part / "0"), mode="r")[...]
    np.testing.assert_array_equal(a, b)
    assert a.max() > 5  # instances of a semantic model (connected components)


def test_cancel_between_blocks_then_resume(tiny_bundle, slide, tmp_path):
    out = tmp_path / "c.zarr"
    state = {"n": 0}

    def progress(done, total):
        state["n"] = done

    with pytest.raises(CancelledError):
        predict_slide(tiny_bundle, slide, out, block_size=256, margin=64, rescale="off",
                      progress=progress, cancel=lambda: state["n"] >= 3)
    assert 3 <= len(done_blocks(stored_plan(out))) < 12
    summary = predict_slide(tiny_bundle, slide, out, block_size=256, margin=64, rescale="off")
    assert summary["resumed"] >= 3 and summary["resumed"] + summary["blocks_run"] == 12


def test_mismatching_output_is_refused_in_one_line(tiny_bundle, slide, tmp_path):
    out = tmp_path / "m.zarr"
    predict_slide(tiny_bundle, slide, out, block_size=256, margin=64, rescale="off")
    with pytest.raises(OutputExistsError) as info:
        predict_slide(tiny_bundle, slide, out, block_size=512, margin=64, rescale="off")
    message = str(info.value)
    assert "\n" not in message and "block size" in message and "--overwrite" in message
    summary = predict_slide(tiny_bundle, slide, out, block_size=512, margin=64, rescale="off",
                            overwrite=True)
    assert summary["blocks"] == 4
    other = tmp_path / "other.zarr"
    other.mkdir()
    with pytest.raises(OutputExistsError, match="not a napari-dgseg streamed output"):
        predict_slide(tiny_bundle, slide, other, block_size=256, rescale="off")


def test_reader_opens_result_as_placed_multiscale_labels(tiny_bundle, slide, tmp_path):
    from napari_dgseg._napari.reader import read_one

    out = tmp_path / "r.zarr"
    predict_slide(tiny_bundle, slide, out, block_size=256, margin=64, rescale="off")
    data, kwargs, kind = read_one(out)
    assert kind == "labels"
    assert kwargs["multiscale"] and isinstance(data, list) and len(data) == 2
    assert data[0].shape == (704, 896) and data[1].shape == (352, 448)
    assert kwargs["scale"] == pytest.approx((0.5, 0.5))
    assert kwargs["metadata"]["provenance"]["model_sha256"] == tiny_bundle.sha256


def test_cli_streams_to_zarr_out_and_resumes(tiny_bundle, slide, tmp_path, capsys):
    from napari_dgseg.cli import main

    model = str(tmp_path / "tiny.dgseg")
    out = tmp_path / "cli.zarr"
    argv = ["predict", "--model", model, "--out", str(out), "--block-size", "256",
            "--rescale", "off", "--probabilities", str(slide)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    row = json.loads(captured.out)["outputs"][0]
    assert row["streamed"] and row["blocks"] == 12 and row["blocks_run"] == 12
    assert "(blocks)" in captured.err  # progress per block on stderr
    assert (out / "probabilities" / "0").is_dir()
    assert main(argv) == 0  # finished output, same plan: resumed, nothing to do
    assert json.loads(capsys.readouterr().out)["outputs"][0]["blocks_run"] == 0
    assert main([*argv[:6], "512", *argv[7:], "--no-resume"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already exists" in err[0]


def test_cli_streams_when_larger_than_the_memory_budget(tiny_bundle, slide, tmp_path, capsys,
                                                        monkeypatch):
    from napari_dgseg.cli import main

    model = str(tmp_path / "tiny.dgseg")
    monkeypatch.setenv("DGSEG_MEMORY_BUDGET", "20M")  # the 704 x 896 slide needs ~43 MB
    assert main(["predict", "--model", model, "--out", str(tmp_path / "o"), "--block-size",
                 "256", "--rescale", "off", "--quiet", str(slide)]) == 0
    row = json.loads(capsys.readouterr().out)["outputs"][0]
    assert row["streamed"] and Path(row["labels"]) == tmp_path / "o" / "slide.zarr"
    monkeypatch.setenv("DGSEG_MEMORY_BUDGET", "0")  # no limit: the in-memory path, a TIFF
    assert main(["predict", "--model", model, "--out", str(tmp_path / "p"), "--rescale", "off",
                 "--quiet", str(slide)]) == 0
    assert json.loads(capsys.readouterr().out)["outputs"][0]["labels"].endswith("_labels.tif")


def test_streamed_blocks_share_the_slides_model_grid(unet, slide, tmp_path):
    """Resampled to the model's scale, every block is a crop of the whole slide's model grid:
    no sub-pixel shift from block to block, so the result is the in-memory one."""
    out = tmp_path / "scaled.zarr"
    predict_slide(unet, slide, out, block_size=256, margin=96, scale=0.75, tissue=False,
                  outputs=["labels", "probabilities"], dcin="none")
    with open_image(slide) as opened:
        ref = unet.predict(np.asarray(opened.full), scale=0.75, dcin="none")
    assert ref.provenance["scale"]["factor"] == 0.75
    np.testing.assert_array_equal(zarr.open_array(str(out / "0"), mode="r")[...], ref.labels)
    probs = zarr.open_array(str(out / "probabilities" / "0"), mode="r")[...]
    np.testing.assert_allclose(probs, ref.probabilities, atol=1e-4)


def test_bad_options_are_refused_in_one_line(tiny_bundle, slide, tmp_path):
    from napari_dgseg.core.errors import InputError

    cases = [({"block_size": 256, "margin": 160}, "at most half the block size"),
             ({"outputs": ["labels", "edges"]}, "unknown output"),
             ({"block_size": 16}, "too small")]
    for kwargs, text in cases:
        with pytest.raises(InputError) as info:
            plan_slide(slide, tiny_bundle, tmp_path / "x.zarr", rescale="off", **kwargs)
        assert text in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(InputError, match="ending in .zarr"):
        predict_slide(tiny_bundle, slide, tmp_path / "x.out", block_size=256, rescale="off")


def test_finished_blocks_are_not_run_again(tiny_bundle, slide, tmp_path):
    from napari_dgseg.core.wsi import create_output, run_block

    plan = plan_slide(slide, tiny_bundle, tmp_path / "d.zarr", block_size=256, margin=64,
                      rescale="off")
    create_output(plan)
    first = run_block(tiny_bundle, plan, 0)
    labels = zarr.open_array(str(tmp_path / "d.zarr" / "0"), mode="r+")
    labels[0, 0] = 77  # a second run would overwrite this
    again = run_block(tiny_bundle, plan, 0)
    assert again == {"block": 0, **first}
    assert labels[0, 0] == 77
