"""Hand-computed metric cases that separate competing definitions.

Every expected value is a small exact fraction worked out in the comments, on maps small enough
to check by eye. Each case is chosen so that a plausible wrong implementation gives a different
number:

* AJI+ must pick the one-to-one pairing with the largest total IoU; a pairing that maximises the
  total intersection (or a greedy pairing) gives another value here.
* AJI must count a prediction shared by two GT instances in both unions (the "over-counting"
  that made Graham et al. 2019, "HoVer-Net: Simultaneous segmentation and classification of
  nuclei in multi-tissue histology images", introduce AJI+).
* PQ (Kirillov et al. 2019, "Panoptic Segmentation") matches need IoU strictly above 0.5; a pair
  at exactly 0.5 is not a match.
* Empty maps follow the conventions of ``docs/metrics.md``.
* ASD is compared with a brute-force all-pairs distance computation whose boundary definition is
  written here independently of ``scipy.ndimage.binary_erosion``.
"""

from __future__ import annotations

from fractions import Fraction as F

import numpy as np
import pytest

from napari_dgseg.core.errors import InputError
from napari_dgseg.core.metrics import (
    check_label_array,
    dice,
    instance_scores,
    remap_label,
    semantic_scores,
)

KEYS = ("dice", "aji", "aji_plus", "dq", "sq", "pq")


def _strip(*segments: tuple[int, int, int], width: int = 12, rows: int = 2) -> np.ndarray:
    """A ``(rows, width)`` map; each ``(start, stop, id)`` fills columns ``start:stop``."""
    out = np.zeros((rows, width), np.int32)
    for a, b, i in segments:
        out[:, a:b] = i
    return out


def _check(got: dict, want: dict) -> None:
    # Fractions of integers below 100 are computed by the code as one float division (or a
    # product of two for PQ): 1e-12 is far above that rounding and far below any difference
    # between the competing definitions tested here (all >= 1e-2).
    for key, value in want.items():
        assert got[key] == pytest.approx(float(value), abs=1e-12), (key, got[key], value)


# ------------------------------------------------------------------------------------- AJI+


@pytest.mark.parametrize("small_id", [1, 2])  # the better partner first or second in id order
def test_aji_plus_single_gt_takes_best_iou_not_largest_intersection(small_id):
    """One GT, two candidates: the larger overlap has the smaller IoU."""
    big_id = 3 - small_id
    gt = np.zeros((4, 10), np.int32)
    gt[0, :] = 1  # G: 10 px
    pred = np.zeros((4, 10), np.int32)
    pred[0, 0:4] = small_id  # P1: 4 px inside G -> inter 4, union 10, IoU 0.4
    pred[0, 4:] = big_id  # P2: 6 px in G ...
    pred[1:, :] = big_id  # ... + 30 px outside: area 36, inter 6, union 40, IoU 0.15
    # best IoU: G-P1, P2 left over (+36): 4 / (10 + 36) = 2/23.
    # (maximising intersection would pair G-P2 and leave P1 over: 6 / (40 + 4) = 3/22.)
    # Dice: |P| = 40, |G| = 10, overlap 10 -> 20/50. PQ: no IoU > 0.5.
    want = {"dice": F(2, 5), "aji": F(2, 23), "aji_plus": F(2, 23), "dq": 0, "sq": 0, "pq": 0}
    s = instance_scores(pred, gt)
    _check(s, want)
    assert (s["tp"], s["fp"], s["fn"], s["n_pred"], s["n_gt"]) == (0, 2, 1, 2, 1)


def test_aji_plus_pairing_maximises_total_iou_not_total_intersection():
    """Two GT, two predictions: the max-IoU pairing and the max-intersection pairing differ."""
    # columns: 0 1 2 3 4 5 6 7 8 9 10 11 (2 rows each)
    # GT      : . A A A A A A A A B B  .     A = cols 1-8 (16 px), B = cols 9-10 (4 px)
    # pred    : . . . . P Q Q Q Q Q Q  .     P = col 4 (2 px),     Q = cols 5-10 (12 px)
    gt = _strip((1, 9, 1), (9, 11, 2))
    pred = _strip((4, 5, 1), (5, 11, 2))
    # inter/union: A-P 2/16 (1/8), A-Q 8/20 (2/5), B-Q 4/12 (1/3), B-P none.
    # one-to-one pairings: {A-P, B-Q}: IoU 1/8 + 1/3 = 11/24, intersection 2 + 4 = 6
    #                      {A-Q}     : IoU 2/5 = 9.6/24,    intersection 8
    # AJI+ (max total IoU) = {A-P, B-Q}: (2 + 4) / (16 + 12) = 3/14, nothing unpaired.
    # (max total intersection = {A-Q}: 8 / (20 + B 4 + P 2) = 4/13 -- wrong.)
    # AJI: A -> Q (2/5 > 1/8), B -> Q: (8 + 4) / (20 + 12 + P 2 never chosen) = 6/17.
    # Dice: |P| = 14 all inside GT (20): 28/34. PQ: no IoU > 0.5.
    want = {"dice": F(14, 17), "aji": F(6, 17), "aji_plus": F(3, 14), "dq": 0, "sq": 0, "pq": 0}
    _check(instance_scores(pred, gt), want)
    # symmetric roles: swapping pred and gt keeps the same pairs, so the same AJI+
    assert instance_scores(gt, pred)["aji_plus"] == pytest.approx(3 / 14, abs=1e-12)


def test_two_clean_pairs_one_above_and_one_below_pq_threshold():
    """Two disjoint pairs: both count for AJI/AJI+, only the one with IoU > 1/2 for PQ."""
    # GT A = cols 0-5 (12 px), B = cols 6-7 (4 px); P = cols 0-4 (10 px), Q = cols 5-9 (10 px).
    gt = _strip((0, 6, 1), (6, 8, 2))
    pred = _strip((0, 5, 1), (5, 10, 2))
    # A-P 10/12, A-Q 2/20, B-Q 4/10 (B-P none).
    # AJI+: {A-P, B-Q} (total IoU 5/6 + 2/5 beats A-Q alone): (10 + 4) / (12 + 10) = 7/11.
    # PQ: A-P IoU 5/6 > 0.5 -> TP 1; B-Q 0.4 no -> FP 1 (Q), FN 1 (B): DQ 1/2, SQ 5/6.
    want = {"aji_plus": F(7, 11), "dq": F(1, 2), "sq": F(5, 6), "pq": F(5, 12)}
    # AJI: A -> P, B -> Q, same pairs: 7/11.
    want["aji"] = F(7, 11)
    _check(instance_scores(pred, gt), want)


def test_aji_plus_disconnected_components_and_single_pairs():
    """Several independent overlap groups: one-pair groups and a contested group together."""
    left_gt = _strip((1, 9, 1), (9, 11, 2))  # the contested case above (AJI+ 3/14 alone)
    left_pred = _strip((4, 5, 1), (5, 11, 2))
    right_gt = _strip((0, 4, 1), (6, 8, 2), width=10)  # C = 8 px, D = 4 px
    right_pred = _strip((0, 4, 1), (6, 9, 2), width=10)  # exact C (8 px); E = 6 px, 4 on D
    gt = np.concatenate([left_gt, np.where(right_gt > 0, right_gt + 10, 0)], axis=1)
    pred = np.concatenate([left_pred, np.where(right_pred > 0, right_pred + 10, 0)], axis=1)
    # right part: C-C' inter 8 union 8; D-E inter 4 union 6. left part: inter 6, union 28.
    # AJI+ = (6 + 8 + 4) / (28 + 8 + 6) = 18/42 = 3/7.
    # AJI: left 12 / 34 (as above), right the same pairs: (12 + 12) / (34 + 14) = 1/2.
    # PQ: C-C' (1) and D-E (2/3) match; left nothing: TP 2, FP 2 (P, Q), FN 2 (A, B)
    #     -> DQ 2 / (2 + 1 + 1) = 1/2, SQ (1 + 2/3) / 2 = 5/6, PQ 5/12.
    want = {"aji": F(1, 2), "aji_plus": F(3, 7), "dq": F(1, 2), "sq": F(5, 6), "pq": F(5, 12)}
    s = instance_scores(pred, gt)
    _check(s, want)
    assert (s["tp"], s["fp"], s["fn"]) == (2, 2, 2)


# -------------------------------------------------------------------------------------- AJI


def test_aji_counts_a_shared_prediction_in_every_union():
    """The classic AJI over-counting: one prediction chosen by two GT instances."""
    # GT A = cols 0-2 (6 px), B = cols 3-4 (4 px); one prediction P = cols 0-5 (12 px).
    gt = _strip((0, 3, 1), (3, 5, 2))
    pred = _strip((0, 6, 9))
    # IoU(A, P) = 6/12 = 1/2, IoU(B, P) = 4/12 = 1/3; both GT choose P.
    # AJI = (6 + 4) / (12 + 12) = 5/12: P's 12 px enter the union twice (the true pixel union
    # is 12, so a "pixel union" AJI would be 10/12 = 5/6).
    # AJI+: P can be used once; A-P has the larger IoU: 6 / (12 + B 4) = 3/8.
    # PQ: IoU(A, P) is exactly 1/2, not > 1/2 -> no match.
    # Dice: |P| = 12, |G| = 10, overlap 10 -> 20/22.
    want = {"dice": F(10, 11), "aji": F(5, 12), "aji_plus": F(3, 8), "dq": 0, "sq": 0, "pq": 0}
    s = instance_scores(pred, gt)
    _check(s, want)
    assert (s["tp"], s["fp"], s["fn"]) == (0, 1, 2)


def test_aji_adds_unmatched_gt_and_never_chosen_predictions():
    # GT A = cols 0-3 (8 px) found by P = cols 0-2 (6 px); GT B = cols 6-7 (4 px) untouched;
    # prediction R = cols 10-11 (4 px) touches nothing; prediction S = col 3 (2 px) overlaps A
    # but A prefers P (IoU 6/8 vs 2/8) so S is never chosen.
    gt = _strip((0, 4, 1), (6, 8, 2))
    pred = _strip((0, 3, 1), (3, 4, 2), (10, 12, 3))
    # AJI = AJI+ = 6 / (8 + B 4 + R 4 + S 2) = 6/18 = 1/3.
    # PQ: A-P 3/4 -> TP 1; FP 2 (S, R); FN 1 (B): DQ 1 / (1 + 1 + 1/2) = 2/5, SQ 3/4.
    # Dice: |P| = 12, |G| = 12, overlap 8 -> 16/24.
    want = {"dice": F(2, 3), "aji": F(1, 3), "aji_plus": F(1, 3),
            "dq": F(2, 5), "sq": F(3, 4), "pq": F(3, 10)}  # fmt: skip
    s = instance_scores(pred, gt)
    _check(s, want)
    assert (s["tp"], s["fp"], s["fn"], s["n_pred"], s["n_gt"]) == (1, 2, 1, 3, 2)


# --------------------------------------------------------------------------------------- PQ


def test_pq_iou_exactly_one_half_is_not_a_match():
    gt = _strip((0, 4, 1))  # 8 px
    pred = _strip((0, 2, 1))  # 4 px inside: IoU 4/8 = 1/2 exactly
    s = instance_scores(pred, gt)
    _check(s, {"dq": 0, "sq": 0, "pq": 0, "aji": F(1, 2), "aji_plus": F(1, 2)})
    assert (s["tp"], s["fp"], s["fn"]) == (0, 1, 1)


def test_pq_iou_just_above_one_half_is_a_match():
    gt = np.zeros((1, 201), np.int32)
    gt[0, :] = 1  # 201 px
    pred = np.zeros((1, 201), np.int32)
    pred[0, :101] = 1  # IoU 101/201 > 1/2 by 1/402
    s = instance_scores(pred, gt)
    _check(s, {"dq": 1, "sq": F(101, 201), "pq": F(101, 201)})
    assert (s["tp"], s["fp"], s["fn"]) == (1, 0, 0)


def test_pq_sq_is_mean_iou_of_matches_and_dq_counts_halves():
    # three GT, four predictions:
    #   A = cols 0-3 (8 px) vs P = cols 0-3: IoU 1
    #   B = cols 5-9 (10 px) vs Q = cols 5-8 (8 px): IoU 8/10 = 4/5
    #   C = cols 11-14 (8 px) vs R = cols 11-12 (4 px): IoU 1/2, not a match
    #   S = cols 16-17 (4 px): nothing
    gt = _strip((0, 4, 1), (5, 10, 2), (11, 15, 3), width=18)
    pred = _strip((0, 4, 4), (5, 9, 3), (11, 13, 2), (16, 18, 1), width=18)
    # TP 2, FP 2 (R, S), FN 1 (C): DQ = 2 / (2 + 1 + 1/2) = 4/7; SQ = (1 + 4/5) / 2 = 9/10.
    want = {"dq": F(4, 7), "sq": F(9, 10), "pq": F(18, 35)}
    s = instance_scores(pred, gt)
    _check(s, want)
    assert (s["tp"], s["fp"], s["fn"], s["n_pred"], s["n_gt"]) == (2, 2, 1, 4, 3)
    # AJI: A-P 8/8, B-Q 8/10, C-R 4/8, S unpaired 4: 20 / (8 + 10 + 8 + 4) = 2/3 (AJI+ same)
    _check(s, {"aji": F(2, 3), "aji_plus": F(2, 3)})


# ------------------------------------------------------------------------- empty maps, dice


@pytest.mark.parametrize(("pred_empty", "gt_empty"), [(True, True), (True, False), (False, True)])
def test_instance_empty_map_conventions(pred_empty, gt_empty):
    full = _strip((0, 3, 4), (5, 9, 6))
    pred = np.zeros_like(full) if pred_empty else full
    gt = np.zeros_like(full) if gt_empty else full
    s = instance_scores(pred, gt)
    value = 1.0 if (pred_empty and gt_empty) else 0.0  # docs/metrics.md, "Conventions"
    for key in KEYS:
        assert s[key] == value, key
    assert (s["n_pred"], s["n_gt"]) == (0 if pred_empty else 2, 0 if gt_empty else 2)
    assert (s["tp"], s["fp"], s["fn"]) == (0, s["n_pred"], s["n_gt"])


def test_dice_hand_values_and_empty():
    a = _strip((0, 3, 1), (3, 5, 7))  # 10 px foreground
    b = _strip((2, 8, 4))  # 12 px, 6 shared (cols 2-4)
    assert dice(a, b) == pytest.approx(12 / 22, abs=1e-15)
    assert dice(a, a) == 1.0
    assert dice(np.zeros((3, 3), int), np.zeros((3, 3), int)) == 1.0
    assert dice(a, np.zeros_like(a)) == 0.0
    assert dice(a > 0, a.astype(np.float64)) == 1.0
    with pytest.raises(InputError, match="shape"):
        dice(a, a[:1])


def test_empty_image_of_zero_pixels():
    e = np.zeros((0, 4), np.int32)
    s = instance_scores(e, e)
    assert all(s[k] == 1.0 for k in KEYS) and s["n_pred"] == 0


# --------------------------------------------------------------------------------- semantic


def _semantic_absent_case(spacing):
    gt = np.zeros((3, 4), np.int32)
    gt[0, 0:2] = 1
    pred = np.zeros((3, 4), np.int32)
    pred[0, 0:2] = 1
    pred[2, 3] = 2  # class 2 only in the prediction
    gt[1, 1] = 3  # class 3 only in the ground truth
    return semantic_scores(pred, gt, num_classes=5, spacing=spacing)


@pytest.mark.parametrize("spacing", [1.0, (2.0, 0.5)])
def test_semantic_empty_class_conventions(spacing):
    s = _semantic_absent_case(spacing)
    sy, sx = (spacing, spacing) if np.ndim(spacing) == 0 else spacing
    diag = np.hypot(3 * sy, 4 * sx)  # image diagonal in physical units
    assert (s["dice"]["1"], s["iou"]["1"], s["asd"]["1"]) == (1.0, 1.0, 0.0)
    assert (s["dice"]["2"], s["iou"]["2"]) == (0.0, 0.0)
    assert (s["dice"]["3"], s["iou"]["3"]) == (0.0, 0.0)
    assert s["asd"]["2"] == pytest.approx(diag, abs=1e-12)
    assert s["asd"]["3"] == pytest.approx(diag, abs=1e-12)
    assert (s["dice"]["4"], s["iou"]["4"], s["asd"]["4"]) == (1.0, 1.0, 0.0)  # absent in both
    assert s["mean_dice"] == pytest.approx(2 / 4) and s["mean_iou"] == pytest.approx(2 / 4)
    assert s["mean_asd"] == pytest.approx(2 * diag / 4, abs=1e-12)


def test_semantic_default_classes_and_errors():
    both_empty = semantic_scores(np.zeros((2, 2), int), np.zeros((2, 2), int))
    assert set(both_empty["dice"]) == {"1"}  # K defaults to at least 2
    gt = np.array([[0, 3, 3]])
    s = semantic_scores(np.array([[0, 1, 3]]), gt)  # K = 4 from the largest id
    assert set(s["dice"]) == {"1", "2", "3"}
    # class 3: |G| 2, |P| 1, inter 1 -> Dice 2/3, IoU 1/2
    assert (s["dice"]["3"], s["iou"]["3"]) == (pytest.approx(2 / 3), pytest.approx(1 / 2))
    with pytest.raises(InputError, match=">= 2"):
        semantic_scores(gt, gt, num_classes=1)
    with pytest.raises(InputError, match="hold class 3 but num_classes is 3"):
        semantic_scores(gt, gt, num_classes=3)  # classes are 0..K-1
    assert set(semantic_scores(gt, gt, num_classes=4)["dice"]) == {"1", "2", "3"}
    assert semantic_scores(gt > 0, gt > 0, num_classes=2)["dice"] == {"1": 1.0}
    with pytest.raises(InputError, match="spacing has 3 values"):
        semantic_scores(gt, gt, spacing=(1.0, 1.0, 1.0))


def test_semantic_dice_iou_hand_three_classes():
    gt = np.array([[1, 1, 1, 2, 2, 0, 3, 3]])
    pred = np.array([[1, 1, 2, 2, 2, 2, 0, 3]])
    # c1: inter 2, |G| 3, |P| 2 -> Dice 4/5, IoU 2/3
    # c2: inter 2, |G| 2, |P| 4 -> Dice 4/6, IoU 2/4
    # c3: inter 1, |G| 2, |P| 1 -> Dice 2/3, IoU 1/2
    s = semantic_scores(pred, gt)
    want_d = {"1": 4 / 5, "2": 2 / 3, "3": 2 / 3}
    want_i = {"1": 2 / 3, "2": 1 / 2, "3": 1 / 2}
    assert s["dice"] == pytest.approx(want_d, abs=1e-15)
    assert s["iou"] == pytest.approx(want_i, abs=1e-15)
    assert s["mean_dice"] == pytest.approx(np.mean(list(want_d.values())), abs=1e-15)
    assert s["mean_iou"] == pytest.approx(np.mean(list(want_i.values())), abs=1e-15)


def _brute_boundary(region: np.ndarray) -> np.ndarray:
    """Coordinates of region pixels with a 4-neighbour outside the region (or off the image)."""
    padded = np.pad(region, 1, constant_values=False)
    inner = (
        padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    )  # all four neighbours inside
    return np.argwhere(region & ~inner)


def _brute_asd(pred_c: np.ndarray, gt_c: np.ndarray, spacing: tuple[float, float]) -> float:
    a = _brute_boundary(pred_c).astype(np.float64) * spacing
    b = _brute_boundary(gt_c).astype(np.float64) * spacing
    d = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))  # all pairs
    return float((d.min(1).sum() + d.min(0).sum()) / (len(a) + len(b)))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("spacing", [(1.0, 1.0), (2.0, 0.5)])
def test_semantic_asd_equals_brute_force(seed, spacing):
    rng = np.random.default_rng(100 + seed)
    shape = (30, 26)
    yy, xx = np.mgrid[: shape[0], : shape[1]]

    def blobs(n: int) -> np.ndarray:
        lab = np.zeros(shape, np.int32)
        for _ in range(n):
            cy, cx = rng.uniform(-3, shape[0] + 3), rng.uniform(-3, shape[1] + 3)
            ry, rx = rng.uniform(2, 8, 2)
            lab[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = rng.integers(1, 3)
        return lab

    gt, pred = blobs(5), blobs(5)
    s = semantic_scores(pred, gt, num_classes=3, spacing=spacing)
    checked = 0
    for c in (1, 2):
        if not (pred == c).any() or not (gt == c).any():
            continue
        checked += 1
        want = _brute_asd(pred == c, gt == c, spacing)
        # distance_transform_edt is exact in float64; 1e-9 covers the summation order only.
        assert s["asd"][str(c)] == pytest.approx(want, abs=1e-9), c
    assert checked >= 1


def test_semantic_asd_hand_value_anisotropic():
    gt = np.zeros((5, 5), np.int32)
    gt[1, 1] = 1
    pred = np.zeros((5, 5), np.int32)
    pred[3, 2] = 1  # 2 rows down, 1 column right
    # single-pixel boundaries: distance sqrt((2*3)^2 + (1*0.5)^2) in both directions
    want = np.hypot(6.0, 0.5)
    assert semantic_scores(pred, gt, spacing=(3.0, 0.5))["asd"]["1"] == pytest.approx(want)


def test_semantic_mask_sets_outside_to_background():
    gt = np.array([[1, 1, 0, 0], [0, 0, 2, 2]])
    pred = np.array([[1, 0, 1, 0], [0, 0, 2, 0]])
    fov = np.array([[1, 1, 0, 0], [1, 1, 1, 0]], dtype=np.uint8)  # non-zero = inside
    # inside: gt (1,1,_,_ / 0,0,2,_) pred (1,0,_,_ / 0,0,2,_)
    # c1: inter 1, |G| 2, |P| 1 -> Dice 2/3; c2: inter 1, |G| 1, |P| 1 -> Dice 1
    s = semantic_scores(pred, gt, mask=fov)
    assert s["dice"] == pytest.approx({"1": 2 / 3, "2": 1.0}, abs=1e-15)
    assert s["iou"] == pytest.approx({"1": 1 / 2, "2": 1.0}, abs=1e-15)


# ----------------------------------------------------------------------------- label checks


def test_check_label_array_conversions():
    b = check_label_array(np.array([[True, False]]))
    assert b.dtype == np.uint8 and b.tolist() == [[1, 0]]
    f = check_label_array(np.array([[2.0, 0.0]], np.float32))
    assert f.dtype == np.int64 and f.tolist() == [[2, 0]]
    u = check_label_array(np.array([[3, 0]], np.uint16))
    assert u.dtype == np.uint16 and u.tolist() == [[3, 0]]
    assert check_label_array(np.zeros((0,), np.float64)).dtype == np.int64
    assert check_label_array(np.zeros((0,), np.int8)).size == 0
    with pytest.raises(InputError, match="infinite"):
        check_label_array(np.array([1.0, np.inf]), "x.tif")
    with pytest.raises(InputError, match=r"^x\.tif: .*negative values \(min -2\)"):
        check_label_array(np.array([0, -2], np.int16), "x.tif")
    with pytest.raises(InputError, match="complex128"):
        check_label_array(np.array([1j]))


def test_remap_label_order_dtype_and_paths():
    lab = np.array([[9, 0, 4], [4, 1_000_003, 0]], np.int64)
    want = [[2, 0, 1], [1, 3, 0]]
    out = remap_label(lab)
    assert out.dtype == np.int32 and out.tolist() == want
    huge = np.where(lab > 0, lab + (1 << 40), 0)  # forces the sorting path
    assert remap_label(huge).tolist() == want and remap_label(huge).dtype == np.int32
    assert remap_label(np.zeros((2, 2), np.uint8)).tolist() == [[0, 0], [0, 0]]
    assert remap_label(np.array([[True, False]])).tolist() == [[1, 0]]


def test_lowest_ids_unmatched_still_enter_the_union():
    # GT 1 (cols 0-1, 4 px) is missed, GT 2 (cols 4-6, 6 px) is found exactly by pred 2;
    # pred 1 (cols 9-10, 4 px) is a false positive. Background never counts.
    gt = _strip((0, 2, 1), (4, 7, 2))
    pred = _strip((9, 11, 1), (4, 7, 2))
    # AJI = AJI+ = 6 / (6 + GT1 4 + pred1 4) = 6/14; PQ: TP 1, FP 1, FN 1 -> DQ 1/2, SQ 1.
    want = {"aji": F(3, 7), "aji_plus": F(3, 7), "dq": F(1, 2), "sq": 1, "pq": F(1, 2),
            "dice": F(12, 20)}  # fmt: skip
    _check(instance_scores(pred, gt), want)


@pytest.mark.parametrize("which", ["pred", "gt"])
def test_single_pixel_against_empty(which):
    one = np.zeros((3, 3), np.int32)
    one[1, 1] = 7
    empty = np.zeros_like(one)
    pred, gt = (one, empty) if which == "pred" else (empty, one)
    s = instance_scores(pred, gt)
    assert all(s[k] == 0.0 for k in KEYS), s
    assert (s["tp"], s["fp"], s["fn"]) == ((0, 1, 0) if which == "pred" else (0, 0, 1))
    assert dice(pred, gt) == 0.0


def test_many_instances_use_the_sparse_table_path():
    """> 2 M possible (GT, pred) cells: the contingency table switches to np.unique."""
    n = 1500
    gt = np.zeros((40, 80), np.int32)
    pos = np.arange(n) * 2  # every other pixel of the flattened image
    gt.ravel()[pos] = np.arange(1, n + 1)
    perm = np.random.default_rng(0).permutation(n) + 1
    pred = np.zeros_like(gt)
    pred.ravel()[pos] = perm  # the same pixels, ids in another order
    s = instance_scores(pred, gt)
    assert all(s[k] == 1.0 for k in KEYS) and (s["tp"], s["fp"], s["fn"]) == (n, 0, 0)
    pred.ravel()[pos[::2]] = 0  # drop every other instance: 750 found exactly, 750 missed
    # Dice 2 * 750 / 2250; AJI = AJI+ = 750 / 1500; DQ = 750 / (750 + 375) = 2/3, SQ 1.
    want = {"dice": F(2, 3), "aji": F(1, 2), "aji_plus": F(1, 2), "dq": F(2, 3), "sq": 1,
            "pq": F(2, 3)}  # fmt: skip
    s = instance_scores(pred, gt)
    _check(s, want)
    assert (s["tp"], s["fp"], s["fn"], s["n_pred"], s["n_gt"]) == (750, 0, 750, 750, 1500)


def test_metric_messages_in_full():
    def message(fn, *args, **kwargs) -> str:
        with pytest.raises(InputError) as info:
            fn(*args, **kwargs)
        return str(info.value)

    gt = np.zeros((2, 3), np.int32)
    assert message(instance_scores, np.zeros((3, 2), np.int32), gt) == (
        "pred has shape (3, 2) but gt has shape (2, 3); the prediction and the ground truth "
        "must cover the same pixels (same height and width)."
    )
    assert message(semantic_scores, gt, np.full((2, 3), 0.5)) == (
        "gt: label map has dtype float64 with fractional values (not integral); labels must be "
        "whole numbers (0 = background). Pass a label image (uint8/uint16/int32), not a "
        "probability map: threshold or argmax it first."
    )
    assert message(dice, np.full((2, 3), np.nan), gt) == (
        "pred: label map contains NaN or infinite values; labels must be whole numbers "
        "(0 = background): save integer labels (uint8/uint16/int32)."
    )
    assert message(remap_label, np.array([[0, -3]])) == (
        "labels: label map has negative values (min -3); use 0 for background and positive ids "
        "for objects/classes."
    )
    assert message(check_label_array, np.array(["a"])) == (
        "labels: label map has dtype <U1; labels must be an integer or bool array."
    )
    assert message(semantic_scores, gt, gt, mask=np.ones((3, 3))) == (
        "mask has shape (3, 3) but the label maps have shape (2, 3); pass the field-of-view mask "
        "of the same image."
    )
    assert message(semantic_scores, gt, gt, num_classes=1) == (
        "num_classes must be >= 2 (background + 1 class), got 1."
    )
    gt[0, 0] = 5
    assert message(semantic_scores, gt, gt, num_classes=3) == (
        "the label maps hold class 5 but num_classes is 3; pass --num-classes 6 or more "
        "(classes are 0..K-1, 0 = background)."
    )
    assert message(semantic_scores, gt, gt, spacing=(1.0,)) == "spacing has 1 values for a 2-D image."


def test_semantic_zero_size_and_single_pixel_classes():
    e = np.zeros((0, 5), np.int32)
    s = semantic_scores(e, e)
    assert (s["mean_dice"], s["mean_iou"], s["mean_asd"]) == (1.0, 1.0, 0.0)
    one = np.zeros((4, 4), np.int32)
    one[0, 0] = 1
    two = np.zeros((4, 4), np.int32)
    two[3, 3] = 1
    # one pixel each, 3 rows and 3 columns apart: ASD = sqrt(18) both ways
    assert semantic_scores(one, two)["asd"]["1"] == pytest.approx(np.sqrt(18), abs=1e-12)


def test_remap_label_dtype_with_many_ids_on_both_paths():
    lab = np.arange(100, dtype=np.int64).reshape(10, 10) * 3  # 99 objects + background
    out = remap_label(lab)
    assert out.dtype == np.int32 and out.max() == 99 and out[0, 0] == 0
    assert (np.diff(out.ravel()) == 1).all()
    big = remap_label(lab * (1 << 40))  # sorting path
    assert big.dtype == np.int32
    np.testing.assert_array_equal(big, out)
    single = remap_label(np.array([5]))  # one labelled pixel
    assert single.tolist() == [1] and single.dtype == np.int32
