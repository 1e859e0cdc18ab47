"""HoVer-Net family: HV targets, reference post-processing, losses, network, training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_dgseg.core.families.hovernet.loss import (
    gradient_kernels,
    hovernet_loss,
    hv_mse_loss,
    hv_msge_loss,
)
from napari_dgseg.core.families.hovernet.postprocess import (
    HoverPostConfig,
    hovernet_instances,
    sobel_kernels,
)
from napari_dgseg.core.families.hovernet.targets import hv_targets, hv_targets_numpy, np_targets
from napari_dgseg.core.metrics import instance_scores
from napari_dgseg.core.registry import get_family


def ellipses(size: int, n: int, seed: int) -> np.ndarray:
    """Instance map of up to ``n`` random ellipses (radii 5-11 px) that may touch.

    An ellipse that would lose more than 15 % of its area to earlier ones is redrawn (at most
    20 tries), so instances touch and share borders, as crowded nuclei do, but stay one piece.
    """
    rng = np.random.default_rng(seed)
    lab = np.zeros((size, size), np.int32)
    yy, xx = np.mgrid[:size, :size]
    i = 0
    for _ in range(20 * n):
        if i == n:
            break
        cy, cx = rng.uniform(8, size - 8, 2)
        a, b = rng.uniform(5, 11, 2)
        t = rng.uniform(0, np.pi)
        c, s = np.cos(t), np.sin(t)
        y0, y1 = int(max(0, cy - 13)), int(min(size, cy + 14))
        x0, x1 = int(max(0, cx - 13)), int(min(size, cx + 14))
        dy, dx = yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx
        inside = ((dx * c + dy * s) / (a + 1)) ** 2 + ((-dx * s + dy * c) / (b + 1)) ** 2 <= 1
        sub = lab[y0:y1, x0:x1]
        if np.count_nonzero(inside & (sub > 0)) > 0.15 * np.count_nonzero(inside):
            continue
        i += 1
        sub[inside & (sub == 0)] = i
    return lab


def reference_hv(inst: np.ndarray) -> np.ndarray:
    """Per-instance loop (the slow, obvious form) with the exact centre of mass."""
    out = np.zeros((2,) + inst.shape, np.float32)
    for i in np.unique(inst[inst > 0]):
        ys, xs = np.nonzero(inst == i)
        for ch, coord in ((0, xs), (1, ys)):
            d = coord - coord.mean()
            v = np.zeros_like(d, dtype=np.float64)
            if (d < 0).any():
                v[d < 0] = d[d < 0] / -d[d < 0].min()
            if (d > 0).any():
                v[d > 0] = d[d > 0] / d[d > 0].max()
            out[ch, ys, xs] = v
    return out


# ----------------------------------------------------------------------------- HV targets
def test_hv_targets_rectangle_hand_values():
    inst = np.zeros((7, 9), np.int64)
    inst[2:5, 1:6] = 3  # 3 rows x 5 columns, centre (3, 3)
    hv = hv_targets_numpy(inst)
    np.testing.assert_allclose(hv[0, 3, 1:6], [-1, -0.5, 0, 0.5, 1], atol=1e-6)
    np.testing.assert_allclose(hv[1, 2:5, 3], [-1, 0, 1], atol=1e-6)
    assert np.all(hv[:, inst == 0] == 0)


@pytest.mark.parametrize("seed", [0, 1])
def test_hv_targets_match_per_instance_loop(seed):
    batch = np.stack([ellipses(96, 12, seed), ellipses(96, 12, seed + 10)])
    got = hv_targets(torch.from_numpy(batch)).numpy()
    for b in range(2):
        np.testing.assert_allclose(got[b], reference_hv(batch[b]), atol=1e-5)
    assert got.min() >= -1 and got.max() <= 1


def test_hv_targets_odd_shapes_by_hand():
    """Single pixels and one-pixel lines sit at their own centre (0); an L shape is asymmetric."""
    inst = np.zeros((6, 8), np.int64)
    inst[0, 6] = 5  # single pixel
    inst[0, 2:4] = 7  # two pixels: centre between them, x map -1, 1
    inst[2:6, 7] = 9  # vertical line: x map 0, y map -1, -1/3, 1/3, 1
    inst[1, 2:5] = 2  # horizontal line: x map -1, 0, 1, y map 0
    inst[3:5, 2:5] = 4
    inst[5, 2] = 4  # L shape: 7 px, x centre 20/7, y centre 25/7
    hv = hv_targets_numpy(inst)
    assert hv.dtype == np.float32 and hv.shape == (2, 6, 8)
    assert hv[0, 0, 6] == 0 and hv[1, 0, 6] == 0
    np.testing.assert_allclose(hv[:, 0, 2:4], [[-1, 1], [0, 0]], atol=1e-6)
    np.testing.assert_allclose(hv[1, 2:6, 7], [-1, -1 / 3, 1 / 3, 1], atol=1e-6)
    assert np.all(hv[0, 2:6, 7] == 0)
    np.testing.assert_allclose(hv[0, 1, 2:5], [-1, 0, 1], atol=1e-6)
    assert np.all(hv[1, 1, 2:5] == 0)
    np.testing.assert_allclose(hv, reference_hv(inst), atol=1e-6)
    cx = 20 / 7  # x distances of the L: -6/7 (min) ... 15/7 (max)
    np.testing.assert_allclose(hv[0, 3, 2:5], [-1, (3 - cx) / (4 - cx), 1], atol=1e-6)


def test_hv_targets_ids_dtypes_and_batch_independence():
    a = np.zeros((16, 16), np.int64)
    a[2:8, 3:12] = 1
    a[9:14, 1:5] = 1000  # sparse, large ids
    b = np.zeros((16, 16), np.int64)
    b[4:15, 6:9] = 1  # the same id in another image is another instance
    batch = torch.from_numpy(np.stack([a, b]))
    got = hv_targets(batch)
    for i, inst in enumerate((a, b)):
        np.testing.assert_allclose(got[i].numpy(), reference_hv(inst), atol=1e-6)
        np.testing.assert_allclose(hv_targets(batch[i : i + 1])[0], got[i], atol=0)
    for dtype in (torch.int32, torch.uint8, torch.int16):
        torch.testing.assert_close(hv_targets(batch.clamp_max(200).to(dtype)),
                                   hv_targets(batch.clamp_max(200)), atol=0, rtol=0)
    neg = batch.clone()
    neg[0, 0:2, 0:2] = -3  # negative ids are background
    got_neg = hv_targets(neg)
    assert torch.all(got_neg[0, :, 0:2, 0:2] == 0)
    torch.testing.assert_close(got_neg, got, atol=0, rtol=0)
    np_t = np_targets(neg)
    assert np_t.dtype == torch.long and torch.equal(np_t, (neg > 0).long())
    assert int(np_t[0, 0, 0]) == 0 and int(np_t[0, 5, 5]) == 1


def test_hv_targets_stay_on_the_input_device():
    """Every tensor is made on the input's device: a different default device (as after
    ``torch.set_default_device("cuda")``; "meta" here) changes nothing."""
    inst = torch.from_numpy(np.stack([ellipses(32, 4, 1), ellipses(32, 4, 2)]))
    expected = hv_targets(inst)
    with torch.device("meta"):
        got = hv_targets(inst)
    assert got.device.type == "cpu" and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


def test_hv_targets_empty_and_bad_shape():
    assert hv_targets(torch.zeros(2, 8, 8, dtype=torch.long)).abs().sum() == 0
    with pytest.raises(ValueError, match="B, H, W"):
        hv_targets(torch.zeros(8, 8, dtype=torch.long))


# ----------------------------------------------------------------------------- post-processing
def test_sobel_kernels_are_opencv():
    d, s = sobel_kernels(5)  # cv2.getDerivKernels(1, 0, 5) -> [-1,-2,0,2,1], [1,4,6,4,1]
    np.testing.assert_array_equal(d, [-1, -2, 0, 2, 1])
    np.testing.assert_array_equal(s, [1, 4, 6, 4, 1])
    d21, s21 = sobel_kernels(21)
    assert d21.shape == s21.shape == (21,) and s21[10] == 184756 and d21.sum() == 0
    with pytest.raises(ValueError):
        sobel_kernels(4)


@pytest.mark.parametrize("seed", [0, 3])
def test_postprocess_recovers_instances_from_perfect_maps(seed):
    gt = ellipses(256, 40, seed)
    hv = hv_targets_numpy(gt)
    pred = hovernet_instances((gt > 0).astype(np.float32), hv)
    scores = instance_scores(pred, gt)
    assert scores["aji"] > 0.95, scores
    assert scores["pq"] > 0.9, scores
    assert pred.dtype == np.int32


def test_postprocess_without_hv_cannot_split_touching_nuclei():
    """Control: the same blobs with flat HV maps merge touching nuclei (the HV maps do the work)."""
    gt = ellipses(256, 40, 0)
    flat = hovernet_instances((gt > 0).astype(np.float32), np.zeros((2, 256, 256), np.float32))
    good = hovernet_instances((gt > 0).astype(np.float32), hv_targets_numpy(gt))
    assert instance_scores(flat, gt)["aji"] < instance_scores(good, gt)["aji"] - 0.05


def test_postprocess_large_non_square_image():
    """A wide 384 x 768 crop of crowded nuclei: every nucleus found once, ids 1..n (timings live
    in benchmarks/, not here)."""
    gt = ellipses(768, 150, 5)[192:576]
    hv = hv_targets_numpy(gt)
    pred = hovernet_instances((gt > 0).astype(np.float32), hv)
    assert pred.shape == gt.shape and pred.dtype == np.int32
    assert set(np.unique(pred)) == set(range(int(pred.max()) + 1))
    scores = instance_scores(pred, gt)
    assert scores["aji"] > 0.95 and scores["pq"] > 0.9, scores
    # every nucleus not cut to a sliver by the crop is one predicted instance (IoU > 0.5, unique)
    matched = []
    for i in np.unique(gt[gt > 0]):
        region = gt == i
        if region.sum() < 50:
            continue
        j = np.bincount(pred[region]).argmax()
        iou = (region & (pred == j)).sum() / (region | (pred == j)).sum()
        assert j > 0 and iou > 0.5, (i, j, iou)
        matched.append(j)
    assert len(matched) > 60 and len(set(matched)) == len(matched)


def test_postprocess_edge_cases():
    z = np.zeros((32, 32), np.float32)
    assert hovernet_instances(z, np.zeros((2, 32, 32), np.float32)).max() == 0
    tiny = z.copy()
    tiny[3:5, 3:5] = 1  # 4 px < min_size
    assert hovernet_instances(tiny, np.zeros((2, 32, 32), np.float32)).max() == 0
    with pytest.raises(ValueError, match="expected"):
        hovernet_instances(z, np.zeros((32, 32), np.float32))
    assert HoverPostConfig().sobel_size == 21


# ----------------------------------------------------------------------------- losses
def test_hv_losses_zero_on_perfect_and_positive_otherwise():
    inst = torch.from_numpy(ellipses(64, 6, 2))[None]
    hv = hv_targets(inst)
    valid = torch.ones_like(inst, dtype=torch.bool)
    assert float(hv_mse_loss(hv, hv, valid)) == 0.0
    assert float(hv_msge_loss(hv, hv, inst > 0)) == 0.0
    assert float(hv_mse_loss(hv * 0, hv, valid)) > 0
    assert float(hv_msge_loss(hv * 0, hv, inst > 0)) > 0
    kh, kv = gradient_kernels(5)
    assert (
        kh[2, 3] == pytest.approx(1.0)
        and kh[2, 4] == pytest.approx(0.5)
        and kv[3, 2] == pytest.approx(1.0)
    )


def test_hovernet_loss_parts_and_ignore():
    torch.manual_seed(0)
    out = {
        "np": torch.randn(2, 2, 16, 16, requires_grad=True),
        "hv": torch.randn(2, 2, 16, 16, requires_grad=True),
    }
    inst = torch.from_numpy(np.stack([ellipses(16, 2, 0), ellipses(16, 2, 1)])).long()
    np_t = (inst > 0).long()
    np_t[:, :, -3:] = 255
    loss, logs = hovernet_loss(out, np_t, hv_targets(inst))
    loss.backward()
    assert set(logs) == {"np", "hv_mse", "hv_msge"} and out["hv"].grad is not None
    # ignored pixels get no HV gradient from the MSE term
    out2 = {"np": out["np"].detach(), "hv": out["hv"].detach().clone().requires_grad_(True)}
    hv_mse_loss(out2["hv"], hv_targets(inst), np_t != 255).backward()
    assert out2["hv"].grad[:, :, :, -3:].abs().sum() == 0


# ----------------------------------------------------------------------------- network and family
def test_network_shapes_and_family():
    fam = get_family("hovernet")
    assert fam.output == "instances" and fam.target_kind == "instance"
    model = fam.build_model({"widths": [8, 16, 32], "num_types": 3}).eval()
    x = torch.randn(2, 3, 32, 32)
    maps = model.infer(x)
    assert maps["np"].shape == (2, 2, 32, 32) and maps["hv"].shape == (2, 2, 32, 32)
    assert maps["logits"].shape == (2, 2, 32, 32) and maps["tp"].shape == (2, 3, 32, 32)
    torch.testing.assert_close(maps["np"].sum(1), torch.ones(2, 32, 32))
    assert model(x).shape == (2, 2, 32, 32) and model.features(x).shape == (2, 8, 32, 32)
    assert model.divisor == 4
    with pytest.raises(ValueError, match="num_classes=2"):
        fam.make_config({"num_classes": 3})
    paper = fam.build_model({"widths": [64, 128, 256, 512, 1024]})
    assert sum(p.numel() for p in paper.parameters()) > 40e6


def test_family_postprocess_from_maps():
    fam = get_family("hovernet")
    gt = ellipses(128, 10, 4)
    probs = np.stack([(gt == 0), (gt > 0)]).astype(np.float32)
    out = fam.postprocess(
        {"np": probs, "hv": hv_targets_numpy(gt), "logits": probs}, {"widths": [8, 16, 32]}
    )
    assert out["labels"].dtype == np.int32 and out["probabilities"].shape == (2, 128, 128)
    assert out["hv"].shape == (2, 128, 128)
    assert instance_scores(out["labels"], gt)["aji"] > 0.95


def _samples(n=3, size=96):
    from napari_dgseg.core.data.sample import Sample

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        lab = ellipses(size, 10, 20 + i)
        img = np.full((size, size, 3), 225, np.uint8)
        img[lab > 0] = (90, 40, 140)
        img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
        out.append(Sample(img, lab, f"s{i}", domain="a"))
    return out


@pytest.mark.slow
def test_training_loss_learns_and_cqg_runs():
    from napari_dgseg.core.bundle import DEFAULT_INPUT_SPEC
    from napari_dgseg.core.train.data import CropSampler

    torch.manual_seed(0)
    fam = get_family("hovernet")
    model = fam.build_model({"widths": [8, 16, 32]}).train()
    sampler = CropSampler([("a", _samples())], size=64, num_classes=2, instance=True, seed=0)
    batch = sampler.batch(4)
    state = {
        "iteration": 0,
        "iters": 30,
        "generator": torch.Generator().manual_seed(0),
        "domains": 1,
        "cqg": False,
        "input_spec": dict(DEFAULT_INPUT_SPEC),
    }
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    first = None
    for _ in range(25):
        loss, logs = fam.training_loss(model, batch, state)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else float(loss.detach())
    assert float(loss.detach()) < 0.7 * first and {"np", "hv_mse", "hv_msge"} <= set(logs)
    state["cqg"] = True
    loss, logs = fam.training_loss(model, batch, state)
    loss.backward()
    assert {"seg1", "seg2", "consistency", "hv_mse"} <= set(logs) and torch.isfinite(loss)


@pytest.mark.slow
def test_train_api_gives_instance_bundle(tmp_path):
    from napari_dgseg import load_bundle
    from napari_dgseg.core.train.source import train

    b = train(
        "hovernet",
        [_samples()],
        out=tmp_path / "h.dgseg",
        iters=3,
        size=64,
        batch=2,
        config={"widths": [8, 16, 32]},
        seed=0,
    )
    loaded = load_bundle(tmp_path / "h.dgseg")
    assert loaded.family_name == "hovernet" and loaded.extra("replay") is not None
    pred = loaded.predict(_samples(1)[0].image, device="cpu")
    assert pred.labels.dtype == np.int32 and pred.labels.shape == (96, 96)
    assert pred.probabilities.shape == (2, 96, 96) and pred.extras["hv"].shape == (2, 96, 96)
    assert b.config["widths"] == [8, 16, 32]
