"""A second, independent fundus renderer used only to evaluate vessel segmentation.

Written without the training renderer's code (:mod:`.synthetic_vessels`), it differs in every
stage, so a score here measures generalisation to an image generator nobody tuned to:

* **Vessel trees by space colonisation** (Runions, Lane & Prusinkiewicz 2007, "Modeling trees
  with a space colonization algorithm"): the four temporal trunks (a vein and an artery above and
  below the macula) follow jittered elliptic arcs that leave the disc vertically and arch round
  the macula, two nasal trunks wander off the other side; from these, attraction points scattered
  over the retina (none in the foveal avascular zone) pull the trees outwards, tips always grow
  and side branches sprout rarely, so branches are few and long. Widths follow a pipe model with
  exponent 2.7 on the number of tips a segment feeds (the training renderer splits widths by
  Murray's cube law along random walks).
* **Illumination**: strong, off-centre vignetting, a low-frequency uneven field, an optional dark
  crescent (eyelash or pupil shadow) and a bright glare crescent along the field-of-view rim.
* **Anatomy**: optic disc with a cup (cup-to-disc ratio per eye) and a pale peripapillary crescent;
  macula with a foveal reflex; optional tessellated (tigroid) choroid whose broad vessels show
  through and are *not* retinal vessels.
* **Lesions** (ground truth = background): dot and flame haemorrhages, microaneurysms, hard
  exudates, cotton-wool spots and drusen.
* **Field of view**: circular, optionally cut flat at the top and bottom or with a square
  orientation notch in the rim (as some cameras do), returned as a mask; outside it is near black.
* **Camera**: gamma, colour-correlated noise, blur, unsharp masking and JPEG with its own codec
  settings.

Geometry is in units of the field-of-view radius, so the same eye can be rendered at any size.
Deterministic per seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from napari_dgseg.core.data._synth_common import (
    as_shape,
    check_seed,
    generators,
    lookup_domain,
    smooth_noise,
)
from napari_dgseg.core.data.heldout_nuclei import jpeg_codec, smooth_step01

DEFAULT_SIZE = 256  # the training renderer's default image side


@dataclass(frozen=True)
class HeldoutVesselStyle:
    """One evaluation-only fundus camera / patient style.

    Attributes
    ----------
    name : str
        Style name (key in :data:`HELDOUT_VESSEL_STYLES`); all start with ``hv-``.
    description : str
        One line for humans.
    fundus : (float, float, float)
        RGB of the fundus at full illumination.
    vessel_absorb : (float, float, float)
        Fraction of light a wide vein absorbs in R, G, B (arteries absorb 65 % of it).
    vignetting : float
        Brightness lost at the rim (fraction); the centre of the light is off-centre.
    uneven : float
        Amplitude of the low-frequency illumination field.
    shadow : float
        Depth of a dark crescent on one side (0 = none).
    glare : float
        Strength of the bright rim glare (0 = none).
    tessellation : float
        Contrast of the tigroid choroid (0 = none).
    haemorrhages, exudates, drusen, cotton_wool : float
        Expected counts per eye of each lesion kind (scaled by the field-of-view area).
    flat_cut : float
        Fraction of the field-of-view radius cut off at top and bottom (0 = full circle).
    notch : float
        Side of a square orientation notch cut into the rim at the upper right, in radii
        (0 = none; some cameras mark the field of view this way).
    fov_fraction : float
        Field-of-view radius as a fraction of half the shorter image side.
    gamma : float
        Tone curve exponent.
    blur : float
        Gaussian blur sigma in pixels at 256 px (scaled with the image).
    sharpen : float
        Unsharp-mask amount.
    noise : float
        Noise sigma, grey levels.
    jpeg_quality : int or None
        JPEG quality (None = lossless).
    """

    name: str
    description: str
    fundus: tuple[float, float, float] = (200.0, 92.0, 40.0)
    vessel_absorb: tuple[float, float, float] = (0.3, 0.55, 0.5)
    vignetting: float = 0.5
    uneven: float = 0.08
    shadow: float = 0.0
    glare: float = 0.0
    tessellation: float = 0.0
    haemorrhages: float = 0.0
    exudates: float = 0.0
    drusen: float = 0.0
    cotton_wool: float = 0.0
    flat_cut: float = 0.0
    notch: float = 0.0
    fov_fraction: float = 0.92
    gamma: float = 1.0
    blur: float = 0.5
    sharpen: float = 0.0
    noise: float = 2.0
    jpeg_quality: int | None = None


HELDOUT_VESSEL_STYLES: dict[str, HeldoutVesselStyle] = {
    s.name: s
    for s in (
        HeldoutVesselStyle(
            name="hv-dim-vignette",
            description="dim camera: heavy off-centre vignetting, uneven light, eyelash shadow, noise",
            fundus=(185.0, 70.0, 30.0),
            vessel_absorb=(0.35, 0.6, 0.55),
            vignetting=0.8,
            uneven=0.15,
            shadow=0.55,
            haemorrhages=2.0,
            gamma=1.3,
            blur=0.6,
            noise=5.0,
        ),
        HeldoutVesselStyle(
            name="hv-lesions",
            description="diabetic retinopathy: haemorrhages, microaneurysms, exudates, cotton wool; JPEG",
            fundus=(210.0, 100.0, 45.0),
            vessel_absorb=(0.3, 0.6, 0.55),
            vignetting=0.45,
            haemorrhages=14.0,
            exudates=10.0,
            cotton_wool=3.0,
            glare=0.3,
            blur=0.5,
            noise=2.0,
            jpeg_quality=60,
        ),
        HeldoutVesselStyle(
            name="hv-glare-drusen",
            description="pale tessellated fundus, drusen, strong rim glare, soft focus, flat-cut field",
            fundus=(236.0, 140.0, 80.0),
            vessel_absorb=(0.2, 0.38, 0.35),
            vignetting=0.3,
            glare=1.0,
            tessellation=0.25,
            drusen=25.0,
            flat_cut=0.12,
            fov_fraction=0.98,
            gamma=0.85,
            blur=1.1,
            noise=2.0,
            jpeg_quality=80,
        ),
        HeldoutVesselStyle(
            name="hv-green-cam",
            description="different sensor: green-heavy, desaturated fundus, sharpened, small field",
            fundus=(170.0, 120.0, 70.0),
            vessel_absorb=(0.25, 0.45, 0.4),
            vignetting=0.55,
            uneven=0.1,
            haemorrhages=3.0,
            drusen=6.0,
            notch=0.09,
            fov_fraction=0.8,
            gamma=1.1,
            blur=0.4,
            sharpen=0.9,
            noise=3.0,
            jpeg_quality=45,
        ),
    )
}
DEFAULT_HELDOUT_VESSEL_STYLE = "hv-dim-vignette"


def get_heldout_vessel_style(style: str) -> HeldoutVesselStyle:
    """Look up a held-out fundus style; unknown names raise an error listing the valid ones."""
    return lookup_domain(HELDOUT_VESSEL_STYLES, "held-out vessels", style)


# ------------------------------------------------------------------------ space colonisation


@dataclass
class VesselTree:
    """Nodes of all trees of one eye, in field-of-view radii (centre 0, 0).

    Attributes
    ----------
    pos : np.ndarray
        ``(N, 2)`` node positions ``(x, y)``.
    parent : np.ndarray
        ``(N,)`` parent index, -1 for roots.
    kind : np.ndarray
        ``(N,)`` 0 vein, 1 artery.
    width : np.ndarray
        ``(N,)`` width of the segment from the node to its parent, in radii.
    disc : (float, float)
        Optic disc centre.
    disc_radius : float
        Optic disc radius.
    fovea : (float, float)
        Fovea centre.
    """

    pos: np.ndarray
    parent: np.ndarray
    kind: np.ndarray
    width: np.ndarray
    disc: tuple[float, float]
    disc_radius: float
    fovea: tuple[float, float]


def grow_trees(rng: np.random.Generator, *, n_points: int = 1400) -> VesselTree:
    """Grow the retinal vessel trees of one eye by space colonisation.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness.
    n_points : int
        Number of attraction points over the retina.

    Returns
    -------
    VesselTree
    """
    side = 1.0 if rng.random() < 0.5 else -1.0  # right or left eye: disc on the nasal side
    disc = (side * rng.uniform(0.45, 0.6), rng.uniform(-0.08, 0.08))
    disc_r = rng.uniform(0.1, 0.13)
    fovea = (disc[0] - side * rng.uniform(0.6, 0.72), disc[1] + rng.uniform(0.0, 0.08))
    # attraction points: uniform in the disc of radius 1.05, none in the foveal avascular zone
    pts = rng.uniform(-1.05, 1.05, (n_points * 2, 2))
    r_ok = np.hypot(pts[:, 0], pts[:, 1]) < 1.05
    faz = np.hypot(pts[:, 0] - fovea[0], pts[:, 1] - fovea[1]) < 0.1
    in_disc = np.hypot(pts[:, 0] - disc[0], pts[:, 1] - disc[1]) < disc_r * 1.3
    pts = pts[r_ok & ~faz & ~in_disc][:n_points]
    temporal = np.pi if side > 0 else 0.0  # direction from disc towards the macula
    pos: list[tuple[float, float]] = []
    parent: list[int] = []
    kind: list[int] = []
    heading: list[tuple[float, float]] = []

    def add_chain(points: np.ndarray, k: int) -> None:
        """Append a chain of nodes (each the parent of the next) as one vessel trunk."""
        for j, (x, y) in enumerate(points):
            parent.append(-1 if j == 0 else len(pos) - 1)
            nxt = points[min(j + 1, len(points) - 1)] - points[max(j - 1, 0)]
            heading.append(tuple(nxt / max(np.linalg.norm(nxt), 1e-9)))
            pos.append((float(x), float(y)))
            kind.append(k)

    # temporal arcades: a vein and an artery above and below the macula, on elliptic arcs that
    # leave the disc vertically, arch over the macula and end temporal of it
    ax = abs(disc[0] - fovea[0])
    ay = rng.uniform(0.36, 0.48)
    theta = np.linspace(0.0, 3.0, 600)
    for sup in (-1.0, 1.0):
        for k, inset in ((0, 1.0), (1, rng.uniform(0.7, 0.8))):
            a_x, a_y = ax * rng.uniform(0.97, 1.03), ay * inset * rng.uniform(0.92, 1.08)
            x = disc[0] - side * a_x * (1.0 - np.cos(theta))
            y = disc[1] + sup * a_y * np.sin(theta)
            y = y + 0.015 * np.sin(theta * rng.uniform(3, 6) + rng.uniform(0, 6))
            arc = np.cumsum(np.r_[0, np.hypot(np.diff(x), np.diff(y))])
            end = rng.uniform(1.7, 2.4) * (ax + ay) / 2
            picks = np.searchsorted(arc, np.arange(0.3 * disc_r, min(end, arc[-1]), 0.025))
            add_chain(np.stack([x[picks], y[picks]], -1), k)
    # nasal trunks: straight-ish, slightly wandering
    for sup in (-1.0, 1.0):
        ang = temporal + np.pi - side * sup * rng.uniform(0.5, 0.9)
        steps = np.cumsum(rng.normal(0, 0.06, 8)) + ang
        start = np.array(disc) + 0.3 * disc_r * np.array([np.cos(ang), np.sin(ang)])
        chain = start + np.cumsum(0.03 * np.stack([np.cos(steps), np.sin(steps)], -1), axis=0)
        add_chain(np.vstack([start, chain]), int(rng.integers(0, 2)))
    inside = np.hypot(np.asarray(pos)[:, 0], np.asarray(pos)[:, 1]) < 1.05
    if not inside.all():  # a trunk that leaves the field of view ends there
        keep = inside.copy()
        for i in range(len(pos)):  # a node whose parent was dropped is dropped too
            if parent[i] >= 0 and not keep[parent[i]]:
                keep[i] = False
        remap = np.cumsum(keep) - 1
        pos = [p for p, ok in zip(pos, keep, strict=True) if ok]
        heading = [h for h, ok in zip(heading, keep, strict=True) if ok]
        kind = [k for k, ok in zip(kind, keep, strict=True) if ok]
        parent = [int(remap[q]) if q >= 0 else -1
                  for q, ok in zip(parent, keep, strict=True) if ok]  # fmt: skip
    pos_a = np.asarray(pos, float)
    parent_l, kind_l = list(parent), list(kind)
    head_a = np.asarray(heading, float)
    step, influence, kill = 0.022, 0.22, 0.045
    active = np.ones(len(pts), bool)
    for _ in range(140):
        if not active.any():
            break
        tree = cKDTree(pos_a)
        dist, near = tree.query(pts[active], distance_upper_bound=influence)
        ok = np.isfinite(dist)
        if not ok.any():
            break
        act_idx = np.flatnonzero(active)[ok]
        near = near[ok]
        vec = pts[act_idx] - pos_a[near]
        vec /= np.maximum(np.linalg.norm(vec, axis=1, keepdims=True), 1e-9)
        pull = np.zeros_like(pos_a)
        np.add.at(pull, near, vec)
        growing = np.flatnonzero(np.linalg.norm(pull, axis=1) > 0)
        # tips always grow; a node that already has a child sprouts a side branch only rarely,
        # so that branches are few and long rather than a comb along every trunk
        n_child = np.bincount(np.asarray(parent_l)[np.asarray(parent_l) >= 0], minlength=len(pos_a))
        growing = growing[(n_child[growing] == 0) | (rng.random(growing.size) < 0.06)]
        if growing.size == 0:
            break
        d = pull[growing] / np.linalg.norm(pull[growing], axis=1, keepdims=True)
        d = 0.55 * d + 0.45 * head_a[growing] + rng.normal(0, 0.08, d.shape)  # inertia: smooth arcs
        d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-9)
        new = pos_a[growing] + step * d
        keep = np.hypot(new[:, 0], new[:, 1]) < 1.05
        growing, new, d = growing[keep], new[keep], d[keep]
        if growing.size == 0:
            break
        pos_a = np.vstack([pos_a, new])
        head_a = np.vstack([head_a, d])
        parent_l += growing.tolist()
        kind_l += [kind_l[g] for g in growing]
        close = cKDTree(new).query(pts, distance_upper_bound=kill)[0]
        active &= ~np.isfinite(close)
    parent_a = np.asarray(parent_l, np.int64)
    n = len(parent_a)
    # pipe model: width ~ (number of tips fed) ** (1 / 2.7)
    children = np.bincount(parent_a[parent_a >= 0], minlength=n)
    tips = (children == 0).astype(np.float64)
    for i in range(n - 1, -1, -1):  # children always come after their parent
        if parent_a[i] >= 0:
            tips[parent_a[i]] += tips[i]
    w_tip = rng.uniform(0.0085, 0.011)
    width = np.minimum(w_tip * tips ** (1 / 2.7), rng.uniform(0.036, 0.044))
    return VesselTree(pos_a, parent_a, np.asarray(kind_l, np.int8), width, disc, disc_r, fovea)


def rasterise_tree(
    tree: VesselTree, shape: tuple[int, int], centre: tuple[float, float], radius: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw each segment as a capsule.

    Returns
    -------
    coverage : np.ndarray
        ``(H, W)`` float32 in [0, 1], anti-aliased vessel coverage.
    depth : np.ndarray
        ``(H, W)`` float32 in [0, 1], relative absorption (1 at the axis of the widest vessel).
    artery : np.ndarray
        ``(H, W)`` float32, 1 where the top-most vessel is an artery.
    """
    h, w = shape
    cov = np.zeros(shape, np.float32)
    depth = np.zeros(shape, np.float32)
    artery = np.zeros(shape, np.float32)
    cy, cx = centre
    p = tree.pos * radius + np.array([cx, cy])
    w_max = float(tree.width.max()) if tree.width.size else 1.0
    for i in np.argsort(tree.width):  # thin first, so wide vessels end on top
        j = tree.parent[i]
        if j < 0:
            continue
        half = max(tree.width[i] * radius / 2, 0.3)
        (x0, y0), (x1, y1) = p[j], p[i]
        lo_x, hi_x = int(max(0, min(x0, x1) - half - 2)), int(min(w, max(x0, x1) + half + 3))
        lo_y, hi_y = int(max(0, min(y0, y1) - half - 2)), int(min(h, max(y0, y1) + half + 3))
        if lo_x >= hi_x or lo_y >= hi_y:
            continue
        yy, xx = np.mgrid[lo_y:hi_y, lo_x:hi_x].astype(np.float32)
        ex, ey = x1 - x0, y1 - y0
        ll = ex * ex + ey * ey
        t = np.clip(((xx - x0) * ex + (yy - y0) * ey) / max(ll, 1e-9), 0.0, 1.0)
        d = np.hypot(xx - (x0 + t * ex), yy - (y0 + t * ey))
        c = np.clip(half - d + 0.5, 0.0, 1.0)
        prof = np.clip(1 - (d / max(half, 0.5)) ** 2, 0, 1) ** 0.5
        strength = (tree.width[i] / w_max) ** 0.35
        sub_c = cov[lo_y:hi_y, lo_x:hi_x]
        upd = c > sub_c
        np.maximum(sub_c, c, out=sub_c)
        sub_d = depth[lo_y:hi_y, lo_x:hi_x]
        np.maximum(sub_d, c * prof * strength, out=sub_d)
        artery[lo_y:hi_y, lo_x:hi_x][upd] = float(tree.kind[i])
    return cov, depth, artery


# ------------------------------------------------------------------------------- rendering


def _blobs(
    rng: np.random.Generator,
    shape: tuple[int, int],
    count: int,
    where: tuple[float, float, float],
    size_px: tuple[float, float],
    *,
    elongate: float = 1.0,
    around: tuple[float, float] | None = None,
    cluster: int = 1,
    fov: np.ndarray | None = None,
) -> np.ndarray:
    """Soft elliptical blobs (lesions); returns a ``(H, W)`` float32 map in [0, 1].

    ``where = (cx, cy, spread)`` in pixels: centres are normal around it (uniform over the
    field of view when spread <= 0). With ``around`` = a point, elongated blobs point at it.
    """
    h, w = shape
    out = np.zeros(shape, np.float32)
    for _ in range(count):
        if where[2] > 0:
            cx, cy = rng.normal(where[0], where[2]), rng.normal(where[1], where[2])
        else:
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        for _ in range(cluster):
            bx = cx + (rng.normal(0, 3 * size_px[1]) if cluster > 1 else 0)
            by = cy + (rng.normal(0, 3 * size_px[1]) if cluster > 1 else 0)
            if not (0 <= bx < w and 0 <= by < h) or (fov is not None and not fov[int(by), int(bx)]):
                continue
            r = rng.uniform(*size_px)
            ang = np.arctan2(by - around[1], bx - around[0]) if around else rng.uniform(0, np.pi)
            reach = int(r * elongate * 2.5) + 2
            y0, y1 = max(0, int(by) - reach), min(h, int(by) + reach + 1)
            x0, x1 = max(0, int(bx) - reach), min(w, int(bx) + reach + 1)
            yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
            u = ((xx - bx) * np.cos(ang) + (yy - by) * np.sin(ang)) / (r * elongate)
            v = (-(xx - bx) * np.sin(ang) + (yy - by) * np.cos(ang)) / r
            b = smooth_step01((1.2 - np.hypot(u, v)) / 0.5)
            np.maximum(out[y0:y1, x0:x1], b, out=out[y0:y1, x0:x1])
    return out


def make_heldout_vessels(
    size: int | tuple[int, int] = DEFAULT_SIZE,
    style: str = DEFAULT_HELDOUT_VESSEL_STYLE,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one held-out fundus photograph, its vessel labels and its field of view.

    Parameters
    ----------
    size : int or (int, int)
        Image side or ``(H, W)`` (default 256, as the training renderer); the eye scales with it.
    style : str
        One of :data:`HELDOUT_VESSEL_STYLES`.
    seed : int
        Non-negative seed; the output is a pure function of ``(size, style, seed)``.

    Returns
    -------
    image : np.ndarray
        ``(H, W, 3)`` uint8 RGB.
    labels : np.ndarray
        ``(H, W)`` uint8, 1 = retinal vessel (at least half covered), 0 elsewhere (lesions,
        choroidal vessels, disc and everything outside the field of view are 0).
    fov : np.ndarray
        ``(H, W)`` bool field of view.

    Raises
    ------
    InputError
        For an unknown style, a bad size or a negative seed.
    """
    image, labels, fov, _ = _render(size, style, seed)
    return image, labels, fov


def lesion_masks(
    size: int | tuple[int, int] = DEFAULT_SIZE,
    style: str = DEFAULT_HELDOUT_VESSEL_STYLE,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Where the lesions of a photograph are (same image as :func:`make_heldout_vessels`).

    Returns
    -------
    dict
        ``{"haemorrhage", "exudate", "drusen", "cotton_wool"}`` -> ``(H, W)`` bool masks inside
        the field of view (a lesion may lie under a vessel; its vessel pixels stay vessel).
    """
    return _render(size, style, seed)[3]


def _render(
    size: int | tuple[int, int], style: str, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    sty = get_heldout_vessel_style(style)
    shape = as_shape(size)
    seed = check_seed(seed)
    rng_eye, rng_look, rng_cam = generators(seed, 3)
    h, w = shape
    radius = sty.fov_fraction * min(h, w) / 2.0
    centre = ((h - 1) / 2.0, (w - 1) / 2.0)
    tree = grow_trees(rng_eye)
    cov, depth, artery = rasterise_tree(tree, shape, centre, radius)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    nx, ny = (xx - centre[1]) / radius, (yy - centre[0]) / radius
    rr = np.hypot(nx, ny)
    fov = rr <= 1.0
    if sty.flat_cut > 0:
        fov &= np.abs(ny) <= 1.0 - sty.flat_cut
    if sty.notch > 0:  # square notch centred on the rim at 45 degrees, upper right
        c = np.sqrt(0.5)
        fov &= ~((np.abs(nx - c) < sty.notch) & (np.abs(ny + c) < sty.notch))
    labels = ((cov >= 0.5) & fov).astype(np.uint8)
    scale = min(h, w) / 256.0

    # illumination: off-centre light, vignetting, low-frequency unevenness, shadow crescent
    lx, ly = rng_look.normal(0, 0.2, 2)
    light = 1.0 - sty.vignetting * np.clip(np.hypot(nx - lx, ny - ly) / 1.3, 0, 1) ** 1.6
    light = light * (1 + sty.uneven * smooth_noise(rng_look, shape, 0.35 * radius))
    if sty.shadow > 0:
        sa = rng_look.uniform(0, 2 * np.pi)
        along = nx * np.cos(sa) + ny * np.sin(sa)
        light = light * (1 - sty.shadow * smooth_step01((along - 0.35) / 0.6))
    fundus = np.asarray(sty.fundus, np.float32)
    img = fundus * light[..., None]
    # choroid: fine mottling everywhere; broad tigroid vessels where tessellated
    mott = 0.03 * smooth_noise(rng_look, shape, 1.5 * scale) + 0.04 * smooth_noise(rng_look, shape, 6 * scale)
    img = img * (1 + mott[..., None])
    if sty.tessellation > 0:
        ridge = np.abs(smooth_noise(rng_look, shape, 9.0 * scale))
        tigroid = smooth_step01((0.35 - ridge) / 0.35)
        img = img * (1 - sty.tessellation * (1 - tigroid)[..., None] * np.array([0.15, 0.6, 0.6], np.float32))
    # macula and foveal reflex
    fx, fy = tree.fovea
    dm = np.hypot(nx - fx, ny - fy)
    img = img * (1 - 0.35 * np.exp(-((dm / 0.16) ** 2)))[..., None]
    img = img + 60 * np.exp(-((dm / 0.012) ** 2))[..., None]
    # optic disc, cup, peripapillary crescent
    dx_, dy_ = tree.disc
    dd = np.hypot((nx - dx_) / tree.disc_radius, (ny - dy_) / (1.08 * tree.disc_radius))
    cdr = rng_look.uniform(0.3, 0.65)
    disc_w = smooth_step01((1.0 - dd) / 0.2)[..., None]
    cup_w = smooth_step01((cdr - dd) / 0.15)[..., None]
    crescent = smooth_step01((1.35 - dd) / 0.2) * (1 - disc_w[..., 0]) * (np.sign(dx_) * (dx_ - nx) > 0)
    img = img * (1 - 0.5 * crescent[..., None]) + np.array([230, 190, 150], np.float32) * 0.5 * crescent[..., None]
    img = img * (1 - disc_w) + np.array([250, 200, 120], np.float32) * disc_w * (0.8 + 0.2 * light[..., None])
    img = img * (1 - cup_w) + np.array([255, 245, 215], np.float32) * cup_w
    # lesions (ground truth background)
    cxp, cyp = centre[1] + fx * radius, centre[0] + fy * radius
    area = (radius / 120.0) ** 2
    n_h = rng_look.poisson(sty.haemorrhages * area)
    haem = _blobs(rng_look, shape, n_h, (cxp, cyp, 0.5 * radius), (1.5 * scale, 5 * scale),
                  elongate=2.0, around=(centre[1] + dx_ * radius, centre[0] + dy_ * radius), fov=fov)  # fmt: skip
    micro = _blobs(rng_look, shape, rng_look.poisson(sty.haemorrhages * area), (cxp, cyp, 0.4 * radius),
                   (0.8 * scale, 1.4 * scale), fov=fov)  # fmt: skip
    exud = _blobs(rng_look, shape, rng_look.poisson(sty.exudates * area / 3), (cxp, cyp, 0.3 * radius),
                  (0.8 * scale, 2.0 * scale), cluster=5, fov=fov)  # fmt: skip
    drus = _blobs(rng_look, shape, rng_look.poisson(sty.drusen * area), (cxp, cyp, 0.25 * radius),
                  (1.0 * scale, 2.5 * scale), fov=fov)  # fmt: skip
    cws = _blobs(rng_look, shape, rng_look.poisson(sty.cotton_wool * area), (cxp, cyp, 0.5 * radius),
                 (3 * scale, 6 * scale), elongate=1.4, fov=fov)  # fmt: skip
    red = np.maximum(haem, micro)[..., None]
    img = img * (1 - 0.65 * red * np.array([0.45, 0.85, 0.8], np.float32))
    img = img * (1 - 0.6 * exud[..., None]) + np.array([255, 235, 120], np.float32) * 0.6 * exud[..., None]
    img = img * (1 - 0.4 * drus[..., None]) + np.array([240, 215, 140], np.float32) * 0.4 * drus[..., None]
    img = img * (1 - 0.45 * cws[..., None]) + np.array([245, 230, 210], np.float32) * 0.45 * cws[..., None]
    # vessels: veins darker than arteries; wide arteries show a central light reflex
    absorb = np.asarray(sty.vessel_absorb, np.float32)
    strength = np.where(artery > 0, 0.65, 1.0) * depth
    reflex = artery * np.clip(depth - 0.8, 0, 1) * 2.0
    img = img * (1 - np.clip(strength - 0.5 * reflex, 0, 1)[..., None] * absorb)
    # rim glare: a bright bluish crescent just inside the field of view
    if sty.glare > 0:
        ga = rng_look.uniform(0, 2 * np.pi)
        ang = np.arctan2(ny, nx)
        band = np.exp(-((1 - rr) / 0.06) ** 2) * np.exp(-(np.angle(np.exp(1j * (ang - ga))) / 0.9) ** 2)
        img = img + sty.glare * 120 * band[..., None] * np.array([0.8, 0.9, 1.0], np.float32)
    # field of view: dark outside, a soft two-pixel edge
    edge = ndi.gaussian_filter(fov.astype(np.float32), 1.0)
    img = img * edge[..., None] + 4.0
    # camera
    x = 255.0 * np.clip(img / 255.0, 0, 1) ** np.float32(sty.gamma)
    if sty.blur > 0:
        x = ndi.gaussian_filter(x, (sty.blur * scale, sty.blur * scale, 0))
    if sty.sharpen > 0:
        x = x + sty.sharpen * (x - ndi.gaussian_filter(x, (1.2 * scale, 1.2 * scale, 0)))
    lum = sty.noise * rng_cam.standard_normal(shape, dtype=np.float32)
    x = x + lum[..., None] * np.sqrt(np.clip(x, 1, 255) / 255.0) + (sty.noise / 3) * rng_cam.standard_normal(x.shape, dtype=np.float32)
    out = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    if sty.jpeg_quality is not None:
        out = jpeg_codec(out, sty.jpeg_quality, 2)
    lesions = {"haemorrhage": np.maximum(haem, micro) > 0.5, "exudate": exud > 0.5,
               "drusen": drus > 0.5, "cotton_wool": cws > 0.5}  # fmt: skip
    return out, labels, fov, {k: v & fov for k, v in lesions.items()}
