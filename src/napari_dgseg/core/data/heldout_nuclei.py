"""A second, independent H&E nuclei renderer used only to evaluate (never to train or tune).

A model, a colour normaliser or a classical threshold tuned on the training renderer
(:mod:`.synthetic_nuclei`) can fit that renderer's quirks without anyone noticing. This module
draws H&E tiles in a deliberately different way, written without that renderer's code, so a
score measured here says how a method copes with an image generator it has never seen:

* **Geometry.** Nuclei are smoothed random star-convex polygons (5-9 vertices at random angles
  and radii, the radius function low-pass filtered around the circle), some with a kidney-shaped
  indentation, stretched and rotated. The tissue is laid out as glands (columnar nuclei on a ring
  round a lumen, in collagen stroma), solid sheets (a jittered hexagonal lattice of pleomorphic
  nuclei with perinuclear halos and retraction cracks) or lymphoid tissue (dense small round
  nuclei). Overlaps resolve by painting order (the nucleus drawn first is on top); a nucleus
  split into pieces keeps its largest 4-connected piece, so each instance is one region.
* **Texture.** Four chromatin patterns per nucleus: granular clumps, margination along the
  membrane, solid hyperchromasia and vesicular with one large nucleolus.
* **Stain model.** Spectral, not RGB Beer-Lambert: three stains (haematoxylin, eosin and a
  brown pigment) with absorbance *spectra* (Gaussian bands, peak wavelengths set per style and
  jittered per tile), a black-body light source, Gaussian camera sensitivities, white balance on
  the glass, then a gamma tone curve with an S-shaped contrast term.
* **Scanner.** Vignetting, lateral chromatic aberration (red and blue magnified differently),
  anisotropic blur, unsharp-mask sharpening (halos), out-of-focus patches, colour-correlated
  noise, a tile-stitching seam and JPEG at qualities and chroma subsamplings the training
  renderer does not use.
* **Confounders** (ground truth = background): red blood cells, keratin pearls, dense collagen,
  fat vacuoles, tissue folds (a darker double layer), pigment granules and dust.

Pixel scale matches the training renderer (about 0.25 um per pixel, "40x"): nucleus radii span
5-16 px. Everything is deterministic per seed (:class:`numpy.random.Generator` streams spawned
from the seed).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import label as cc_label

from napari_dgseg.core.data._synth_common import (
    as_shape,
    check_seed,
    generators,
    lookup_domain,
    smooth_noise,
)

MIN_INSTANCE_AREA = 20  # pixels; smaller pieces (tile borders, occlusion) become background
_WAVELENGTHS = np.arange(400.0, 701.0, 10.0, dtype=np.float64)  # nm


@dataclass(frozen=True)
class HeldoutNucleiStyle:
    """One evaluation-only H&E style of the held-out renderer.

    Attributes
    ----------
    name : str
        Style name (key in :data:`HELDOUT_NUCLEI_STYLES`); all start with ``ho-``.
    description : str
        One line for humans.
    layout : str
        ``"glands"``, ``"sheets"`` or ``"lymphoid"``.
    h_peak_nm, e_peak_nm : float
        Peak absorbance wavelength of haematoxylin (broad band) and eosin (narrow band), nm.
    h_amount, e_amount : float
        Stain uptake multipliers.
    colour_temperature : float
        Black-body temperature of the light source, kelvin (white balance is then done on the
        glass, so this changes the rendering of stains, not of the glass).
    camera_shift_nm : float
        Shift of all three camera sensitivity peaks (a different sensor), nm.
    white : (float, float, float)
        RGB of empty glass after the tone curve, 0..255.
    gamma : float
        Tone curve exponent on the linear transmission (``< 1`` brightens, like sRGB encoding).
    contrast : float
        Strength of the S-shaped contrast term, 0 = none.
    vignetting : float
        Brightness lost in the corners, fraction.
    chromatic_aberration : float
        Relative magnification of red (``1 + ca``) and blue (``1 - ca``) about the tile centre.
    blur : (float, float, float)
        Anisotropic point spread: sigma along, sigma across (px), angle (degrees).
    sharpen : float
        Unsharp-mask amount (0 = none); produces halos at edges.
    defocus_patches : float
        Fraction of the tile covered by out-of-focus patches.
    noise : float
        Luminance noise sigma (grey levels); chroma noise is a third of it.
    seam : float
        Brightness step of a tile-stitching seam (fraction), 0 = none.
    jpeg_quality : int or None
        JPEG quality, None for lossless.
    jpeg_subsampling : int
        Pillow chroma subsampling code: 0 = 4:4:4, 1 = 4:2:2, 2 = 4:2:0.
    confounders : float
        Multiplier of how many confounders (red cells, keratin, fat, folds, pigment...) appear.
    """

    name: str
    description: str
    layout: str = "sheets"
    h_peak_nm: float = 585.0
    e_peak_nm: float = 525.0
    h_amount: float = 1.0
    e_amount: float = 1.0
    colour_temperature: float = 5200.0
    camera_shift_nm: float = 0.0
    white: tuple[float, float, float] = (244.0, 242.0, 246.0)
    gamma: float = 0.6
    contrast: float = 0.15
    vignetting: float = 0.0
    chromatic_aberration: float = 0.0
    blur: tuple[float, float, float] = (0.0, 0.0, 0.0)
    sharpen: float = 0.0
    defocus_patches: float = 0.0
    noise: float = 2.0
    seam: float = 0.0
    jpeg_quality: int | None = None
    jpeg_subsampling: int = 0
    confounders: float = 1.0


HELDOUT_NUCLEI_STYLES: dict[str, HeldoutNucleiStyle] = {
    s.name: s
    for s in (
        HeldoutNucleiStyle(
            name="ho-pale",
            description="faint stain on a cool LED scanner: glands, low contrast, vignetting",
            layout="glands",
            h_peak_nm=595.0,
            e_peak_nm=530.0,
            h_amount=0.5,
            e_amount=0.45,
            colour_temperature=7500.0,
            white=(250.0, 252.0, 255.0),
            gamma=0.55,
            contrast=0.0,
            vignetting=0.22,
            blur=(1.0, 0.6, 30.0),
            noise=2.5,
        ),
        HeldoutNucleiStyle(
            name="ho-dark-blue",
            description="heavy blue haematoxylin, dense eosin, sharpening halos, stitching seam",
            layout="sheets",
            h_peak_nm=610.0,
            e_peak_nm=520.0,
            h_amount=1.7,
            e_amount=1.4,
            colour_temperature=4200.0,
            camera_shift_nm=-8.0,
            white=(232.0, 234.0, 242.0),
            gamma=0.7,
            contrast=0.3,
            sharpen=1.2,
            noise=3.5,
            seam=0.06,
        ),
        HeldoutNucleiStyle(
            name="ho-faded-jpeg",
            description="faded, yellowed slide: weak eosin, astigmatic blur, colour fringes, JPEG q18",
            layout="sheets",
            h_peak_nm=575.0,
            e_peak_nm=535.0,
            h_amount=0.8,
            e_amount=0.35,
            colour_temperature=3400.0,
            camera_shift_nm=6.0,
            white=(246.0, 238.0, 214.0),
            gamma=0.62,
            chromatic_aberration=0.012,
            blur=(2.2, 0.7, -50.0),
            defocus_patches=0.25,
            noise=1.5,
            jpeg_quality=18,
            jpeg_subsampling=1,
        ),
        HeldoutNucleiStyle(
            name="ho-confounders",
            description="ordinary stain crowded with red cells, keratin, collagen, fat, folds, pigment",
            layout="glands",
            h_amount=1.1,
            e_amount=1.15,
            colour_temperature=5000.0,
            white=(246.0, 243.0, 245.0),
            vignetting=0.08,
            blur=(0.7, 0.7, 0.0),
            defocus_patches=0.12,
            noise=2.0,
            jpeg_quality=70,
            jpeg_subsampling=0,
            confounders=3.0,
        ),
        HeldoutNucleiStyle(
            name="ho-lymphoid",
            description="lymph node: dense small round dark nuclei, purple-pink, mild JPEG",
            layout="lymphoid",
            h_peak_nm=590.0,
            e_peak_nm=524.0,
            h_amount=1.25,
            e_amount=0.8,
            colour_temperature=5600.0,
            white=(240.0, 236.0, 244.0),
            gamma=0.65,
            contrast=0.2,
            blur=(0.8, 0.5, 70.0),
            noise=2.5,
            jpeg_quality=55,
            jpeg_subsampling=2,
            confounders=0.7,
        ),
    )
}
DEFAULT_HELDOUT_NUCLEI_STYLE = "ho-pale"


def get_heldout_nuclei_style(style: str) -> HeldoutNucleiStyle:
    """Look up a held-out nuclei style; unknown names raise an error listing the valid ones."""
    return lookup_domain(HELDOUT_NUCLEI_STYLES, "held-out nuclei", style)


# ------------------------------------------------------------------------------------ geometry


@dataclass
class _Nucleus:
    cy: float
    cx: float
    radius: float  # mean radius, px
    aspect: float  # >= 1, stretch along the angle
    angle: float  # radians
    texture: int  # 0 granular, 1 marginated, 2 solid, 3 vesicular
    darkness: float  # chromatin amount multiplier


def _star_radii(rng: np.random.Generator, n_angles: int = 64) -> np.ndarray:
    """Radius function ``r(phi)`` (mean 1) of a smoothed random star-convex polygon."""
    m = int(rng.integers(5, 10))
    vert_ang = np.sort(rng.uniform(0, 2 * np.pi, m))
    vert_r = rng.uniform(0.75, 1.2, m)
    phi = np.linspace(0, 2 * np.pi, n_angles, endpoint=False)
    # polygon radius along each ray: interpolate the vertices' Cartesian positions linearly
    ang = np.r_[vert_ang, vert_ang[0] + 2 * np.pi]
    rad = np.r_[vert_r, vert_r[0]]
    phi_w = np.where(phi < vert_ang[0], phi + 2 * np.pi, phi)
    k = np.clip(np.searchsorted(ang, phi_w) - 1, 0, m - 1)
    a0, a1 = ang[k], ang[k + 1]
    p0 = np.stack([rad[k] * np.cos(a0), rad[k] * np.sin(a0)], -1)
    p1 = np.stack([rad[k + 1] * np.cos(a1), rad[k + 1] * np.sin(a1)], -1)
    d = np.stack([np.cos(phi_w), np.sin(phi_w)], -1)
    e = p1 - p0
    # ray t*d meets p0 + s*e: solve the 2x2 system by Cramer's rule
    det = d[:, 0] * (-e[:, 1]) - d[:, 1] * (-e[:, 0])
    t = (p0[:, 0] * (-e[:, 1]) - p0[:, 1] * (-e[:, 0])) / np.where(np.abs(det) < 1e-9, 1e-9, det)
    r = np.clip(t, 0.5, 1.5)
    r = ndi.gaussian_filter1d(r, 2.5, mode="wrap")
    if rng.random() < 0.25:  # kidney-shaped indentation
        centre = rng.uniform(0, 2 * np.pi)
        dphi = np.angle(np.exp(1j * (phi - centre)))
        r = r * (1 - rng.uniform(0.15, 0.3) * np.exp(-(dphi**2) / 0.25))
    return r / r.mean()


def _paint_nuclei(
    nuclei: list[_Nucleus], shape: tuple[int, int], blocked: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, list[_Nucleus]]:
    """Rasterise nuclei in order (earlier on top); returns instance labels and kept nuclei."""
    h, w = shape
    labels = np.zeros(shape, np.int32)
    kept: list[_Nucleus] = []
    n_ang = 64
    for nuc in nuclei:
        radii = _star_radii(rng, n_ang)
        reach = nuc.radius * nuc.aspect * 1.6 + 2
        y0, y1 = max(0, int(nuc.cy - reach)), min(h, int(nuc.cy + reach) + 1)
        x0, x1 = max(0, int(nuc.cx - reach)), min(w, int(nuc.cx + reach) + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        dy, dx = yy - nuc.cy, xx - nuc.cx
        ca, sa = np.cos(nuc.angle), np.sin(nuc.angle)
        u = (dx * ca + dy * sa) / nuc.aspect
        v = -dx * sa + dy * ca
        rho = np.hypot(u, v)
        phi = np.mod(np.arctan2(v, u), 2 * np.pi)
        pos = phi / (2 * np.pi) * n_ang
        i0 = np.floor(pos).astype(int) % n_ang
        f = pos - np.floor(pos)
        bound = (radii[i0] * (1 - f) + radii[(i0 + 1) % n_ang] * f) * nuc.radius
        inside = (rho <= bound) & (labels[y0:y1, x0:x1] == 0) & ~blocked[y0:y1, x0:x1]
        if inside.sum() < MIN_INSTANCE_AREA:
            continue
        kept.append(nuc)
        labels[y0:y1, x0:x1][inside] = len(kept)
    return labels, kept


def _one_piece_per_instance(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep each id's largest 4-connected piece (>= MIN_INSTANCE_AREA px); relabel 1..m.

    Returns the new labels and the old ids (1-based) that survived, in new-id order.
    """
    pieces = cc_label(labels, background=0, connectivity=1)
    n_pieces = int(pieces.max())
    if n_pieces == 0:
        return labels, np.zeros(0, np.int64)
    owner = np.zeros(n_pieces + 1, np.int64)
    owner[pieces.ravel()] = labels.ravel()
    area = np.bincount(pieces.ravel(), minlength=n_pieces + 1)
    best = np.zeros(n + 1, np.int64)
    best_area = np.zeros(n + 1, np.int64)
    for p in np.argsort(area[1:], kind="stable")[::-1] + 1:
        o = owner[p]
        if best[o] == 0 and area[p] >= MIN_INSTANCE_AREA:
            best[o], best_area[o] = p, area[p]
    keep = np.zeros(n_pieces + 1, np.int32)
    ids = np.flatnonzero(best[1:]) + 1
    keep[best[ids]] = np.arange(1, ids.size + 1, dtype=np.int32)
    return keep[pieces], ids


def _lattice(
    rng: np.random.Generator, shape: tuple[int, int], spacing: float, jitter: float
) -> np.ndarray:
    """Jittered hexagonal lattice of points ``(N, 2)`` (y, x) covering ``shape`` with margin."""
    h, w = shape
    rows = np.arange(-spacing, h + spacing, spacing * np.sqrt(3) / 2)
    pts = []
    off = rng.uniform(0, spacing)
    for i, y in enumerate(rows):
        xs = np.arange(-spacing, w + spacing, spacing) + off + (spacing / 2 if i % 2 else 0)
        pts.append(np.stack([np.full_like(xs, y), xs], -1))
    p = np.concatenate(pts)
    return p + rng.normal(0, jitter, p.shape)


@dataclass
class _Tissue:
    labels: np.ndarray  # int32 instance ids
    nuclei: list[_Nucleus]
    glass: np.ndarray  # float32 1 = empty glass (lumen, cracks, outside tissue)
    epithelium: np.ndarray  # float32 1 = cytoplasm of epithelial / tumour cells
    stroma: np.ndarray  # float32 1 = collagen stroma
    halo: np.ndarray  # float32 1 = perinuclear clear halo
    fibre_angle: float
    blocked: np.ndarray  # bool, where confounders sit (no nuclei)
    confounder_maps: dict[str, np.ndarray]


def _confounder_regions(
    rng: np.random.Generator, shape: tuple[int, int], amount: float
) -> dict[str, np.ndarray]:
    """Where keratin pearls, fat vacuoles, red cells and dense collagen sit (float maps 0..1)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    area_scale = h * w / 256.0**2
    out = {k: np.zeros(shape, np.float32) for k in ("keratin", "fat", "rbc", "collagen")}
    # keratin pearls: concentric whorls of glassy eosinophilic keratin
    for _ in range(rng.poisson(0.12 * amount * area_scale)):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(28, 60)
        d = np.hypot((yy - cy) / rng.uniform(0.8, 1.0), xx - cx) / r
        ring = 0.35 + 0.65 * np.cos(2 * np.pi * d * rng.uniform(3, 6)) ** 2
        out["keratin"] = np.maximum(out["keratin"], np.where(d < 1, ring * (1 - d**4), 0))
    # fat: a cluster of large empty vacuoles separated by thin membranes
    for _ in range(rng.poisson(0.08 * amount * area_scale)):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        pts = np.array([cy, cx]) + rng.normal(0, 45, (int(rng.integers(3, 7)), 2))
        d = np.stack([np.hypot(yy - py, xx - px) for py, px in pts])
        d.sort(axis=0)
        inside = d[0] < rng.uniform(45, 80)
        membrane = (d[1] - d[0]) < 2.0
        out["fat"] = np.maximum(out["fat"], (inside & ~membrane).astype(np.float32))
    # red blood cells: clusters along a capillary track
    for _ in range(rng.poisson(0.5 * amount * area_scale)):
        y, x = rng.uniform(0, h), rng.uniform(0, w)
        ang = rng.uniform(0, 2 * np.pi)
        for _ in range(int(rng.integers(3, 12))):
            r = rng.uniform(9, 13)
            d = np.hypot(yy - y, xx - x) / r
            biconcave = np.where(d < 1, 0.55 + 0.45 * smooth_step01((d - 0.2) / 0.55), 0)
            out["rbc"] = np.maximum(out["rbc"], biconcave * (d < 1))
            ang += rng.normal(0, 0.4)
            y, x = y + 1.7 * r * np.sin(ang), x + 1.7 * r * np.cos(ang)
    # dense collagen: broad hyalinised bands
    for _ in range(rng.poisson(0.35 * amount * area_scale)):
        ang = rng.uniform(0, np.pi)
        off = rng.uniform(-0.5, 0.5) * max(h, w)
        dist = (xx - w / 2) * np.sin(ang) - (yy - h / 2) * np.cos(ang) - off
        width = rng.uniform(12, 35)
        out["collagen"] = np.maximum(out["collagen"], smooth_step01(1 - np.abs(dist) / width))
    return out


def smooth_step01(x: np.ndarray) -> np.ndarray:
    """Hermite step of ``x`` clipped to [0, 1] (0 below 0, 1 above 1)."""
    t = np.clip(x, 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _make_tissue(
    rng: np.random.Generator, shape: tuple[int, int], style: HeldoutNucleiStyle
) -> _Tissue:
    """Lay out glands, sheets or lymphoid tissue, confounders first, then the nuclei."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    conf = _confounder_regions(rng, shape, style.confounders)
    blocked = (
        (conf["keratin"] > 0.05) | (conf["fat"] > 0) | (conf["rbc"] > 0.05) | (conf["collagen"] > 0.5)
    )
    glass = np.zeros(shape, np.float32)
    epithelium = np.zeros(shape, np.float32)
    stroma = np.ones(shape, np.float32)
    fibre_angle = float(rng.uniform(0, np.pi))
    nuclei: list[_Nucleus] = []

    def nucleus(cy, cx, r, aspect, angle, dark_lo=0.8, dark_hi=1.2, textures=(0, 1, 2, 3)):
        return _Nucleus(cy, cx, r, aspect, angle, int(rng.choice(textures)),
                        float(rng.uniform(dark_lo, dark_hi)))  # fmt: skip

    if style.layout == "glands":
        n_glands = max(1, int(round(h * w / 140.0**2 * rng.uniform(0.7, 1.3))))
        for _ in range(n_glands):
            cy, cx = rng.uniform(-0.1 * h, 1.1 * h), rng.uniform(-0.1 * w, 1.1 * w)
            ry, rx = rng.uniform(30, 75), rng.uniform(30, 75)
            rot = rng.uniform(0, np.pi)
            dy, dx = yy - cy, xx - cx
            u = (dx * np.cos(rot) + dy * np.sin(rot)) / rx
            v = (-dx * np.sin(rot) + dy * np.cos(rot)) / ry
            wob = 1 + 0.12 * smooth_noise(rng, shape, 12.0)
            d = np.hypot(u, v) * wob
            depth = rng.uniform(0.45, 0.6)  # inner edge of the epithelium (fraction of radius)
            epithelium = np.maximum(epithelium, ((d < 1.0) & (d >= depth)).astype(np.float32))
            glass = np.maximum(glass, (d < depth - 0.05).astype(np.float32) * 0.9)
            # columnar nuclei on a ring, long axis radial, basal (outer) third of the cell
            ring = depth + (1 - depth) * rng.uniform(0.55, 0.75)
            perim = np.pi * (rx + ry) * ring
            count = int(perim / rng.uniform(11, 15))
            for t in np.linspace(0, 2 * np.pi, count, endpoint=False) + rng.uniform(0, 1):
                t2 = t + rng.normal(0, 0.03)
                lu, lv = ring * np.cos(t2) * rx, ring * np.sin(t2) * ry
                py = cy + lu * np.sin(rot) + lv * np.cos(rot) + rng.normal(0, 1.5)
                px = cx + lu * np.cos(rot) - lv * np.sin(rot) + rng.normal(0, 1.5)
                radial = np.arctan2(py - cy, px - cx)
                nuclei.append(nucleus(py, px, rng.uniform(5.5, 8.0), rng.uniform(1.4, 2.0), radial))
        stroma = 1.0 - np.maximum(epithelium, glass)
        # stromal nuclei: spindle fibroblasts and scattered lymphocytes
        for _ in range(int(h * w / 1500.0)):
            py, px = rng.uniform(0, h), rng.uniform(0, w)
            if stroma[int(py), int(px)] < 0.5:
                continue
            if rng.random() < 0.6:
                nuclei.append(nucleus(py, px, rng.uniform(4.0, 5.5), rng.uniform(2.2, 3.2),
                                      fibre_angle + rng.normal(0, 0.25), textures=(2,)))  # fmt: skip
            else:
                nuclei.append(nucleus(py, px, rng.uniform(5.0, 6.5), 1.05, 0.0, 1.2, 1.5, (2,)))
    elif style.layout == "sheets":
        epithelium[:] = 1.0
        stroma[:] = 0.0
        pts = _lattice(rng, shape, rng.uniform(26, 32), 3.5)
        pleo = rng.uniform(0.15, 0.3)
        for py, px in pts[rng.permutation(len(pts))]:
            if rng.random() < 0.12:
                continue
            r = float(np.clip(rng.lognormal(np.log(10.5), pleo), 7.0, 16.0))
            nuclei.append(nucleus(py, px, r, rng.uniform(1.0, 1.5), rng.uniform(0, np.pi)))
        # retraction cracks: thin white gaps through the sheet
        crack = np.abs(smooth_noise(rng, shape, 30.0)) < rng.uniform(0.03, 0.06)
        glass = np.maximum(glass, ndi.binary_dilation(crack, iterations=1).astype(np.float32))
        septum = np.abs(smooth_noise(rng, shape, 45.0)) < 0.12  # thin fibrous septa
        stroma = np.maximum(stroma, septum.astype(np.float32))
        epithelium = epithelium * (1 - stroma)
    else:  # lymphoid
        epithelium[:] = 0.4
        stroma[:] = 0.0
        pts = _lattice(rng, shape, rng.uniform(15.5, 18.0), 2.2)
        for py, px in pts[rng.permutation(len(pts))]:
            u = rng.random()
            if u < 0.1:
                continue
            if u < 0.22:  # a few large pale centroblasts
                nuclei.append(nucleus(py, px, rng.uniform(8.5, 11), rng.uniform(1.0, 1.3),
                                      rng.uniform(0, np.pi), 0.7, 0.9, (1, 3)))  # fmt: skip
            else:
                nuclei.append(nucleus(py, px, rng.uniform(5.0, 7.0), rng.uniform(1.0, 1.15),
                                      rng.uniform(0, np.pi), 1.1, 1.5, (0, 2)))  # fmt: skip
    # empty glass at a tile edge in some tiles (tissue border)
    if rng.random() < 0.35:
        ang = rng.uniform(0, 2 * np.pi)
        dist = (xx - w / 2) * np.cos(ang) + (yy - h / 2) * np.sin(ang) - rng.uniform(0.2, 0.45) * max(h, w)
        dist = dist + 10 * smooth_noise(rng, shape, 20.0)
        glass = np.maximum(glass, (dist > 0).astype(np.float32))
    blocked = blocked | (glass > 0.5)
    labels, kept = _paint_nuclei(nuclei, shape, blocked, rng)
    labels, survivors = _one_piece_per_instance(labels, len(kept))
    kept = [kept[i - 1] for i in survivors]  # nucleus k describes instance k + 1
    halo = np.zeros(shape, np.float32)
    if style.layout == "sheets":
        grown = ndi.grey_dilation(labels, size=5)
        halo = ((grown > 0) & (labels == 0)).astype(np.float32) * (
            smooth_noise(rng, shape, 6.0) > 0.3
        )
    return _Tissue(labels, kept, glass, epithelium, stroma, halo, fibre_angle, blocked, conf)


# ------------------------------------------------------------------------------- stains


def _chromatin(
    tissue: _Tissue, rng: np.random.Generator, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Haematoxylin and eosin concentration inside the nuclei (four chromatin patterns)."""
    labels = tissue.labels
    inside = labels > 0
    n = int(labels.max())
    c_h = np.zeros(shape, np.float32)
    c_e = np.zeros(shape, np.float32)
    if n == 0:
        return c_h, c_e
    edge = np.zeros(shape, bool)
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[1:] |= labels[:-1] != labels[1:]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:, 1:] |= labels[:, :-1] != labels[:, 1:]
    depth = ndi.distance_transform_edt(~edge).astype(np.float32)
    max_depth = ndi.maximum(depth, labels, index=np.arange(n + 1)).astype(np.float32)
    rel = np.where(inside, depth / np.maximum(max_depth[labels], 1.0), 0.0)  # 0 rim .. 1 centre
    tex = np.zeros(n + 1, np.int64)
    dark = np.zeros(n + 1, np.float32)
    for i, nuc in enumerate(tissue.nuclei[:n]):
        tex[i + 1], dark[i + 1] = nuc.texture, nuc.darkness
    t = tex[labels]
    k = dark[labels]
    fine = smooth_noise(rng, shape, 0.8)
    clump = (smooth_noise(rng, shape, 1.6) > 0.55).astype(np.float32)
    granular = 0.55 + 0.55 * clump + 0.1 * fine
    marginated = 0.45 + 0.75 * np.exp(-rel / 0.18) + 0.25 * clump + 0.08 * fine
    solid = 1.15 + 0.06 * fine
    nucleolus = np.exp(-((1 - rel) / 0.12) ** 2)
    vesicular = 0.35 + 0.6 * np.exp(-rel / 0.12) + 0.15 * clump + 0.9 * nucleolus
    pattern = np.choose(np.clip(t, 0, 3), [granular, marginated, solid, vesicular])
    soft = np.clip(rel * 3.0, 0.0, 1.0) * 0.3 + 0.7  # edges a little lighter (partial volume)
    c_h = np.where(inside, 0.8 * k * pattern * soft, 0.0).astype(np.float32)
    c_e = np.where(inside, 0.08 + 0.35 * nucleolus * (t == 3), 0.0).astype(np.float32)
    return c_h, c_e


def _concentrations(
    tissue: _Tissue, rng: np.random.Generator, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Haematoxylin, eosin and pigment concentrations, and where tissue is folded."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    conf = tissue.confounder_maps
    nuc_h, nuc_e = _chromatin(tissue, rng, shape)
    present = 1.0 - tissue.glass
    # cytoplasm: granular, slightly basophilic
    cyto = tissue.epithelium * (0.45 + 0.07 * smooth_noise(rng, shape, 1.2) + 0.05 * smooth_noise(rng, shape, 10.0))
    # collagen: wavy bands along one direction (a sine ruled surface warped by noise)
    warp = 14.0 * smooth_noise(rng, shape, 18.0) + 3.0 * smooth_noise(rng, shape, 4.0)
    phase = (xx * np.cos(tissue.fibre_angle) + yy * np.sin(tissue.fibre_angle) + warp) / rng.uniform(5, 8)
    bands = 0.5 + 0.5 * np.sin(2 * np.pi * phase)
    bands = bands**2 * (0.6 + 0.4 * smooth_noise(rng, shape, 6.0))
    collagen = tissue.stroma * (0.4 + 0.3 * bands + 0.05 * smooth_noise(rng, shape, 1.0))
    c_e = (cyto + collagen) * (1 - tissue.halo * 0.85)
    c_h = 0.06 * tissue.epithelium + 0.03 * tissue.stroma
    # confounders (ground truth background)
    c_e = np.maximum(c_e, 1.1 * conf["collagen"] * (0.85 + 0.15 * bands))
    c_h = c_h + 0.05 * conf["collagen"]
    ker = conf["keratin"]
    c_e = np.where(ker > 0, 0.7 + 0.6 * ker, c_e)
    c_h = np.where(ker > 0, 0.03, c_h)
    fat = conf["fat"]
    c_e = c_e * (1 - fat)
    c_h = c_h * (1 - fat)
    rbc = conf["rbc"]
    c_e = np.maximum(c_e, 1.6 * rbc)
    c_h = np.where(rbc > 0.05, 0.02, c_h)
    c_p = 0.08 * ker  # keratin is glassy orange: a little of the brown pigment
    c_h = c_h * present + nuc_h
    c_e = c_e * present + nuc_e
    c_p = c_p * present
    # pigment granules and dust (debris also on empty glass)
    n_specks = rng.poisson(1.5 * tissue_scale(shape) * tissue_conf(tissue))
    specks = np.zeros(shape, np.float32)
    for _ in range(n_specks):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        for _ in range(int(rng.integers(1, 8))):
            py, px = cy + rng.normal(0, 6), cx + rng.normal(0, 6)
            r = rng.uniform(1.0, 2.5)
            specks = np.maximum(specks, np.exp(-((yy - py) ** 2 + (xx - px) ** 2) / (2 * r * r)))
    specks[tissue.labels > 0] = 0.0  # granules lie beside the nuclei, not on them
    c_p = c_p + 1.2 * specks
    # tissue fold: a band where two layers overlap (all stains doubled, darker edges)
    fold = np.zeros(shape, np.float32)
    if rng.random() < 0.3 * tissue_conf(tissue):
        ang = rng.uniform(0, np.pi)
        off = rng.uniform(-0.35, 0.35) * max(h, w)
        dist = (xx - w / 2) * np.sin(ang) - (yy - h / 2) * np.cos(ang) - off
        dist = dist + 8 * smooth_noise(rng, shape, 30.0)
        width = rng.uniform(10, 28)
        fold = smooth_step01((width - np.abs(dist)) / 3.0)
        fold = fold * (1 - tissue.glass)
        c_h = c_h * (1 + 0.9 * fold) + 0.12 * fold
        c_e = c_e * (1 + 0.9 * fold) + 0.25 * fold
    return c_h, c_e, c_p, fold


def tissue_scale(shape: tuple[int, int]) -> float:
    """Tile area relative to a 256 x 256 tile."""
    return shape[0] * shape[1] / 256.0**2


def tissue_conf(tissue: _Tissue) -> float:
    """How confounder-rich a tile is (1 = ordinary), read back from its red cells and keratin."""
    conf = tissue.confounder_maps
    return 1.0 + 4.0 * float(conf["rbc"].mean() + conf["keratin"].mean() + conf["fat"].mean())


# ------------------------------------------------------------------------------- optics


def _band(peak: float, sigma: float) -> np.ndarray:
    return np.exp(-0.5 * ((_WAVELENGTHS - peak) / sigma) ** 2)


def _spectra(style: HeldoutNucleiStyle, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Stain absorbance spectra ``(3, L)`` and the camera's RGB weights ``(L, 3)``."""
    h_peak = style.h_peak_nm + rng.normal(0, 4)
    e_peak = style.e_peak_nm + rng.normal(0, 3)
    # haematoxylin (aluminium haematein): broad band with a shoulder on the short side;
    # eosin: narrow band with a vibronic shoulder; pigment (melanin-like): falls with wavelength
    a_h = 1.0 * _band(h_peak, 55) + 0.75 * _band(h_peak - 95, 55)
    a_e = 1.0 * _band(e_peak, 22) + 0.7 * _band(e_peak - 45, 28)
    a_p = np.exp(-(_WAVELENGTHS - 400) / 160.0)
    stains = np.stack([a_h / a_h.max(), a_e / a_e.max(), a_p])
    # Planck's law for the light source (relative), then Gaussian camera sensitivities
    lam = _WAVELENGTHS * 1e-9
    t = style.colour_temperature * rng.uniform(0.97, 1.03)
    planck = 1.0 / (lam**5 * (np.exp(1.4388e-2 / (lam * t)) - 1.0))
    planck /= planck.max()
    s = style.camera_shift_nm
    sens = np.stack([_band(605 + s, 32), _band(540 + s, 32), _band(455 + s, 28)], -1)
    weights = planck[:, None] * sens
    return stains, weights / weights.sum(axis=0, keepdims=True)


def _radial_resample(channel: np.ndarray, scale: float) -> np.ndarray:
    """Magnify one channel by ``scale`` about the tile centre (lateral chromatic aberration)."""
    h, w = channel.shape
    cy, cx = (h - 1) / 2, (w - 1) / 2
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    coords = np.stack([cy + (yy - cy) / scale, cx + (xx - cx) / scale])
    return ndi.map_coordinates(channel, coords, order=1, mode="reflect")


def _anisotropic_kernel(sigma_a: float, sigma_b: float, angle_deg: float) -> np.ndarray:
    """A normalised 2-D Gaussian kernel with sigmas along and across ``angle``."""
    sa, sb = max(sigma_a, 0.3), max(sigma_b, 0.3)
    half = int(np.ceil(3 * max(sa, sb)))
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    t = np.deg2rad(angle_deg)
    u = xx * np.cos(t) + yy * np.sin(t)
    v = -xx * np.sin(t) + yy * np.cos(t)
    k = np.exp(-0.5 * ((u / sa) ** 2 + (v / sb) ** 2))
    return (k / k.sum()).astype(np.float32)


def jpeg_codec(image: np.ndarray, quality: int, subsampling: int) -> np.ndarray:
    """JPEG round trip of an ``(H, W, 3)`` uint8 image with Pillow's ``subsampling`` code (0, 1, 2)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=int(quality), subsampling=subsampling)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def _scanner(
    conc: np.ndarray, style: HeldoutNucleiStyle, rng: np.random.Generator, shape: tuple[int, int]
) -> np.ndarray:
    """Concentrations ``(H, W, 3)`` -> 8-bit RGB through the spectral model and the optics."""
    h, w = shape
    stains, weights = _spectra(style, rng)
    amounts = np.array([style.h_amount, style.e_amount, 1.0], np.float32) * rng.uniform(0.92, 1.08, 3)
    od = (conc * amounts) @ stains.astype(np.float32)  # (H, W, L) optical density per wavelength
    lin = np.power(10.0, -od, dtype=np.float32) @ weights.astype(np.float32)  # (H, W, 3), glass = 1
    # optics on linear light: anisotropic blur, defocus patches, chromatic aberration
    if max(style.blur[:2]) > 0:
        k = _anisotropic_kernel(*style.blur)
        lin = np.stack([ndi.convolve(lin[..., c], k, mode="reflect") for c in range(3)], -1)
    if style.defocus_patches > 0:
        patch = smooth_step01((smooth_noise(rng, shape, 40.0) - _quantile_of_normal(style.defocus_patches)) / 0.4)
        soft = ndi.gaussian_filter(lin, (2.5, 2.5, 0))
        lin = lin * (1 - patch[..., None]) + soft * patch[..., None]
    if style.chromatic_aberration > 0:
        ca = style.chromatic_aberration
        lin = np.stack([_radial_resample(lin[..., 0], 1 + ca), lin[..., 1],
                        _radial_resample(lin[..., 2], 1 - ca)], -1)  # fmt: skip
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r2 = ((yy - (h - 1) / 2) / (h / 2)) ** 2 + ((xx - (w - 1) / 2) / (w / 2)) ** 2
    lin = lin * (1 - style.vignetting * r2 / 2)[..., None]
    if style.seam > 0:
        col = int(rng.integers(w // 4, 3 * w // 4))
        lin[:, col:] *= 1 - style.seam
    # tone curve: gamma encoding, then an S-shaped contrast term, then the white point
    x = np.clip(lin, 0, 1.2) ** np.float32(style.gamma)
    x = x + style.contrast * x * (1 - x) * (x - 0.5) * 4
    rgb = np.clip(x, 0, 1.2) * np.asarray(style.white, np.float32)
    if style.sharpen > 0:
        rgb = rgb + style.sharpen * (rgb - ndi.gaussian_filter(rgb, (1.5, 1.5, 0)))
    lum = style.noise * rng.standard_normal(shape, dtype=np.float32)
    chroma = (style.noise / 3) * rng.standard_normal((h, w, 3), dtype=np.float32)
    rgb = rgb + lum[..., None] + chroma
    out = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    if style.jpeg_quality is not None:
        out = jpeg_codec(out, style.jpeg_quality, style.jpeg_subsampling)
    return out


def _quantile_of_normal(fraction: float) -> float:
    """Threshold above which a standard normal field covers ``fraction`` of the tile."""
    from scipy.stats import norm

    return float(norm.ppf(1.0 - fraction))


# -------------------------------------------------------------------------------- public


def make_heldout_nuclei(
    size: int | tuple[int, int] = 256, style: str = DEFAULT_HELDOUT_NUCLEI_STYLE, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Render one held-out H&E tile and its nucleus instance labels (evaluation only).

    Parameters
    ----------
    size : int or (int, int)
        Tile edge or ``(H, W)``; the pixel scale is fixed (~0.25 um/px, nucleus radius 5-16 px).
    style : str
        One of :data:`HELDOUT_NUCLEI_STYLES`.
    seed : int
        Non-negative seed; the output is a pure function of ``(size, style, seed)``.

    Returns
    -------
    image : np.ndarray
        ``(H, W, 3)`` uint8 RGB.
    labels : np.ndarray
        ``(H, W)`` int32 instance ids ``1..n`` (0 background; every confounder is background);
        each instance is one 4-connected region of at least ``MIN_INSTANCE_AREA`` pixels.

    Raises
    ------
    InputError
        For an unknown style, a bad size or a negative seed.
    """
    sty = get_heldout_nuclei_style(style)
    shape = as_shape(size)
    seed = check_seed(seed)
    rng_layout, rng_stain, rng_scanner = generators(seed, 3)
    tissue = _make_tissue(rng_layout, shape, sty)
    c_h, c_e, c_p, _fold = _concentrations(tissue, rng_stain, shape)
    conc = np.stack([c_h, c_e, c_p], -1).astype(np.float32)
    image = _scanner(conc, sty, rng_scanner, shape)
    return image, tissue.labels.astype(np.int32)


def confounder_masks(
    size: int | tuple[int, int] = 256, style: str = DEFAULT_HELDOUT_NUCLEI_STYLE, seed: int = 0
) -> dict[str, np.ndarray]:
    """Where the confounders of a tile are (same tile as :func:`make_heldout_nuclei`).

    Returns
    -------
    dict
        ``{"keratin", "fat", "rbc", "collagen", "fold"}`` -> ``(H, W)`` bool masks. Used by the
        tests to check that confounders are labelled background, and to explain errors.
    """
    sty = get_heldout_nuclei_style(style)
    shape = as_shape(size)
    rng_layout, rng_stain, _ = generators(check_seed(seed), 3)
    tissue = _make_tissue(rng_layout, shape, sty)
    _, _, _, fold = _concentrations(tissue, rng_stain, shape)
    out = {k: v > 0.05 for k, v in tissue.confounder_maps.items()}
    out["fold"] = fold > 0.5
    return out
