"""Segmentation metrics: semantic Dice/IoU/ASD and instance Dice/AJI/AJI+/DQ/SQ/PQ.

The instance metrics follow the reference definitions used by HoVer-Net-style nuclear
segmentation benchmarks (``shared/methods.md`` section 4):

* ``dice``: Dice of the binarised maps (``> 0``).
* ``aji``: aggregated Jaccard index; every ground-truth (GT) instance takes the prediction with
  the highest IoU (a prediction may be taken more than once); the intersections and unions of
  those pairs are summed, and the areas of unpaired GT instances and of never-chosen predictions
  are added to the union.
* ``aji_plus``: as ``aji`` but with a unique (Hungarian) pairing that maximises the total IoU.
* ``dq``, ``sq``, ``pq``: panoptic quality with unique pairs of IoU > 0.5,
  ``DQ = TP / (TP + FP/2 + FN/2)``, ``SQ = sum(IoU of pairs) / TP``, ``PQ = DQ * SQ``.

All pairwise intersections come from one sparse contingency table of the two label maps (a
joint histogram of the overlapping foreground pixels), so the cost is a few passes over the
image whatever the number of instances: no per-instance full-image mask is ever built.

Conventions where the reference code divides by zero (documented in ``docs/metrics.md``):
both maps empty gives 1.0 for every instance score; one empty and the other not gives 0.0.
For a semantic class absent from both maps Dice = IoU = 1 and ASD = 0; for a class present in
only one of them Dice = IoU = 0 and ASD = the image diagonal (the largest possible distance).
No function here returns NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi
from scipy import sparse
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components

from napari_dgseg.core.errors import InputError

__all__ = [
    "check_label_array",
    "cldice",
    "dice",
    "instance_scores",
    "remap_label",
    "semantic_scores",
]

#: Small constant the reference code adds to IoU denominators when it picks the best partner
#: of a GT instance. Using the same expression reproduces its tie-breaking exactly.
_PAIR_EPS = 1.0e-6
#: Largest label value for which relabelling uses an O(N) lookup table instead of sorting.
_LUT_MAX = 1 << 20


def check_label_array(labels: np.ndarray, name: str = "labels") -> np.ndarray:
    """Validate a label map and return it as a non-negative integer array.

    Parameters
    ----------
    labels : np.ndarray
        Label map of any shape. bool, signed/unsigned integers and floats holding whole numbers
        are accepted.
    name : str
        How to call the array in error messages (a file name, ``"pred"``...).

    Returns
    -------
    np.ndarray
        Same shape, integer dtype (bool becomes uint8, integral floats become int64).

    Raises
    ------
    InputError
        For non-numeric dtypes, floats with fractional parts or NaN, and negative values.
    """
    arr = np.asarray(labels)
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if arr.size and not np.all(np.isfinite(arr)):
            raise InputError(
                f"{name}: label map contains NaN or infinite values; labels must be whole "
                "numbers (0 = background): save integer labels (uint8/uint16/int32)."
            )
        if arr.size and not np.array_equal(arr, np.round(arr)):
            raise InputError(
                f"{name}: label map has dtype {arr.dtype} with fractional values (not integral); "
                "labels must be whole numbers (0 = background). Pass a label image (uint8/uint16/"
                "int32), not a probability map: threshold or argmax it first."
            )
        arr = arr.astype(np.int64)
    elif not np.issubdtype(arr.dtype, np.integer):
        raise InputError(
            f"{name}: label map has dtype {arr.dtype}; labels must be an integer or bool array."
        )
    if arr.size and np.issubdtype(arr.dtype, np.signedinteger) and arr.min() < 0:
        raise InputError(
            f"{name}: label map has negative values (min {int(arr.min())}); use 0 for "
            "background and positive ids for objects/classes."
        )
    return arr


#: Most classes :func:`semantic_scores` accepts (its confusion table is K x K).
MAX_SEMANTIC_CLASSES = 4096


def remap_label(labels: np.ndarray) -> np.ndarray:
    """Relabel instance ids to ``1..n`` keeping their order; 0 stays background.

    Parameters
    ----------
    labels : np.ndarray
        ``(...)`` non-negative integer (or bool / integral float) label map; ids need not be
        contiguous.

    Returns
    -------
    np.ndarray
        ``(...)`` int32 (int64 if more than 2**31 - 1 instances) with ids ``1..n`` assigned in
        increasing order of the original ids.
    """
    arr = check_label_array(labels, "labels")
    if arr.size == 0:
        return np.zeros(arr.shape, np.int32)
    flat = arr.ravel()
    top = int(flat.max())
    if top == 0:
        return np.zeros(arr.shape, np.int32)
    if top <= max(_LUT_MAX, 2 * flat.size):
        present = np.bincount(flat, minlength=top + 1) > 0
        present[0] = False
        n = int(present.sum())
        dtype = np.int32 if n < 2**31 - 1 else np.int64
        lut = np.zeros(top + 1, dtype)
        lut[present] = np.arange(1, n + 1, dtype=dtype)
        return lut[flat].reshape(arr.shape)
    uniq, inverse = np.unique(flat, return_inverse=True)
    if uniq[0] != 0:  # no background pixel: ranks start at 1 already
        inverse = inverse + 1
    return inverse.astype(np.int64 if len(uniq) >= 2**31 - 1 else np.int32).reshape(arr.shape)


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = check_label_array(pred, "pred")
    g = check_label_array(gt, "gt")
    if p.shape != g.shape:
        raise InputError(
            f"pred has shape {p.shape} but gt has shape {g.shape}; the prediction and the "
            "ground truth must cover the same pixels (same height and width)."
        )
    return p, g


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice coefficient of the binarised maps (``> 0``).

    Parameters
    ----------
    pred, gt : np.ndarray
        ``(...)`` label maps of the same shape (any non-negative integer or bool dtype).

    Returns
    -------
    float
        ``2 |P & G| / (|P| + |G|)``; 1.0 when both are empty.
    """
    p, g = _check_pair(pred, gt)
    pb = p > 0
    gb = g > 0
    denom = int(np.count_nonzero(pb)) + int(np.count_nonzero(gb))
    if denom == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(pb & gb)) / denom


def cldice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Centreline Dice of two binary masks (tubular structures such as vessels).

    clDice from Shit et al. 2021, "clDice - a novel topology-preserving loss function for tubular
    structure segmentation": with skeletons ``S_P``, ``S_G`` (:func:`skimage.morphology.skeletonize`)
    of the binarised maps ``P``, ``G``, topology precision ``Tprec = |S_P & G| / |S_P|`` and
    topology sensitivity ``Tsens = |S_G & P| / |S_G|``; ``clDice = 2 Tprec Tsens / (Tprec + Tsens)``.
    A broken thin vessel loses much more clDice than Dice.

    Parameters
    ----------
    pred, gt : np.ndarray
        ``(H, W)`` label maps of the same shape (``> 0`` is foreground).

    Returns
    -------
    float
        In ``[0, 1]``; 1.0 when both maps are empty, 0.0 when exactly one is.
    """
    from skimage.morphology import skeletonize

    p, g = _check_pair(pred, gt)
    if p.ndim != 2:
        raise InputError(f"cldice takes 2-D masks (H, W); got shape {p.shape}: score each plane")
    pb, gb = p > 0, g > 0
    if not pb.any() and not gb.any():
        return 1.0
    if not pb.any() or not gb.any():
        return 0.0
    sp, sg = skeletonize(pb), skeletonize(gb)
    tprec = np.count_nonzero(sp & gb) / max(np.count_nonzero(sp), 1)
    tsens = np.count_nonzero(sg & pb) / max(np.count_nonzero(sg), 1)
    if tprec + tsens == 0:
        return 0.0
    return float(2.0 * tprec * tsens / (tprec + tsens))


# --------------------------------------------------------------------------------------------
# semantic scores
# --------------------------------------------------------------------------------------------


def _boundary(region: np.ndarray) -> np.ndarray:
    """Pixels of ``region`` with at least one 4-connected (face) neighbour outside it."""
    structure = ndi.generate_binary_structure(region.ndim, 1)
    return region & ~ndi.binary_erosion(region, structure=structure, border_value=0)


def _asd(pred_c: np.ndarray, gt_c: np.ndarray, spacing: Sequence[float]) -> float:
    """Average symmetric surface distance between two boolean regions (both non-empty)."""
    bp = _boundary(pred_c)
    bg = _boundary(gt_c)
    # every boundary pixel lies in the joint bounding box, so the distance transforms of the
    # crop are exact
    box = ndi.find_objects((bp | bg).astype(np.uint8))[0]
    bp, bg = bp[box], bg[box]
    # distance of every pixel to the nearest boundary pixel of the other region
    d_to_g = ndi.distance_transform_edt(~bg, sampling=spacing)
    d_to_p = ndi.distance_transform_edt(~bp, sampling=spacing)
    total = float(d_to_g[bp].sum()) + float(d_to_p[bg].sum())
    return total / (int(bp.sum()) + int(bg.sum()))


def semantic_scores(
    pred: np.ndarray,
    gt: np.ndarray,
    num_classes: int | None = None,
    mask: np.ndarray | None = None,
    spacing: float | Sequence[float] = 1.0,
) -> dict:
    """Per-class Dice, IoU and average symmetric surface distance of two class maps.

    Parameters
    ----------
    pred, gt : np.ndarray
        ``(H, W)`` (or any ``(...)``) class maps, 0 = background, ``1..K-1`` = classes.
    num_classes : int, optional
        K, including background. Default: ``max(pred.max(), gt.max()) + 1`` (at least 2).
    mask : np.ndarray, optional
        ``(H, W)`` region where the scores are computed (e.g. the fundus field of view);
        pixels outside count as background in both maps.
    spacing : float or sequence of float
        Pixel size per axis for ASD (1.0 = distances in pixels).

    Returns
    -------
    dict
        ``{"dice": {"1": v, ...}, "iou": {...}, "asd": {...}, "mean_dice": v, "mean_iou": v,
        "mean_asd": v}``. Class keys are strings; the means run over all foreground classes
        ``1..K-1``. ASD is the average symmetric surface distance: the distances from each
        boundary pixel of one region to the nearest boundary pixel of the other, in both
        directions, pooled and averaged.
    """
    p, g = _check_pair(pred, gt)
    if mask is not None:
        m = np.asarray(mask)
        if m.shape != p.shape:
            raise InputError(
                f"mask has shape {m.shape} but the label maps have shape {p.shape}; pass the "
                "field-of-view mask of the same image."
            )
        m = m.astype(bool)
        p = np.where(m, p, 0)
        g = np.where(m, g, 0)
    top = max(int(p.max(initial=0)), int(g.max(initial=0)))
    if num_classes is None:
        num_classes = max(2, top + 1)
    num_classes = int(num_classes)
    if num_classes < 2:
        raise InputError(f"num_classes must be >= 2 (background + 1 class), got {num_classes}.")
    if top >= num_classes:
        raise InputError(
            f"the label maps hold class {top} but num_classes is {num_classes}; pass "
            f"--num-classes {top + 1} or more (classes are 0..K-1, 0 = background)."
        )
    if num_classes > MAX_SEMANTIC_CLASSES:
        # Per-class scores for every id up to the largest would need a K x K table: refuse
        # before allocating it. Ids this large are instance ids, not classes.
        raise InputError(
            f"the label maps hold class id {top} (K = {num_classes}); semantic scores take at "
            f"most {MAX_SEMANTIC_CLASSES} classes. Ids this large are instance labels: score "
            "them with --instance (instance_scores)."
        )
    if np.ndim(spacing) == 0:
        spacing_t = [float(spacing)] * p.ndim
    else:
        spacing_t = [float(s) for s in spacing]  # type: ignore[union-attr]
        if len(spacing_t) != p.ndim:
            raise InputError(f"spacing has {len(spacing_t)} values for a {p.ndim}-D image.")
    diagonal = float(np.sqrt(sum((n * s) ** 2 for n, s in zip(p.shape, spacing_t, strict=True))))

    # confusion counts for all classes in one pass
    k = num_classes
    conf = np.bincount(
        (g.ravel().astype(np.int64) * k + p.ravel().astype(np.int64)), minlength=k * k
    ).reshape(k, k)
    out_d: dict[str, float] = {}
    out_i: dict[str, float] = {}
    out_a: dict[str, float] = {}
    for c in range(1, k):
        inter = int(conf[c, c])
        n_g = int(conf[c, :].sum())
        n_p = int(conf[:, c].sum())
        key = str(c)
        if n_g == 0 and n_p == 0:
            out_d[key], out_i[key], out_a[key] = 1.0, 1.0, 0.0
            continue
        out_d[key] = 2.0 * inter / (n_g + n_p)
        out_i[key] = inter / (n_g + n_p - inter)
        if n_g == 0 or n_p == 0:
            out_a[key] = diagonal
        else:
            out_a[key] = _asd(p == c, g == c, spacing_t)
    return {
        "dice": out_d,
        "iou": out_i,
        "asd": out_a,
        "mean_dice": float(np.mean(list(out_d.values()))),
        "mean_iou": float(np.mean(list(out_i.values()))),
        "mean_asd": float(np.mean(list(out_a.values()))),
    }


# --------------------------------------------------------------------------------------------
# instance scores
# --------------------------------------------------------------------------------------------


def _pair_table(
    p: np.ndarray, g: np.ndarray, n_p: int, n_g: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse contingency table of two contiguous label maps.

    Returns
    -------
    gi, pi : np.ndarray
        ``(M,)`` int64 GT and prediction ids (1-based) of every overlapping pair.
    inter : np.ndarray
        ``(M,)`` int64 number of shared pixels of each pair.
    """
    both = (p > 0) & (g > 0)
    pv = p[both].astype(np.int64)
    gv = g[both].astype(np.int64)
    codes = gv * (n_p + 1) + pv
    n_cells = (n_g + 1) * (n_p + 1)
    if n_cells <= max(1 << 21, 2 * codes.size):
        counts = np.bincount(codes, minlength=n_cells)
        cells = np.flatnonzero(counts)
        inter = counts[cells]
    else:
        cells, inter = np.unique(codes, return_counts=True)
    gi, pi = np.divmod(cells.astype(np.int64), n_p + 1)
    return gi, pi, inter.astype(np.int64)


def _unique_pairs(
    gi: np.ndarray, pi: np.ndarray, score: np.ndarray, n_g: int, n_p: int
) -> np.ndarray:
    """Maximum-total-score one-to-one pairing among the candidate pairs (Hungarian).

    The bipartite graph of candidate pairs is split into connected components and the
    assignment problem is solved per component, which gives the global optimum at a
    fraction of the cost of one dense ``n_g x n_p`` problem.

    Returns
    -------
    np.ndarray
        ``(M,)`` bool: which candidate pairs are selected.
    """
    m = gi.size
    chosen = np.zeros(m, bool)
    if m == 0:
        return chosen
    # nodes: GT 0..n_g-1, predictions n_g..n_g+n_p-1
    graph = sparse.coo_matrix(
        (np.ones(m), (gi - 1, n_g + pi - 1)), shape=(n_g + n_p, n_g + n_p)
    ).tocsr()
    _, comp = connected_components(graph, directed=False)
    pair_comp = comp[gi - 1]
    order = np.argsort(pair_comp, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(pair_comp[order]) != 0])
    ends = np.r_[starts[1:], m]
    single = (ends - starts) == 1
    chosen[order[starts[single]]] = True
    for s, e in zip(starts[~single], ends[~single], strict=True):
        idx = order[s:e]
        rows, r_inv = np.unique(gi[idx], return_inverse=True)
        cols, c_inv = np.unique(pi[idx], return_inverse=True)
        cost = np.zeros((rows.size, cols.size))
        cost[r_inv, c_inv] = -score[idx]
        r_sel, c_sel = linear_sum_assignment(cost)
        lookup = -np.ones((rows.size, cols.size), np.int64)
        lookup[r_inv, c_inv] = idx
        sel = lookup[r_sel, c_sel]
        chosen[sel[sel >= 0]] = True
    return chosen


def instance_scores(pred: np.ndarray, gt: np.ndarray) -> dict:
    """Instance segmentation scores of a predicted and a ground-truth instance map.

    Parameters
    ----------
    pred, gt : np.ndarray
        ``(H, W)`` (or any ``(...)``) instance maps of the same shape, 0 = background; ids need
        not be contiguous (they are relabelled first).

    Returns
    -------
    dict
        ``{"dice", "aji", "aji_plus", "dq", "sq", "pq"}`` as floats in ``[0, 1]`` (see the module
        docstring for the definitions and the empty-map conventions), plus the counts
        ``"tp"``, ``"fp"``, ``"fn"`` of the PQ matching and ``"n_pred"``, ``"n_gt"``.
    """
    p, g = _check_pair(pred, gt)
    p = remap_label(p)
    g = remap_label(g)
    n_p = int(p.max(initial=0))
    n_g = int(g.max(initial=0))
    area_p = np.bincount(p.ravel(), minlength=n_p + 1).astype(np.int64)
    area_g = np.bincount(g.ravel(), minlength=n_g + 1).astype(np.int64)

    fg_p = int(area_p[1:].sum())
    fg_g = int(area_g[1:].sum())
    both_fg = int(np.count_nonzero((p > 0) & (g > 0)))
    dice_v = 1.0 if fg_p + fg_g == 0 else 2.0 * both_fg / (fg_p + fg_g)
    counts = {"n_pred": n_p, "n_gt": n_g}
    if n_p == 0 and n_g == 0:
        return {"dice": 1.0, "aji": 1.0, "aji_plus": 1.0, "dq": 1.0, "sq": 1.0, "pq": 1.0,
                "tp": 0, "fp": 0, "fn": 0, **counts}  # fmt: skip

    gi, pi, inter = _pair_table(p, g, n_p, n_g)
    union = area_g[gi] + area_p[pi] - inter
    inter_f = inter.astype(np.float64)
    union_f = union.astype(np.float64)
    iou_sel = inter_f / (union_f + _PAIR_EPS)  # reference expression used to choose partners

    # ---- AJI: each GT takes its best-IoU prediction (ties -> lowest prediction id) -------
    if gi.size:
        order = np.lexsort((pi, -iou_sel, gi))
        first = order[np.r_[True, np.diff(gi[order]) != 0]]
        first = first[iou_sel[first] > 0.0]
    else:
        first = np.zeros(0, np.int64)
    aji = _aggregate(inter[first], union[first], gi[first], pi[first], area_g, area_p)

    # ---- AJI+: unique pairing maximising the total IoU ----------------------------------
    chosen = _unique_pairs(gi, pi, iou_sel, n_g, n_p)
    chosen &= iou_sel > 0.0
    aji_plus = _aggregate(inter[chosen], union[chosen], gi[chosen], pi[chosen], area_g, area_p)

    # ---- PQ: pairs with IoU > 0.5 are unique by construction ----------------------------
    iou = inter_f / union_f
    matched = iou > 0.5
    tp = int(matched.sum())
    fp = n_p - tp
    fn = n_g - tp
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = float(iou[matched].sum() / tp) if tp else 0.0
    return {
        "dice": float(dice_v),
        "aji": float(aji),
        "aji_plus": float(aji_plus),
        "dq": float(dq),
        "sq": sq,
        "pq": float(dq * sq),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        **counts,
    }


def _aggregate(
    inter: np.ndarray,
    union: np.ndarray,
    g_ids: np.ndarray,
    p_ids: np.ndarray,
    area_g: np.ndarray,
    area_p: np.ndarray,
) -> float:
    """Sum pair intersections over pair unions plus the areas of unpaired instances."""
    used_g = np.zeros(area_g.size, bool)
    used_p = np.zeros(area_p.size, bool)
    used_g[g_ids] = True
    used_p[p_ids] = True
    used_g[0] = used_p[0] = True  # background
    total_union = int(union.sum()) + int(area_g[~used_g].sum()) + int(area_p[~used_p].sum())
    if total_union == 0:
        return 1.0
    return int(inter.sum()) / total_union
