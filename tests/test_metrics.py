"""Metrics against hand-computed values and against a slow, literal reference implementation.

The hand-made cases are tiny maps whose expected values are worked out in the comments. The
slow reference (``_ref_*`` below) follows the reference definitions of ``shared/methods.md``
section 4 literally: contiguous ids first, one full-image boolean mask per instance, dense
pairwise matrices, dense Hungarian matching. The fast implementation must equal it to 1e-6 on
random instance maps.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from skimage.draw import ellipse

from napari_dgseg.core.errors import InputError
from napari_dgseg.core.metrics import dice, instance_scores, remap_label, semantic_scores

KEYS = ("dice", "aji", "aji_plus", "dq", "sq", "pq")


# ------------------------------------------------------------------------------------------
# slow reference implementation (per-instance masks, as in the reference definitions)
# ------------------------------------------------------------------------------------------


def _ref_remap(lab: np.ndarray) -> np.ndarray:
    ids = [i for i in np.unique(lab) if i != 0]
    out = np.zeros(lab.shape, np.int32)
    for k, i in enumerate(ids):
        out[lab == i] = k + 1
    return out


def _ref_pairwise(true: np.ndarray, pred: np.ndarray):
    t_ids = list(np.unique(true))[1:] if true.any() else []
    p_ids = list(np.unique(pred))[1:] if pred.any() else []
    t_masks = {t: (true == t).astype(np.uint8) for t in t_ids}
    p_masks = {p: (pred == p).astype(np.uint8) for p in p_ids}
    inter = np.zeros((len(t_ids), len(p_ids)))
    union = np.zeros((len(t_ids), len(p_ids)))
    for t in t_ids:
        for p in np.unique(pred[t_masks[t] > 0]):
            if p == 0:
                continue
            total = (t_masks[t] + p_masks[p]).sum()
            i = (t_masks[t] * p_masks[p]).sum()
            inter[t - 1, p - 1] = i
            union[t - 1, p - 1] = total - i
    return t_ids, p_ids, t_masks, p_masks, inter, union


def _ref_aji(true, pred, plus: bool) -> float:
    t_ids, p_ids, t_masks, p_masks, inter, union = _ref_pairwise(true, pred)
    iou = inter / (union + 1.0e-6)
    if plus:
        rows, cols = linear_sum_assignment(-iou)
        keep = iou[rows, cols] > 0.0
        rows, cols = rows[keep], cols[keep]
    else:
        cols = np.argmax(iou, axis=1)
        best = np.max(iou, axis=1)
        rows = np.nonzero(best > 0.0)[0]
        cols = cols[rows]
    o_inter = inter[rows, cols].sum()
    o_union = union[rows, cols].sum()
    paired_t = set((rows + 1).tolist())
    paired_p = set((cols + 1).tolist())
    for t in t_ids:
        if t not in paired_t:
            o_union += t_masks[t].sum()
    for p in p_ids:
        if p not in paired_p:
            o_union += p_masks[p].sum()
    return o_inter / o_union


def _ref_pq(true, pred):
    t_ids, p_ids, _, _, inter, union = _ref_pairwise(true, pred)
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    iou[iou <= 0.5] = 0.0
    rows, cols = np.nonzero(iou)
    tp = len(rows)
    fp = len(p_ids) - len(set(cols.tolist()))
    fn = len(t_ids) - len(set(rows.tolist()))
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = iou[rows, cols].sum() / tp if tp else 0.0
    return dq, sq, dq * sq


def _ref_scores(gt, pred) -> dict:
    true = _ref_remap(gt)
    pr = _ref_remap(pred)
    t = (true > 0).astype(np.uint8)
    p = (pr > 0).astype(np.uint8)
    d = 2.0 * np.sum(t * p) / np.sum(t + p)
    dq, sq, pq = _ref_pq(true, pr)
    return {
        "dice": d,
        "aji": _ref_aji(true, pr, plus=False),
        "aji_plus": _ref_aji(true, pr, plus=True),
        "dq": dq,
        "sq": sq,
        "pq": pq,
    }


def _random_instances(rng, n, shape=(96, 96), id_pool=None) -> np.ndarray:
    lab = np.zeros(shape, np.int64)
    ids = rng.choice(id_pool, size=n, replace=False) if id_pool is not None else range(1, n + 1)
    for i in ids:
        r, c = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        rr, cc = ellipse(
            r, c, rng.integers(3, 9), rng.integers(3, 9), shape=shape,
            rotation=rng.uniform(0, np.pi),
        )  # fmt: skip
        lab[rr, cc] = i
    return lab


def _assert_scores(got: dict, want: dict) -> None:
    for k, v in want.items():
        assert got[k] == pytest.approx(v, abs=1e-6), (k, got[k], v)


# ------------------------------------------------------------------------------------------
# hand-made cases
# ------------------------------------------------------------------------------------------


def _row(*segments: tuple[int, int, int], width: int = 12) -> np.ndarray:
    """A (2, width) map; each segment (start, stop, id) fills both rows of columns start:stop."""
    out = np.zeros((2, width), np.int32)
    for a, b, i in segments:
        out[:, a:b] = i
    return out


def test_perfect_match_all_ones_with_noncontiguous_ids():
    gt = _row((0, 3, 5), (4, 7, 9), (8, 12, 200))
    pred = _row((0, 3, 1), (4, 7, 2), (8, 12, 3)).astype(np.uint16)
    s = instance_scores(pred, gt)
    _assert_scores(s, dict.fromkeys(KEYS, 1.0))
    assert (s["tp"], s["fp"], s["fn"]) == (3, 0, 0)


def test_merge():
    # GT A = cols 0-3 (8 px), B = cols 4-7 (8 px); one prediction covers both (16 px).
    gt = _row((0, 4, 1), (4, 8, 2))
    pred = _row((0, 8, 7))
    # AJI: both GT pick the merged prediction (IoU 0.5 each): (8 + 8) / (16 + 16) = 0.5.
    # AJI+: unique pairing keeps one pair (8 / 16) and adds the other GT (8): 8 / 24 = 1/3.
    # PQ: IoU = 0.5 is not > 0.5 -> TP 0, FP 1, FN 2 -> 0.
    want = {"dice": 1.0, "aji": 0.5, "aji_plus": 1 / 3, "dq": 0.0, "sq": 0.0, "pq": 0.0}
    _assert_scores(instance_scores(pred, gt), want)
    _assert_scores(_ref_scores(gt, pred), want)


def test_split():
    # GT = cols 0-7 (16 px); prediction split into cols 0-4 (10 px, id 3) and 5-7 (6 px, id 7).
    gt = _row((0, 8, 1))
    pred = _row((0, 5, 3), (5, 8, 7))
    # AJI = AJI+ = 10 / (16 + 6); PQ: IoU 10/16 > 0.5 -> TP 1, FP 1: DQ = 1 / 1.5.
    want = {
        "dice": 1.0,
        "aji": 10 / 22,
        "aji_plus": 10 / 22,
        "dq": 2 / 3,
        "sq": 10 / 16,
        "pq": 2 / 3 * 10 / 16,
    }
    _assert_scores(instance_scores(pred, gt), want)
    _assert_scores(_ref_scores(gt, pred), want)


def test_miss_and_false_positive():
    # GT A (cols 0-1, 4 px) found exactly, GT B (cols 4-5) missed, FP at cols 9-9 (2 px).
    gt = _row((0, 2, 10), (4, 6, 20))
    pred = _row((0, 2, 4), (9, 10, 8))
    # Dice 2*4/(6+8); AJI = 4 / (4 + 4 + 2); PQ: TP 1, FP 1, FN 1 -> DQ 0.5, SQ 1.
    want = {"dice": 8 / 14, "aji": 0.4, "aji_plus": 0.4, "dq": 0.5, "sq": 1.0, "pq": 0.5}
    s = instance_scores(pred, gt)
    _assert_scores(s, want)
    assert (s["tp"], s["fp"], s["fn"]) == (1, 1, 1)
    _assert_scores(_ref_scores(gt, pred), want)


def test_aji_reuses_prediction_but_aji_plus_does_not():
    # GT A = cols 0-3 (8 px), GT B = cols 4-5 (4 px); pred P = cols 1-5 (10 px), Q = col 0 (2 px).
    gt = _row((0, 4, 1), (4, 6, 2))
    pred = _row((1, 6, 5), (0, 1, 6))
    # IoU(A,P) = 6/12, IoU(A,Q) = 2/8, IoU(B,P) = 4/10.
    # AJI: A->P (6/12), B->P (4/10), Q unpaired (+2): (6+4) / (12+10+2) = 10/24.
    # AJI+: best unique total: A-P + nothing for B (0.5) vs A-Q + B-P (0.25 + 0.4 = 0.65)
    #        -> A-Q, B-P: (2 + 4) / (8 + 10) = 6/18.
    # PQ: no IoU > 0.5 -> 0.
    want = {"dice": 1.0, "aji": 10 / 24, "aji_plus": 6 / 18, "dq": 0.0, "sq": 0.0, "pq": 0.0}
    _assert_scores(instance_scores(pred, gt), want)
    _assert_scores(_ref_scores(gt, pred), want)


def test_aji_picks_highest_iou_not_largest_overlap():
    gt = np.zeros((2, 8), np.int32)
    gt[0, 0:6] = 1  # 6 px
    pred = np.zeros((2, 8), np.int32)
    pred[0, 0:2] = 1  # inter 2, union 6 -> IoU 1/3
    pred[0, 2:6] = 2  # inter 4 ...
    pred[1, 0:8] = 2  # ... area 12, union 6 + 12 - 4 = 14 -> IoU 4/14
    # 1/3 > 4/14: the GT takes pred 1; pred 2 is unpaired: 2 / (6 + 12)
    s = instance_scores(pred, gt)
    assert s["aji"] == pytest.approx(2 / 18, abs=1e-12)
    assert _ref_aji(_ref_remap(gt), _ref_remap(pred), False) == pytest.approx(2 / 18, abs=1e-12)


def test_exact_tie_larger_union_wins_as_in_reference():
    gt = np.zeros((2, 10), np.int32)
    gt[0, 0:4] = 1  # 4 px
    pred = np.zeros((2, 10), np.int32)
    pred[0, 0:1] = 1  # inter 1, union 4 -> 0.25
    pred[0, 1:3] = 2  # inter 2 ...
    pred[1, 0:4] = 2  # ... area 6, union 4 + 6 - 2 = 8 -> 0.25 (exact tie)
    s = instance_scores(pred, gt)
    ref = _ref_aji(_ref_remap(gt), _ref_remap(pred), False)
    # 2 / (8 + 1 unpaired pred 1) ; the tie goes to pred 2 because 2/(8+eps) > 1/(4+eps)
    assert ref == pytest.approx(2 / 9, abs=1e-12)
    assert s["aji"] == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize(
    ("pred_empty", "gt_empty", "value"),
    [(True, True, 1.0), (True, False, 0.0), (False, True, 0.0)],
)
def test_empty_conventions(pred_empty, gt_empty, value):
    full = _row((0, 3, 4), (5, 9, 6))
    pred = np.zeros_like(full) if pred_empty else full
    gt = np.zeros_like(full) if gt_empty else full
    s = instance_scores(pred, gt)
    _assert_scores(s, dict.fromkeys(KEYS, value))
    assert not any(np.isnan(v) for v in s.values())
    assert dice(pred, gt) == value


def test_no_overlap_at_all():
    gt = _row((0, 2, 1))
    pred = _row((5, 7, 1))
    s = instance_scores(pred, gt)
    _assert_scores(s, dict.fromkeys(KEYS, 0.0))
    assert (s["tp"], s["fp"], s["fn"]) == (0, 1, 1)


def test_bool_and_integral_float_inputs():
    gt = _row((0, 3, 1), (5, 8, 2))
    s_bool = instance_scores(gt > 0, gt)  # one merged instance from a bool map
    s_float = instance_scores(gt.astype(np.float32), gt)
    _assert_scores(s_float, dict.fromkeys(KEYS, 1.0))
    assert s_bool["n_pred"] == 1 and s_bool["dice"] == 1.0


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (np.full((2, 12), 0.5, np.float32), "fractional"),
        (np.full((2, 12), -1, np.int32), "negative"),
        (np.zeros((3, 12), np.int32), r"shape \(3, 12\).*shape \(2, 12\)"),
        (np.full((2, 12), np.nan), "NaN"),
        (np.full((2, 12), "a"), "dtype"),
    ],
)
def test_bad_inputs_raise_input_error(bad, match):
    gt = _row((0, 3, 1))
    with pytest.raises(InputError, match=match):
        instance_scores(bad, gt)


def test_remap_label():
    lab = np.array([[0, 7, 7], [300, 0, 2]], np.uint16)
    out = remap_label(lab)
    np.testing.assert_array_equal(out, [[0, 2, 2], [3, 0, 1]])
    assert out.dtype == np.int32
    # very large ids go through the sorting path and give the same result
    big = lab.astype(np.int64) * (1 << 30)
    np.testing.assert_array_equal(remap_label(big), out)
    # no background at all
    np.testing.assert_array_equal(remap_label(np.array([[5, 9]])), [[1, 2]])
    np.testing.assert_array_equal(remap_label(np.array([[5, 9]]) * (1 << 40)), [[1, 2]])
    assert remap_label(np.zeros((0, 3), np.int32)).shape == (0, 3)


@pytest.mark.parametrize("seed", range(8))
def test_fast_equals_slow_reference_on_random_maps(seed):
    rng = np.random.default_rng(seed)
    gt = _random_instances(rng, 25, id_pool=np.arange(1, 10_000))
    if seed % 2:  # a perturbed copy: shifted, some instances dropped, some split
        pred = np.roll(gt, rng.integers(1, 4), axis=1)
        for i in rng.choice(np.unique(pred)[1:], 4, replace=False):
            pred[pred == i] = 0
        pred[:, ::9] = np.where(pred[:, ::9] > 0, pred[:, ::9] + 50_000, 0)
    else:  # independent random map
        pred = _random_instances(rng, 30)
    _assert_scores(instance_scores(pred, gt), _ref_scores(gt, pred))


def _dense_scores(gt: np.ndarray, pred: np.ndarray) -> dict:
    """Reference scores from one dense contingency matrix and one dense Hungarian problem.

    Independent of the fast code's sparse table and per-component assignment; fast enough for
    a 1024 x 1024 map with hundreds of instances (no per-instance masks).
    """
    from scipy import sparse

    g, p = _ref_remap(gt), _ref_remap(pred)
    n_g, n_p = int(g.max()), int(p.max())
    table = sparse.coo_matrix(
        (np.ones(g.size), (g.ravel(), p.ravel())), shape=(n_g + 1, n_p + 1)
    ).toarray()
    area_g, area_p = table.sum(1), table.sum(0)
    inter = table[1:, 1:]
    union = area_g[1:, None] + area_p[None, 1:] - inter
    iou_sel = inter / (union + 1.0e-6)

    def aggregate(rows, cols):
        rest_g = np.setdiff1d(np.arange(n_g), rows)
        rest_p = np.setdiff1d(np.arange(n_p), cols)
        total = union[rows, cols].sum() + area_g[1:][rest_g].sum() + area_p[1:][rest_p].sum()
        return inter[rows, cols].sum() / total

    rows = np.nonzero(iou_sel.max(1) > 0)[0]
    aji = aggregate(rows, iou_sel.argmax(1)[rows])
    r, c = linear_sum_assignment(-iou_sel)
    keep = inter[r, c] > 0
    aji_plus = aggregate(r[keep], c[keep])
    iou = inter / union
    tp = int((iou > 0.5).sum())
    dq = tp / (tp + 0.5 * (n_p - tp) + 0.5 * (n_g - tp))
    sq = iou[iou > 0.5].sum() / tp if tp else 0.0
    d = 2.0 * table[1:, 1:].sum() / (area_g[1:].sum() + area_p[1:].sum())
    return {"dice": d, "aji": aji, "aji_plus": aji_plus, "dq": dq, "sq": sq, "pq": dq * sq}


def test_instance_scores_large_map_equals_dense_reference():
    """The 1024 x 1024, ~500-instance case of benchmarks/metrics_speed.py, checked for values.

    (Its timing is measured by the benchmark, not asserted here.)
    """
    rng = np.random.default_rng(0)
    gt = _random_instances(rng, 500, shape=(1024, 1024))
    pred = np.roll(gt, 2, axis=0)
    pred[:, ::97] = np.where(pred[:, ::97] > 0, pred[:, ::97] + 10_000, 0)  # some splits
    got = instance_scores(pred, gt)
    _assert_scores(got, _dense_scores(gt, pred))
    assert got["n_gt"] == len(np.unique(gt)) - 1 and got["n_pred"] == len(np.unique(pred)) - 1


# ------------------------------------------------------------------------------------------
# semantic scores
# ------------------------------------------------------------------------------------------


def test_semantic_hand_computed_square_shift():
    gt = np.zeros((7, 7), np.int32)
    gt[0:3, 0:3] = 1
    pred = np.zeros((7, 7), np.int32)
    pred[0:3, 1:4] = 1
    s = semantic_scores(pred, gt)
    # overlap 6 of 9 + 9 -> Dice 12/18, IoU 6/12; boundary distances: 4 of 8 pixels at 1 px in
    # each direction -> (4 + 4) / 16 = 0.5
    assert s["dice"] == {"1": pytest.approx(2 / 3)}
    assert s["iou"] == {"1": pytest.approx(0.5)}
    assert s["asd"] == {"1": pytest.approx(0.5)}
    assert s["mean_dice"] == pytest.approx(2 / 3)
    # spacing scales distances
    assert semantic_scores(pred, gt, spacing=2.0)["asd"]["1"] == pytest.approx(1.0)


def test_semantic_single_pixels_distance():
    gt = np.zeros((1, 6), np.uint8)
    pred = np.zeros((1, 6), np.uint8)
    gt[0, 0] = 1
    pred[0, 4] = 1
    s = semantic_scores(pred, gt)
    assert s["asd"]["1"] == pytest.approx(4.0)
    assert s["dice"]["1"] == 0.0 and s["iou"]["1"] == 0.0


def test_semantic_multiclass_absent_classes_and_mask():
    gt = np.zeros((4, 5), np.int32)
    gt[0, :] = 1
    pred = gt.copy()
    pred[3, 4] = 3  # class 3 only in the prediction
    s = semantic_scores(pred, gt, num_classes=4)
    assert set(s["dice"]) == {"1", "2", "3"}
    assert s["dice"]["1"] == 1.0 and s["asd"]["1"] == 0.0
    assert (s["dice"]["2"], s["iou"]["2"], s["asd"]["2"]) == (1.0, 1.0, 0.0)  # absent in both
    assert (s["dice"]["3"], s["iou"]["3"]) == (0.0, 0.0)
    assert s["asd"]["3"] == pytest.approx(np.hypot(4, 5))  # diagonal penalty
    assert s["mean_dice"] == pytest.approx(2 / 3)
    assert s["mean_asd"] == pytest.approx(np.hypot(4, 5) / 3)
    # the same pixel outside the field of view does not count
    fov = np.ones((4, 5), bool)
    fov[3, 4] = False
    s2 = semantic_scores(pred, gt, num_classes=4, mask=fov)
    assert s2["mean_dice"] == 1.0 and s2["mean_asd"] == 0.0


def test_semantic_partial_overlap_two_classes():
    gt = np.array([[1, 1, 2, 2, 0, 0]])
    pred = np.array([[1, 2, 2, 2, 2, 0]])
    s = semantic_scores(pred, gt)
    # class 1: inter 1, |G| 2, |P| 1 -> Dice 2/3, IoU 1/2; class 2: inter 2, |G| 2, |P| 4 -> 2/3, 1/2
    assert s["dice"] == {"1": pytest.approx(2 / 3), "2": pytest.approx(2 / 3)}
    assert s["iou"] == {"1": pytest.approx(0.5), "2": pytest.approx(0.5)}


def test_semantic_errors():
    gt = np.zeros((3, 3), np.int32)
    gt[0, 0] = 3
    with pytest.raises(InputError, match="--num-classes 4"):
        semantic_scores(gt, gt, num_classes=2)
    with pytest.raises(InputError, match="mask has shape"):
        semantic_scores(gt, gt, mask=np.ones((2, 2), bool))
    s = semantic_scores(np.zeros((3, 3), int), np.zeros((3, 3), int))
    assert s["mean_dice"] == 1.0 and s["mean_asd"] == 0.0


def test_semantic_asd_matches_brute_force():
    rng = np.random.default_rng(3)
    gt = (_random_instances(rng, 6, shape=(40, 40)) > 0).astype(np.int32)
    pred = (_random_instances(rng, 6, shape=(40, 40)) > 0).astype(np.int32)
    from scipy import ndimage as ndi

    def border(x):
        x = x.astype(bool)
        inner = ndi.binary_erosion(x, structure=ndi.generate_binary_structure(2, 1))
        return np.argwhere(x & ~inner)

    a, b = border(pred), border(gt)
    d = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    want = (d.min(1).sum() + d.min(0).sum()) / (len(a) + len(b))
    assert semantic_scores(pred, gt)["asd"]["1"] == pytest.approx(want, abs=1e-9)
