"""Synthetic colour fundus photographs with vessel ground truth and field-of-view masks.

As for the nuclei, geometry and appearance use separate random streams spawned from the seed,
so the same seed gives the same eye in every camera domain:

1. **Geometry** (in units of the field-of-view radius, so it does not depend on the image size):
   the optic disc sits 0.5-0.65 radii nasal of the centre, the fovea ~0.67 radii temporal of the
   disc. Vessel trees grow from the disc as random walks with curvature: superior and inferior
   temporal arcades (an artery and a vein each) that arch around the macula, nasal trunks and a
   few small macular vessels. Widths taper along the vessel and split at branch points by
   Murray's law (``w^3 = w1^3 + w2^3``); growth stops below one pixel, at the fovea's avascular
   zone or outside the field of view.
2. **Rasterisation** on a 2x supersampled grid: the centrelines are binned by radius and each bin
   gets one Euclidean distance transform; coverage gives the labels, a smooth cross-section
   profile (with a central light reflex on wide arteries) gives the shading.
3. **Camera domain**: fundus colour, illumination falloff towards the rim (vignetting), vessel
   contrast and colour, disc colour, field-of-view size, gamma, blur, noise and JPEG.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from napari_dgseg.core.data._synth_common import (
    as_shape,
    camera,
    check_seed,
    generators,
    lookup_domain,
    smooth_noise,
    smoothstep,
)

VEIN, ARTERY = 0, 1
SUPERSAMPLE = 2
MIN_VESSEL_WIDTH_PX = 1.0  # vessels stop growing when they get thinner than this (output px)
_MAX_VESSELS = 600
_STEP = 0.012  # growth step in field-of-view radii


@dataclass(frozen=True)
class VesselDomain:
    """How one fundus camera renders the same eye.

    Attributes
    ----------
    name : str
        Domain name (the key in :data:`VESSEL_DOMAINS`).
    description : str
        One line for humans.
    background : (float, float, float)
        RGB of the fundus at the brightest point of the illumination, 0..255.
    disc_colour : (float, float, float)
        RGB of the optic disc rim.
    falloff : float
        Brightness at the rim of the field of view relative to its centre (vignetting).
    vessel_contrast : float
        Fraction of light absorbed at the centre of a wide vein.
    vessel_absorb : (float, float, float)
        Relative absorption of vessels in R, G, B (blood absorbs green and blue most).
    fov_fraction : float
        Radius of the circular field of view as a fraction of half the shorter image side.
    gamma : float
        Tone curve exponent applied to the normalised intensity (> 1 darkens mid-tones).
    blur_sigma : float
        Gaussian point-spread sigma in pixels.
    noise_sigma : float
        Sensor noise at full brightness, grey levels.
    jpeg_quality : int or None
        JPEG round-trip quality, None for lossless.
    """

    name: str
    description: str
    background: tuple[float, float, float] = (222.0, 98.0, 52.0)
    disc_colour: tuple[float, float, float] = (252.0, 222.0, 150.0)
    falloff: float = 0.5
    vessel_contrast: float = 0.62
    vessel_absorb: tuple[float, float, float] = (0.35, 0.9, 0.8)
    fov_fraction: float = 0.94
    gamma: float = 1.0
    blur_sigma: float = 0.0
    noise_sigma: float = 2.0
    jpeg_quality: int | None = None


VESSEL_DOMAINS: dict[str, VesselDomain] = {
    d.name: d
    for d in (
        VesselDomain(
            name="camera-a",
            description="reference camera: orange-red fundus, moderate vignetting, sharp, lossless",
        ),
        VesselDomain(
            name="camera-b",
            description="dim red-cast camera: dark periphery, higher gamma, noisy sensor",
            background=(200.0, 62.0, 26.0),
            disc_colour=(245.0, 190.0, 110.0),
            falloff=0.28,
            vessel_contrast=0.45,
            vessel_absorb=(0.45, 0.9, 0.7),
            fov_fraction=0.9,
            gamma=1.25,
            noise_sigma=5.0,
        ),
        VesselDomain(
            name="camera-c",
            description="bright yellowish camera: flat light, low vessel contrast, soft focus, JPEG",
            background=(238.0, 150.0, 78.0),
            disc_colour=(255.0, 240.0, 190.0),
            falloff=0.72,
            vessel_contrast=0.3,
            vessel_absorb=(0.3, 0.8, 0.9),
            fov_fraction=0.98,
            gamma=0.85,
            blur_sigma=1.2,
            noise_sigma=2.0,
            jpeg_quality=40,
        ),
        VesselDomain(
            name="handheld",
            description="hand-held smartphone adapter: small field of view, pink cast, noise, JPEG",
            background=(215.0, 112.0, 92.0),
            disc_colour=(250.0, 215.0, 185.0),
            falloff=0.4,
            vessel_contrast=0.38,
            vessel_absorb=(0.4, 0.85, 0.75),
            fov_fraction=0.8,
            gamma=1.05,
            blur_sigma=0.7,
            noise_sigma=6.0,
            jpeg_quality=60,
        ),
    )
}
DEFAULT_VESSEL_DOMAIN = "camera-a"


def get_vessel_domain(domain: str) -> VesselDomain:
    """Look up a vessel domain by name; unknown names raise :class:`InputError` listing the valid ones."""
    return lookup_domain(VESSEL_DOMAINS, "vessels", domain)


@dataclass
class Eye:
    """Geometry of one fundus in field-of-view units (FOV centre at 0, radius 1; y down).

    Attributes
    ----------
    disc : (float, float)
        Optic disc centre (x, y).
    disc_radius : float
        Optic disc radius.
    fovea : (float, float)
        Fovea centre (x, y).
    vessels : list of np.ndarray
        One ``(M, 3)`` float array per vessel: centreline x, y and width (diameter).
    kinds : list of int
        0 vein, 1 artery, per vessel.
    illum_offset : (float, float)
        Centre of the illumination spot.
    """

    disc: tuple[float, float]
    disc_radius: float
    fovea: tuple[float, float]
    vessels: list[np.ndarray]
    kinds: list[int]
    illum_offset: tuple[float, float]


def make_eye(rng: np.random.Generator, fov_radius_px: float) -> Eye:
    """Draw disc, fovea and vessel trees.

    Parameters
    ----------
    rng : numpy.random.Generator
        Geometry random stream.
    fov_radius_px : float
        Field-of-view radius in output pixels (sets where vessels get thinner than a pixel).

    Returns
    -------
    Eye
    """
    side = -1.0 if rng.random() < 0.5 else 1.0  # disc left (-1, a left eye) or right
    dx = rng.uniform(0.5, 0.65)
    disc = (-dx, rng.uniform(-0.06, 0.06))
    disc_radius = rng.uniform(0.1, 0.125)
    fovea = (disc[0] + rng.uniform(0.62, 0.72), disc[1] + rng.uniform(0.0, 0.08))
    min_w = MIN_VESSEL_WIDTH_PX / fov_radius_px

    # trunks: (angle, curvature, decay, width, kind); built for a disc on the left, mirrored after
    trunks: list[tuple[float, float, float, float, int]] = []
    for vert in (-1.0, 1.0):  # superior (y < 0), inferior
        for kind, w0, off in ((VEIN, 0.036, 0.0), (ARTERY, 0.027, 0.12)):
            a_t = vert * np.deg2rad(rng.uniform(50, 78)) - vert * off
            trunks.append(
                (
                    a_t,
                    -vert * rng.uniform(1.3, 2.1),
                    rng.uniform(0.5, 0.8),
                    w0 * rng.uniform(0.9, 1.1),
                    kind,
                )
            )
            a_n = vert * np.deg2rad(rng.uniform(110, 150)) + vert * off
            trunks.append((a_n, rng.normal(0, 0.5), 0.6, 0.75 * w0 * rng.uniform(0.85, 1.1), kind))
    for _ in range(rng.integers(2, 5)):  # small macular vessels
        kind = int(rng.integers(2))
        trunks.append(
            (
                np.deg2rad(rng.uniform(-30, 30)),
                rng.normal(0, 0.8),
                0.6,
                rng.uniform(0.006, 0.011),
                kind,
            )
        )

    vessels: list[np.ndarray] = []
    kinds: list[int] = []
    stack = []
    for angle, curv, decay, width, kind in trunks:
        start = (
            disc[0] + 0.3 * disc_radius * rng.uniform(-1, 1),
            disc[1] + 0.3 * disc_radius * rng.uniform(-1, 1),
        )
        stack.append((start[0], start[1], angle, curv, decay, width, kind))
    fx, fy = fovea
    while stack and len(vessels) < _MAX_VESSELS:
        x, y, angle, curv, decay, width, kind = stack.pop()
        pts = [(x, y, width)]
        length = 0.0
        branch_side = 1.0 if rng.random() < 0.5 else -1.0
        sq = np.sqrt(_STEP)
        while True:
            angle += curv * _STEP * np.exp(-length / decay) + 0.35 * sq * rng.standard_normal()
            x += _STEP * np.cos(angle)
            y += _STEP * np.sin(angle)
            width *= np.exp(-0.45 * _STEP)
            length += _STEP
            pts.append((x, y, width))
            if x * x + y * y > 1.03 or width < min_w or length > 1.8:
                break
            if (x - fx) ** 2 + (y - fy) ** 2 < 0.09**2:
                break
            if rng.random() < _STEP * 3.2:
                wc = width * rng.uniform(0.35, 0.8)
                width = max((width**3 - wc**3) ** (1.0 / 3.0), 0.6 * width)
                child = angle + branch_side * rng.uniform(0.45, 1.0)
                angle -= branch_side * rng.uniform(0.05, 0.2)
                stack.append((x, y, child, rng.normal(0, 0.6), 0.5, wc, kind))
                branch_side = -branch_side
        vessels.append(np.asarray(pts, dtype=np.float64))
        kinds.append(kind)

    if side > 0:  # mirror: disc on the right
        disc = (-disc[0], disc[1])
        fovea = (-fovea[0], fovea[1])
        for v in vessels:
            v[:, 0] *= -1
    illum_offset = (rng.uniform(-0.15, 0.15), rng.uniform(-0.15, 0.15))
    return Eye(disc, disc_radius, fovea, vessels, kinds, illum_offset)


def rasterise_vessels(
    eye: Eye, shape: tuple[int, int], centre: tuple[float, float], radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise the vessel trees (2x supersampled, then averaged down).

    Parameters
    ----------
    eye : Eye
        Geometry in field-of-view units.
    shape : (int, int)
        Output ``(H, W)``.
    centre : (float, float)
        Field-of-view centre (y, x) in output pixels.
    radius : float
        Field-of-view radius in output pixels.

    Returns
    -------
    coverage : np.ndarray
        ``(H, W)`` float32 in [0, 1], fraction of each pixel inside a vessel.
    absorb : np.ndarray
        ``(H, W)`` float32 in [0, 1], relative light absorption (cross-section profile times
        the width- and kind-dependent contrast).
    """
    ss = SUPERSAMPLE
    hs, ws = shape[0] * ss, shape[1] * ss
    cy, cx = centre
    xs, ys, rs, ks = [], [], [], []
    for pts, kind in zip(eye.vessels, eye.kinds, strict=True):
        # to supersampled pixel coordinates (pixel centres at integers)
        px = (cx + radius * pts[:, 0] + 0.5) * ss - 0.5
        py = (cy + radius * pts[:, 1] + 0.5) * ss - 0.5
        pr = pts[:, 2] * radius * ss / 2.0
        seg = np.hypot(np.diff(px), np.diff(py))
        cum = np.r_[0.0, np.cumsum(seg)]
        t = np.arange(0.0, cum[-1] + 1e-9, 0.5)
        xs.append(np.interp(t, cum, px))
        ys.append(np.interp(t, cum, py))
        rs.append(np.interp(t, cum, pr))
        ks.append(np.full(t.size, kind, dtype=np.int8))
    covered = np.zeros((hs, ws), bool)
    absorb = np.zeros((hs, ws), np.float32)
    if not xs:
        return np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    x = np.rint(np.concatenate(xs)).astype(np.intp)
    y = np.rint(np.concatenate(ys)).astype(np.intp)
    r = np.concatenate(rs).astype(np.float32)
    k = np.concatenate(ks)
    ok = (x >= 0) & (x < ws) & (y >= 0) & (y < hs)
    x, y, r, k = x[ok], y[ok], r[ok], k[ok]
    order = np.argsort(r, kind="stable")  # later (wider) writes win on shared pixels
    x, y, r, k = x[order], y[order], r[order], k[order]
    edges = (0.0, 1.5, 3.0, 5.0, np.inf)
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = (r >= lo) & (r < hi)
        if not sel.any():
            continue
        rad = np.zeros((hs, ws), np.float32)
        kin = np.zeros((hs, ws), np.int8)
        rad[y[sel], x[sel]] = r[sel]
        kin[y[sel], x[sel]] = k[sel]
        dist, (iy, ix) = ndi.distance_transform_edt(rad == 0, return_indices=True)
        rn = rad[iy, ix]
        kn = kin[iy, ix]
        dist = dist.astype(np.float32)
        cov = dist <= rn
        edge = rn + 0.5
        prof = smoothstep(edge - dist, 0.0, 1.0) * (1.0 - 0.35 * np.minimum(dist / edge, 1.0) ** 2)
        reflex = (kn == ARTERY) & (rn > 2.0)
        prof = np.where(
            reflex, prof * (1.0 - 0.45 * np.exp(-((dist / (0.3 * rn + 1e-6)) ** 2))), prof
        )
        strength = np.clip(rn / 2.5, 0.45, 1.0) * np.where(kn == ARTERY, 0.72, 1.0)
        np.maximum(absorb, prof * strength, out=absorb)
        covered |= cov
    coverage = covered.astype(np.float32).reshape(shape[0], ss, shape[1], ss).mean(axis=(1, 3))
    absorb = absorb.reshape(shape[0], ss, shape[1], ss).mean(axis=(1, 3))
    return coverage, absorb


def make_vessels(
    size: int | tuple[int, int] = 256, domain: str = DEFAULT_VESSEL_DOMAIN, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one synthetic fundus photograph with vessel labels and its field of view.

    Parameters
    ----------
    size : int or (int, int)
        Image edge, or ``(H, W)``.
    domain : str
        One of :data:`VESSEL_DOMAINS`.
    seed : int
        Non-negative seed; the output is a pure function of ``(size, domain, seed)``.

    Returns
    -------
    image : np.ndarray
        ``(H, W, 3)`` uint8 RGB.
    labels : np.ndarray
        ``(H, W)`` uint8, 1 = vessel, 0 = background; always 0 outside the field of view.
    fov : np.ndarray
        ``(H, W)`` bool circular field of view.

    Raises
    ------
    InputError
        For an unknown domain, a bad size or a negative seed.
    """
    dom = get_vessel_domain(domain)
    shape = as_shape(size)
    seed = check_seed(seed)
    rng_geom, rng_texture, rng_camera = generators(seed, 3)
    h, w = shape
    radius = dom.fov_fraction * min(h, w) / 2.0
    centre = ((h - 1) / 2.0, (w - 1) / 2.0)
    eye = make_eye(rng_geom, radius)
    coverage, absorb = rasterise_vessels(eye, shape, centre, radius)

    ny = (np.arange(h, dtype=np.float32)[:, None] - centre[0]) / np.float32(radius)
    nx = (np.arange(w, dtype=np.float32)[None, :] - centre[1]) / np.float32(radius)
    r2 = nx * nx + ny * ny
    fov = r2 <= 1.0
    labels = ((coverage >= 0.5) & fov).astype(np.uint8)

    # background: illumination spot and falloff, choroidal mottling, dark macula
    ox, oy = eye.illum_offset
    illum = dom.falloff + (1.0 - dom.falloff) * np.exp(-((nx - ox) ** 2 + (ny - oy) ** 2) / 0.6)
    texture = (
        1.0
        + 0.035 * smooth_noise(rng_texture, shape, 0.06 * radius)
        + 0.012 * smooth_noise(rng_texture, shape, 1.0)
    )
    base = np.asarray(dom.background, np.float32) * (illum * texture)[..., None]
    fx, fy = eye.fovea
    mac = np.exp(-((nx - fx) ** 2 + (ny - fy) ** 2) / (2 * 0.11**2))
    base = base * (1.0 - mac[..., None] * np.asarray((0.3, 0.45, 0.45), np.float32))

    # optic disc: bright rim, brighter cup, slightly taller than wide
    dxn, dyn = eye.disc
    dd = np.sqrt(((nx - dxn) / eye.disc_radius) ** 2 + ((ny - dyn) / (1.1 * eye.disc_radius)) ** 2)
    disc_w = smoothstep(1.1 - dd, 0.0, 0.35)[..., None]
    cup_w = smoothstep(0.5 - dd, 0.0, 0.25)[..., None]
    disc_rgb = np.asarray(dom.disc_colour, np.float32) * (0.75 + 0.25 * illum[..., None])
    img = base * (1 - 0.9 * disc_w) + disc_rgb * 0.9 * disc_w
    img = img * (1 - 0.6 * cup_w) + np.float32(255.0) * 0.6 * cup_w

    # vessels absorb, mostly in green and blue
    vessel = (
        np.float32(dom.vessel_contrast)
        * absorb[..., None]
        * np.asarray(dom.vessel_absorb, np.float32)
    )
    img = img * (1.0 - vessel)

    # tone curve, then dark outside the field of view (with a one-pixel soft edge)
    img = 255.0 * np.clip(img / 255.0, 0.0, 1.0) ** np.float32(dom.gamma)
    edge = smoothstep((1.0 - np.sqrt(r2)) * radius, -0.5, 0.5)
    img = img * edge[..., None] + 3.0
    image = camera(
        img,
        rng_camera,
        blur_sigma=dom.blur_sigma,
        noise_sigma=dom.noise_sigma,
        jpeg_quality=dom.jpeg_quality,
    )
    return image, labels, fov
