"""Synthetic H&E nuclei tiles with instance ground truth, rendered through a stain model.

A tile is built in three independent stages, each with its own random stream spawned from the
seed, so the *same seed gives the same tissue in every domain* and only the appearance changes:

1. **Layout** (tissue geometry): a low-frequency field splits the tile into tissue and empty
   glass, a second one into epithelium (tumour cells) and stroma. Nuclei are placed by rejection
   sampling with a per-candidate overlap factor, so some touch and some overlap; lymphocyte
   clusters are added on top. Three nucleus kinds: tumour (large, vesicular, nucleoli),
   lymphocyte (small, round, dense) and fibroblast (elongated, aligned with the fibres).
2. **Stain concentrations**: haematoxylin and eosin concentration maps (optical-density units):
   chromatin texture and a darker nuclear rim inside nuclei, purple cytoplasm with faint cell
   membranes in epithelium, wavy collagen fibres in stroma, a few red blood cells.
3. **Domain** (scanner and stain batch): Beer-Lambert mixing
   ``RGB = white * illumination * exp(-(c_H * s_H * v_H + c_E * s_E * v_E))`` with the domain's
   stain vectors ``v`` and strengths ``s``, then blur, sensor noise, 8-bit quantisation and an
   optional real JPEG round trip.

Overlapping nuclei are split by the smallest *normalised* distance ``rho / r(phi)`` (the pixel goes
to the nucleus whose boundary is relatively farthest away), and any fragment that ends up cut off
from its nucleus becomes background, so every instance is exactly one 4-connected region.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import label as cc_label

from napari_dgseg.core.data._synth_common import (
    as_shape,
    camera,
    check_seed,
    generators,
    lookup_domain,
    smooth_noise,
    smoothstep,
    unit,
)

# Macenko et al. (2009) reference H&E optical-density vectors; they match the two real tumour
# tiles this generator was compared with (a Macenko estimate on them gives H ~ [0.54, 0.75, 0.40],
# E ~ [0.18..0.29, 0.81, 0.52..0.54]).
_H_MACENKO = (0.5626, 0.7201, 0.4062)
_E_MACENKO = (0.2159, 0.8012, 0.5581)
# Ruifrok & Johnston (2001) vectors: bluer haematoxylin, pinker eosin.
_H_RUIFROK = (0.650, 0.704, 0.286)
_E_RUIFROK = (0.072, 0.990, 0.105)

TUMOUR, LYMPHOCYTE, FIBROBLAST = 0, 1, 2
_KIND_NAMES = ("tumour", "lymphocyte", "fibroblast")
MIN_NUCLEUS_AREA = 6  # pixels; smaller border slivers are dropped from the labels


@dataclass(frozen=True)
class NucleiDomain:
    """How one scanner / stain batch renders the same tissue.

    Attributes
    ----------
    name : str
        Domain name (the key in :data:`NUCLEI_DOMAINS`).
    description : str
        One line for humans.
    h_vector, e_vector : (float, float, float)
        Optical density per unit concentration of haematoxylin / eosin in R, G, B (normalised).
    h_strength, e_strength : float
        Stain uptake multipliers (stain batch, staining time).
    white : (float, float, float)
        RGB of empty glass (scanner white balance), 0..255.
    illumination_gradient : float
        Fractional brightness drop across the tile (uneven illumination), 0 = flat.
    blur_sigma : float
        Gaussian point-spread sigma in pixels (focus).
    noise_sigma : float
        Sensor noise at full brightness, grey levels.
    jpeg_quality : int or None
        JPEG round-trip quality of the scanner's tile compression, None for lossless.
    """

    name: str
    description: str
    h_vector: tuple[float, float, float] = _H_MACENKO
    e_vector: tuple[float, float, float] = _E_MACENKO
    h_strength: float = 1.0
    e_strength: float = 1.0
    white: tuple[float, float, float] = (248.0, 245.0, 248.0)
    illumination_gradient: float = 0.0
    blur_sigma: float = 0.0
    noise_sigma: float = 1.5
    jpeg_quality: int | None = None


NUCLEI_DOMAINS: dict[str, NucleiDomain] = {
    d.name: d
    for d in (
        NucleiDomain(
            name="clean",
            description="reference scanner: Macenko stain vectors, sharp, low noise, lossless",
        ),
        NucleiDomain(
            name="pale-scanner",
            description="under-stained batch on a bright scanner: bluer H, pink E, weak stain, soft focus",
            h_vector=_H_RUIFROK,
            e_vector=_E_RUIFROK,
            h_strength=0.55,
            e_strength=0.6,
            white=(253.0, 253.0, 251.0),
            blur_sigma=0.6,
            noise_sigma=2.0,
        ),
        NucleiDomain(
            name="dark-stain",
            description="over-stained batch: strong purple H and dense E, darker glass, noisy sensor",
            h_vector=(0.49, 0.78, 0.39),
            e_vector=(0.26, 0.82, 0.51),
            h_strength=1.55,
            e_strength=1.35,
            white=(236.0, 230.0, 240.0),
            noise_sigma=4.0,
        ),
        NucleiDomain(
            name="blurry-jpeg",
            description="out-of-focus scan stored as low-quality JPEG tiles",
            h_vector=(0.60, 0.71, 0.37),
            e_vector=(0.17, 0.85, 0.50),
            h_strength=1.1,
            e_strength=0.9,
            white=(246.0, 246.0, 246.0),
            blur_sigma=1.6,
            noise_sigma=2.5,
            jpeg_quality=30,
        ),
        NucleiDomain(
            name="warm-scanner",
            description="yellow white balance, red eosin and uneven illumination across the tile",
            h_vector=(0.58, 0.72, 0.38),
            e_vector=(0.10, 0.90, 0.42),
            h_strength=0.95,
            e_strength=1.2,
            white=(255.0, 236.0, 205.0),
            illumination_gradient=0.25,
            blur_sigma=0.3,
            noise_sigma=2.0,
            jpeg_quality=80,
        ),
    )
}
DEFAULT_NUCLEI_DOMAIN = "clean"


def get_nuclei_domain(domain: str) -> NucleiDomain:
    """Look up a nuclei domain by name; unknown names raise :class:`InputError` listing the valid ones."""
    return lookup_domain(NUCLEI_DOMAINS, "nuclei", domain)


@dataclass
class NucleiLayout:
    """Domain-independent geometry of one tile.

    Attributes
    ----------
    tissue : np.ndarray
        ``(H, W)`` float32 in [0, 1]: 1 = tissue, 0 = empty glass.
    epithelium : np.ndarray
        ``(H, W)`` float32 in [0, 1]: 1 = epithelium (tumour cells), 0 = stroma.
    fibre_angle : np.ndarray
        ``(H, W)`` float32 local collagen fibre direction, radians.
    fibre_base : float
        Main fibre direction, radians.
    fibre_disp : np.ndarray
        ``(H, W)`` float32 displacement (pixels, across the fibres) that makes them wavy.
    centres : np.ndarray
        ``(N, 2)`` float (y, x) nucleus centres.
    axes : np.ndarray
        ``(N, 2)`` float semi-axes (a, b) in pixels.
    theta : np.ndarray
        ``(N,)`` float orientation of the a-axis, radians.
    kind : np.ndarray
        ``(N,)`` int, 0 tumour, 1 lymphocyte, 2 fibroblast.
    wobble : np.ndarray
        ``(N, 4, 2)`` float amplitude and phase of harmonics 2..5 of the boundary.
    density : float
        Tile density factor in [0.35, 1] that drove the placement.
    """

    tissue: np.ndarray
    epithelium: np.ndarray
    fibre_angle: np.ndarray
    fibre_base: float
    fibre_disp: np.ndarray
    centres: np.ndarray
    axes: np.ndarray
    theta: np.ndarray
    kind: np.ndarray
    wobble: np.ndarray
    density: float


def make_layout(rng: np.random.Generator, shape: tuple[int, int]) -> NucleiLayout:
    """Draw the tissue fields and the nuclei of one tile.

    Parameters
    ----------
    rng : numpy.random.Generator
        Layout random stream.
    shape : (int, int)
        ``(H, W)``.

    Returns
    -------
    NucleiLayout
    """
    h, w = shape
    area = h * w
    scale = 256.0  # the field scales are those of a 256 px ~40x tile, whatever the tile size

    # tissue vs. empty glass: one tile in three is (almost) fully covered
    empty_frac = rng.uniform(0.0, 0.04) if rng.random() < 0.35 else rng.uniform(0.06, 0.35)
    z0 = smooth_noise(rng, shape, 0.13 * scale)
    t0 = np.quantile(z0, empty_frac)
    tissue = smoothstep(z0, t0 - 0.08, t0 + 0.08).astype(np.float32)

    # epithelium vs stroma
    epi_frac = rng.uniform(0.25, 0.9)
    z1 = smooth_noise(rng, shape, 0.1 * scale)
    t1 = np.quantile(z1, 1.0 - epi_frac)
    epithelium = smoothstep(z1, t1 - 0.15, t1 + 0.15).astype(np.float32)

    # collagen fibres are the level lines of v + disp (v across the main fibre direction)
    base_angle = rng.uniform(0, np.pi)
    disp = (0.04 * scale * smooth_noise(rng, shape, 0.12 * scale)).astype(np.float32)
    gy, gx = np.gradient(disp)
    fibre_angle = np.arctan2(np.cos(base_angle) + gy, -np.sin(base_angle) + gx) - np.pi / 2

    density = float(rng.uniform(0.35, 1.0))

    # candidates: lymphocyte clusters first (they claim their room), then uniform ones
    cand_y: list[np.ndarray] = []
    cand_x: list[np.ndarray] = []
    cand_k: list[np.ndarray] = []
    n_clusters = rng.poisson(0.8 * area / 65536.0)
    tissue_idx = np.flatnonzero(tissue.ravel() > 0.5)
    for _ in range(n_clusters if tissue_idx.size else 0):
        c = tissue_idx[rng.integers(tissue_idx.size)]
        cy, cx = divmod(int(c), w)
        m = int(rng.uniform(10, 35) * (0.5 + density))
        spread = rng.uniform(9, 20)
        cand_y.append(cy + spread * rng.standard_normal(m))
        cand_x.append(cx + spread * rng.standard_normal(m))
        cand_k.append(np.full(m, LYMPHOCYTE))
    m = int(area / (np.pi * 10.0**2) * 2.6 * density) + 4
    uy, ux = rng.uniform(0, h, m), rng.uniform(0, w, m)
    iy = np.clip(uy.astype(int), 0, h - 1)
    ix = np.clip(ux.astype(int), 0, w - 1)
    t_at, e_at = tissue[iy, ix], epithelium[iy, ix]
    u = rng.random(m)
    in_epi = e_at > 0.5
    keep = (t_at > 0.5) & (in_epi | (u < 0.3)) | (rng.random(m) < 0.01)
    kinds = np.where(
        in_epi,
        np.where(rng.random(m) < 0.88, TUMOUR, LYMPHOCYTE),
        np.where(rng.random(m) < 0.6, FIBROBLAST, LYMPHOCYTE),
    )
    cand_y.append(uy[keep])
    cand_x.append(ux[keep])
    cand_k.append(kinds[keep])
    ys = np.concatenate(cand_y)
    xs = np.concatenate(cand_x)
    ks = np.concatenate(cand_k).astype(int)
    inside = (ys >= -4) & (ys < h + 4) & (xs >= -4) & (xs < w + 4)
    ys, xs, ks = ys[inside], xs[inside], ks[inside]
    n = ys.size

    # per-candidate shape
    a = np.empty(n)
    b = np.empty(n)
    theta = rng.uniform(0, np.pi, n)
    wob_scale = np.empty((n, 4))
    r = rng.uniform(8.5, 16.0, n)
    q = rng.uniform(1.0, 1.6, n)
    t = ks == TUMOUR
    a[t], b[t] = r[t] * np.sqrt(q[t]), r[t] / np.sqrt(q[t])
    wob_scale[t] = (0.06, 0.045, 0.03, 0.02)
    ly = ks == LYMPHOCYTE
    r = rng.uniform(5.0, 7.2, n)
    q = rng.uniform(1.0, 1.2, n)
    a[ly], b[ly] = r[ly] * np.sqrt(q[ly]), r[ly] / np.sqrt(q[ly])
    wob_scale[ly] = (0.03, 0.02, 0.012, 0.008)
    fb = ks == FIBROBLAST
    a[fb] = rng.uniform(10.0, 17.0, n)[fb]
    b[fb] = rng.uniform(3.2, 5.0, n)[fb]
    fy = np.clip(ys.astype(int), 0, h - 1)
    fx = np.clip(xs.astype(int), 0, w - 1)
    theta[fb] = fibre_angle[fy, fx][fb] + 0.2 * rng.standard_normal(int(fb.sum()))
    wob_scale[fb] = (0.04, 0.03, 0.02, 0.01)
    amp = wob_scale * rng.uniform(0.3, 1.6, (n, 4)) * rng.choice((-1.0, 1.0), (n, 4))
    phase = rng.uniform(0, 2 * np.pi, (n, 4))
    wobble = np.stack([amp, phase], axis=-1)

    # overlap control: accept if centre distance > f * (R_i + R_j), f < 1 lets them overlap
    req = np.sqrt(a * b) * 1.05
    f = np.where(ks == LYMPHOCYTE, rng.uniform(0.8, 1.0, n), rng.uniform(0.72, 1.0, n))
    overlapping = rng.random(n) < 0.15
    f[overlapping] = rng.uniform(0.5, 0.72, int(overlapping.sum()))
    acc_y = np.empty(n)
    acc_x = np.empty(n)
    acc_r = np.empty(n)
    chosen = np.zeros(n, dtype=bool)
    count = 0
    for i in range(n):
        if count:
            d2 = (acc_y[:count] - ys[i]) ** 2 + (acc_x[:count] - xs[i]) ** 2
            lim = f[i] * (acc_r[:count] + req[i])
            if np.any(d2 < lim * lim):
                continue
        acc_y[count], acc_x[count], acc_r[count] = ys[i], xs[i], req[i]
        count += 1
        chosen[i] = True

    return NucleiLayout(
        tissue=tissue,
        epithelium=epithelium,
        fibre_angle=fibre_angle.astype(np.float32),
        fibre_base=float(base_angle),
        fibre_disp=disp,
        centres=np.stack([ys[chosen], xs[chosen]], axis=1),
        axes=np.stack([a[chosen], b[chosen]], axis=1),
        theta=theta[chosen],
        kind=ks[chosen],
        wobble=wobble[chosen],
        density=density,
    )


def rasterise_nuclei(layout: NucleiLayout, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise the nuclei into an instance partition.

    Parameters
    ----------
    layout : NucleiLayout
        Output of :func:`make_layout` (``N`` nuclei).
    shape : (int, int)
        ``(H, W)``.

    Returns
    -------
    labels : np.ndarray
        ``(H, W)`` int32, ``k + 1`` for nucleus ``k`` of the layout, 0 background. Each id is one
        4-connected region (ids of nuclei that vanished are simply absent).
    dnorm : np.ndarray
        ``(H, W)`` float32 normalised distance to the owning nucleus centre (0 at the centre,
        1 at its boundary and everywhere outside nuclei).
    """
    h, w = shape
    labels = np.zeros(shape, dtype=np.int32)
    dnorm = np.ones(shape, dtype=np.float32)
    harmonics = np.arange(2, 6, dtype=np.float32)[:, None, None]
    for k in range(layout.kind.size):
        cy, cx = layout.centres[k]
        a, b = layout.axes[k]
        amp, phase = layout.wobble[k, :, 0], layout.wobble[k, :, 1]
        ext = max(a, b) * (1.0 + np.abs(amp).sum()) + 1.5
        y0, y1 = max(0, int(cy - ext)), min(h, int(cy + ext) + 2)
        x0, x1 = max(0, int(cx - ext)), min(w, int(cx + ext) + 2)
        if y0 >= y1 or x0 >= x1:
            continue
        dy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(cy)
        dx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(cx)
        c, s = np.float32(np.cos(layout.theta[k])), np.float32(np.sin(layout.theta[k]))
        u = (dx * c + dy * s) / np.float32(a)
        v = (-dx * s + dy * c) / np.float32(b)
        rho = np.sqrt(u * u + v * v)
        phi = np.arctan2(v, u)
        wob = 1.0 + np.sum(
            amp.astype(np.float32)[:, None, None]
            * np.cos(harmonics * phi[None] + phase.astype(np.float32)[:, None, None]),
            axis=0,
        )
        d = rho / wob
        best = dnorm[y0:y1, x0:x1]
        win = d < best
        best[win] = d[win]
        labels[y0:y1, x0:x1][win] = k + 1
    return _one_region_per_id(labels, dnorm)


def _one_region_per_id(labels: np.ndarray, dnorm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep only the largest 4-connected piece of every id and drop slivers (in place)."""
    comp = cc_label(labels, background=0, connectivity=1)
    ncomp = int(comp.max())
    if ncomp == 0:
        return labels, dnorm
    sizes = np.bincount(comp.ravel(), minlength=ncomp + 1)
    owner = np.zeros(ncomp + 1, dtype=np.int64)
    owner[comp.ravel()] = labels.ravel()
    ids = np.arange(1, ncomp + 1)
    order = np.lexsort((-sizes[ids], owner[ids]))
    ids = ids[order]
    first = np.r_[True, owner[ids][1:] != owner[ids][:-1]]
    keep = np.zeros(ncomp + 1, dtype=bool)
    keep[ids[first]] = True
    keep &= sizes >= MIN_NUCLEUS_AREA
    keep[0] = False
    drop = ~keep[comp] & (labels > 0)
    labels[drop] = 0
    dnorm[drop] = 1.0
    return labels, dnorm


def stain_concentrations(
    layout: NucleiLayout,
    labels: np.ndarray,
    dnorm: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Haematoxylin and eosin concentration maps (optical-density units) of one tile.

    Parameters
    ----------
    layout : NucleiLayout
        The tile geometry (``N`` nuclei).
    labels, dnorm : np.ndarray
        ``(H, W)`` outputs of :func:`rasterise_nuclei` (ids ``k + 1`` for layout nucleus ``k``).
    rng : numpy.random.Generator
        Texture random stream.

    Returns
    -------
    c_h, c_e : np.ndarray
        ``(H, W)`` float32 concentrations, >= 0.
    """
    shape = labels.shape
    h, w = shape
    n = layout.kind.size

    # per-nucleus stain parameters, index 0 = background
    dens = np.zeros(n + 1, np.float32)
    amp = np.zeros(n + 1, np.float32)
    rim = np.zeros(n + 1, np.float32)
    kind = layout.kind
    ones = np.ones(n, np.float32)
    dens[1:] = np.select(
        [kind == TUMOUR, kind == LYMPHOCYTE],
        [rng.uniform(0.95, 1.45, n), rng.uniform(1.9, 2.4, n)],
        rng.uniform(1.4, 1.8, n),
    )
    amp[1:] = np.select([kind == TUMOUR, kind == LYMPHOCYTE], [0.45 * ones, 0.12 * ones], 0.22)
    rim[1:] = np.where(kind == TUMOUR, rng.uniform(0.3, 0.7, n), 0.1)

    chrom = 0.55 * smooth_noise(rng, shape, 0.8) + 0.45 * smooth_noise(rng, shape, 2.2)
    nuc = labels > 0
    kind_lut = np.r_[-1, kind]
    vesicular = (kind_lut[labels] == TUMOUR).astype(np.float32)
    profile = (1.0 - 0.3 * vesicular * (1.0 - dnorm)) + rim[labels] * smoothstep(dnorm, 0.72, 0.98)
    c_nuc = dens[labels] * np.clip(1.0 + amp[labels] * chrom, 0.15, None) * profile

    # nucleoli: 1-2 dark dots in most tumour nuclei
    nucleoli = np.zeros(shape, np.float32)
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    for k in np.flatnonzero(kind == TUMOUR):
        if rng.random() > 0.65:
            continue
        cy, cx = layout.centres[k]
        b = layout.axes[k, 1]
        for _ in range(1 + int(rng.random() < 0.3)):
            ny = cy + rng.uniform(-0.35, 0.35) * b
            nx = cx + rng.uniform(-0.35, 0.35) * b
            sg = rng.uniform(0.9, 1.6)
            y0, y1 = max(0, int(ny - 4 * sg)), min(h, int(ny + 4 * sg) + 2)
            x0, x1 = max(0, int(nx - 4 * sg)), min(w, int(nx + 4 * sg) + 2)
            if y0 >= y1 or x0 >= x1:
                continue
            g = np.exp(-((yy[y0:y1] - ny) ** 2 + (xx[:, x0:x1] - nx) ** 2) / (2 * sg * sg))
            nucleoli[y0:y1, x0:x1] += rng.uniform(0.6, 1.1) * g
    c_nuc = c_nuc + nucleoli * nuc
    c_nuc = ndi.gaussian_filter(c_nuc.astype(np.float32), 0.7)
    nuc_soft = ndi.gaussian_filter(nuc.astype(np.float32), 0.8)

    # stroma: wavy collagen fibres (noise stretched along the local fibre direction)
    fib = _fibre_texture(layout, rng)
    e_lvl = rng.uniform(0.5, 0.85)
    e_stroma = e_lvl * (0.45 + 0.9 * fib) * (1.0 + 0.1 * smooth_noise(rng, shape, 1.0))
    h_stroma = 0.08 + 0.025 * smooth_noise(rng, shape, 2.0)

    # epithelium: purple cytoplasm, faint membranes on the Voronoi borders of the nuclei
    e_cyto = rng.uniform(0.5, 0.75) * (1.0 + 0.22 * smooth_noise(rng, shape, 1.6))
    h_cyto = rng.uniform(0.32, 0.5) * (1.0 + 0.3 * smooth_noise(rng, shape, 2.5))
    if n:
        seeds = np.ones(shape, dtype=bool)
        cy = np.clip(layout.centres[:, 0].astype(int), 0, h - 1)
        cx = np.clip(layout.centres[:, 1].astype(int), 0, w - 1)
        seeds[cy, cx] = False
        _, (iy, ix) = ndi.distance_transform_edt(seeds, return_indices=True)
        owner = iy * w + ix
        border = np.zeros(shape, np.float32)
        border[:, 1:] += owner[:, 1:] != owner[:, :-1]
        border[1:, :] += owner[1:, :] != owner[:-1, :]
        border = ndi.gaussian_filter(np.minimum(border, 1.0), 0.6)
        e_cyto = e_cyto + 0.3 * border
        h_cyto = h_cyto + 0.06 * border

    t, e = layout.tissue, layout.epithelium
    debris = 0.03 * np.clip(smooth_noise(rng, shape, 4.0), 0.0, None)
    c_h = (t * (e * h_cyto + (1 - e) * h_stroma) + debris) * (1.0 - nuc_soft) + c_nuc
    c_e = (t * (e * e_cyto + (1 - e) * e_stroma) + debris) * (1.0 - 0.7 * nuc_soft) + 0.25 * c_nuc

    # red blood cells: a few dense eosin discs in stroma, never on nuclei
    n_rbc = rng.poisson(4.0 * layout.density * h * w / 65536.0)
    for _ in range(n_rbc):
        ry, rx = rng.uniform(0, h), rng.uniform(0, w)
        iy0, ix0 = min(int(ry), h - 1), min(int(rx), w - 1)
        if t[iy0, ix0] < 0.5 or e[iy0, ix0] > 0.5:
            continue
        rr = rng.uniform(2.6, 3.8)
        y0, y1 = max(0, int(ry - rr - 2)), min(h, int(ry + rr) + 3)
        x0, x1 = max(0, int(rx - rr - 2)), min(w, int(rx + rr) + 3)
        d = np.sqrt((yy[y0:y1] - ry) ** 2 + (xx[:, x0:x1] - rx) ** 2) / rr
        disc = smoothstep(1.0 - d, 0.0, 0.3) * (0.8 + 0.2 * d)
        c_e[y0:y1, x0:x1] += 1.5 * disc * (~nuc[y0:y1, x0:x1])
    return np.clip(c_h, 0, None).astype(np.float32), np.clip(c_e, 0, None).astype(np.float32)


def _fibre_texture(layout: NucleiLayout, rng: np.random.Generator) -> np.ndarray:
    """Fibrous texture in [0, ~2]: anisotropic noise sampled along the wavy fibre coordinates.

    Returns
    -------
    np.ndarray
        ``(H, W)`` float32.
    """
    h, w = layout.fibre_disp.shape
    c, s = np.cos(layout.fibre_base), np.sin(layout.fibre_base)
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    u = xx * c + yy * s  # along the fibres
    v = -xx * s + yy * c + layout.fibre_disp  # across
    stretch = 6.0  # the source grid is 6x coarser along the fibres
    u0, v0 = float(u.min()), float(v.min())
    nu = int((float(u.max()) - u0) / stretch) + 4
    nv = int(float(v.max()) - v0) + 4
    out = np.zeros((h, w), np.float32)
    coords = np.stack(
        [np.broadcast_to(v - v0 + 1, (h, w)), np.broadcast_to((u - u0) / stretch + 1, (h, w))]
    )
    for sig_v, weight in ((0.9, 0.6), (2.2, 0.4)):
        src = rng.standard_normal((nv, nu), dtype=np.float32)
        src = ndi.gaussian_filter(src, (sig_v, 1.6), truncate=3.0)
        src /= max(float(src.std()), 1e-6)
        out += weight * ndi.map_coordinates(src, coords, order=1, mode="nearest")
    fib = np.clip(out, 0.0, None) ** 1.3
    return (fib * np.clip(0.7 + 0.4 * smooth_noise(rng, (h, w), 6.0), 0.0, None)).astype(np.float32)


def render_stains(
    c_h: np.ndarray, c_e: np.ndarray, domain: NucleiDomain, rng: np.random.Generator
) -> np.ndarray:
    """Beer-Lambert colour formation, optics and sensor of one domain.

    Parameters
    ----------
    c_h, c_e : np.ndarray
        ``(H, W)`` float haematoxylin / eosin concentrations.
    domain : NucleiDomain
        Scanner and stain batch.
    rng : numpy.random.Generator
        Camera random stream (illumination direction, noise).

    Returns
    -------
    np.ndarray
        ``(H, W, 3)`` uint8 RGB.
    """
    h, w = c_h.shape
    v_h = unit(domain.h_vector) * np.float32(domain.h_strength)
    v_e = unit(domain.e_vector) * np.float32(domain.e_strength)
    od = c_h[..., None] * v_h + c_e[..., None] * v_e
    white = np.asarray(domain.white, dtype=np.float32)
    direction = rng.uniform(0, 2 * np.pi)
    yy = np.linspace(-0.5, 0.5, h, dtype=np.float32)[:, None]
    xx = np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, :]
    ramp = xx * np.cos(direction) + yy * np.sin(direction)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    illum = 1.0 - np.float32(domain.illumination_gradient) * ramp
    intensity = white * illum[..., None] * np.exp(-od)
    return camera(
        intensity,
        rng,
        blur_sigma=domain.blur_sigma,
        noise_sigma=domain.noise_sigma,
        jpeg_quality=domain.jpeg_quality,
    )


def make_nuclei(
    size: int | tuple[int, int] = 256, domain: str = DEFAULT_NUCLEI_DOMAIN, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Render one synthetic H&E tile and its nucleus instance labels.

    The same ``seed`` gives the same tissue (and labels) in every domain; the domain only
    changes how it looks.

    Parameters
    ----------
    size : int or (int, int)
        Tile edge, or ``(H, W)``; pixel scale is ~40x (nucleus radius ~5-18 px) at every size.
    domain : str
        One of :data:`NUCLEI_DOMAINS`.
    seed : int
        Non-negative seed; the output is a pure function of ``(size, domain, seed)``.

    Returns
    -------
    image : np.ndarray
        ``(H, W, 3)`` uint8 RGB.
    labels : np.ndarray
        ``(H, W)`` int32 instance labels, 0 background, ids ``1..n`` contiguous.

    Raises
    ------
    InputError
        For an unknown domain, a bad size or a negative seed.
    """
    dom = get_nuclei_domain(domain)
    shape = as_shape(size)
    seed = check_seed(seed)
    rng_layout, rng_texture, rng_camera = generators(seed, 3)
    layout = make_layout(rng_layout, shape)
    labels, dnorm = rasterise_nuclei(layout, shape)
    c_h, c_e = stain_concentrations(layout, labels, dnorm, rng_texture)
    image = render_stains(c_h, c_e, dom, rng_camera)
    present = np.unique(labels)
    lut = np.zeros(int(present[-1]) + 1, dtype=np.int32)
    ids = present[present > 0]
    lut[ids] = np.arange(1, ids.size + 1, dtype=np.int32)
    return image, lut[labels]
