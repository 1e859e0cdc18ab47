"""Instances across block borders (napari_dgseg.core.wsi.stitch): each object exactly once, whole,
with ids unique over the slide."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from napari_dgseg.core.atomic import atomic_write_bytes
from napari_dgseg.core.metrics import instance_scores
from napari_dgseg.core.wsi.plan import SlidePlan, block_grid
from napari_dgseg.core.wsi.stitch import (
    PieceCache,
    compose_block,
    own_instances,
    piece_bytes,
    resolve_duplicates,
)
from napari_dgseg.core.wsi.store import create_output, piece_path


def border_disks(side: int, block: int, radius: int = 9, seed: int = 0) -> np.ndarray:
    """Instance ids of disks centred on every block border and corner, plus a few inside."""
    from skimage.draw import disk

    rng = np.random.default_rng(seed)
    lab = np.zeros((side, side), np.int32)
    centres = []
    borders = list(range(block, side, block))
    for b in borders:  # straddling vertical and horizontal borders, and the corners
        for t in range(40, side - 40, 70):
            centres += [(t + int(rng.integers(-5, 6)), b + int(rng.integers(-3, 4))),
                        (b + int(rng.integers(-3, 4)), t + 35 + int(rng.integers(-5, 6)))]
        for c in borders:
            centres.append((b, c))
    centres += [tuple(int(v) for v in rng.integers(20, side - 20, 2)) for _ in range(10)]
    n = 0
    for cy, cx in centres:
        rr, cc = disk((cy, cx), radius, shape=lab.shape)
        if (lab[rr, cc] > 0).any():
            continue  # keep the objects apart: one object per disk
        n += 1
        lab[rr, cc] = n
    return lab


def toy_plan(tmp_path, side: int, block: int, margin: int) -> SlidePlan:
    plan = SlidePlan(source=str(tmp_path / "none.tif"), output=str(tmp_path / "s.zarr"),
                     shape=(side, side), pixel_size_um=None, block_size=block, margin=margin,
                     blocks=block_grid((side, side), block), bundle_sha256="0" * 64,
                     bundle_name="toy", output_kind="instances", class_names=["bg", "fg"],
                     options={"outputs": ["labels"], "instances": True})
    create_output(plan)
    return plan


def stitch_from_windows(plan: SlidePlan, truth: np.ndarray, jitter: bool) -> np.ndarray:
    """Run the ownership rule on every window of ``truth`` (odd blocks see it shifted by a
    pixel, as a neighbour's different context would), resolve and compose."""
    for b in plan.blocks:
        y0, x0, y1, x1 = plan.window(b.id)
        win = truth[y0:y1, x0:x1]
        if jitter and b.id % 2:
            win = np.roll(win, (1, 1), axis=(0, 1))
        piece = own_instances(win, (y0, x0, y1, x1), b, plan.shape)
        atomic_write_bytes(piece_path(plan, b.id), piece_bytes(piece))
    luts = resolve_duplicates(plan, [b.id for b in plan.blocks])
    cache = PieceCache(plan)
    out = np.zeros(plan.shape, np.int32)
    for b in plan.blocks:
        out[b.y0:b.y1, b.x0:b.x1] = compose_block(plan, b.id, luts, cache)
    return out


@pytest.mark.parametrize("jitter", [False, True])
def test_every_object_once_whole_with_unique_ids(tmp_path, jitter):
    truth = border_disks(640, 128)
    plan = toy_plan(tmp_path, 640, 128, 32)
    out = stitch_from_windows(plan, truth, jitter)
    ids = np.unique(out[out > 0])
    n_truth = int(truth.max())
    assert len(ids) == n_truth  # no duplicate, none lost
    np.testing.assert_array_equal(ids, np.arange(1, n_truth + 1))  # consecutive over the slide
    for t in range(1, n_truth + 1):  # each object is one output instance, whole
        hit = np.unique(out[truth == t])
        hit = hit[hit > 0]
        assert len(hit) == 1
        iou = ((out == hit[0]) & (truth == t)).sum() / ((out == hit[0]) | (truth == t)).sum()
        assert iou > (0.75 if jitter else 0.999)  # a 1 px shift of a 9 px disk: IoU ~0.8
    if not jitter:
        assert instance_scores(out, truth)["aji"] == pytest.approx(1.0)


def test_cut_objects_are_left_to_the_block_that_sees_them_whole(tmp_path):
    truth = np.zeros((256, 256), np.int32)
    truth[100:140, 120:136] = 1  # centred on the border x = 128
    plan = toy_plan(tmp_path, 256, 128, 32)
    # block 0's window is x < 160: the object is whole; block 1's is x >= 96: whole too
    b0, b1 = plan.blocks[0], plan.blocks[1]
    p0 = own_instances(truth[plan.window(0)[0]:plan.window(0)[2], 0:160], plan.window(0), b0,
                       plan.shape)
    assert p0.n == 1
    # an object running off the window's inner edge is cut there: never kept
    cut = np.zeros((256, 256), np.int32)
    cut[10:20, 150:170] = 1
    p_cut = own_instances(cut[0:160, 0:160], plan.window(0), b0, plan.shape)
    assert p_cut.n == 0
    assert own_instances(cut[0:160, 96:256], plan.window(1), b1, plan.shape).n == 1


def test_hovernet_streamed_instances_match_in_memory(tmp_path):
    from napari_dgseg.core.bundle import load_bundle
    from napari_dgseg.core.wsi import predict_slide
    from test_wsi_stream import write_pyramid

    bundle = load_bundle("nuclei-hovernet")
    truth = border_disks(768, 256, radius=7, seed=1)
    img = np.empty((768, 768, 3), np.uint8)
    img[:] = (226, 172, 204)
    img[truth > 0] = (95, 45, 150)
    rng = np.random.default_rng(2)
    img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
    slide = write_pyramid(tmp_path / "borders.svs", img)
    out = tmp_path / "h.zarr"
    summary = predict_slide(bundle, slide, out, block_size=256, margin=96, rescale="off",
                            dcin="none")
    assert summary["provenance"]["labels_kind"] == "instances"
    streamed = zarr.open_array(str(out / "0"), mode="r")[...]
    ref = bundle.predict(img, rescale="off", dcin="none").labels
    ids = np.unique(streamed[streamed > 0])
    np.testing.assert_array_equal(ids, np.arange(1, len(ids) + 1))
    assert instance_scores(streamed, ref)["aji"] >= 0.99
    assert abs(len(ids) - len(np.unique(ref[ref > 0]))) <= 1
