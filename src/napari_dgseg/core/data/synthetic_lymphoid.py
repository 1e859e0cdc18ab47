"""A morphology shift for the synthetic nuclei: dense sheets of small, round lymphoid nuclei.

The domains of :mod:`napari_dgseg.core.data.synthetic_nuclei` change only how the same tissue
looks (stain, scanner, focus, compression). A new cancer type is mostly a new *morphology*; this
module renders a lymphoid one (as in a small-cell lymphoma): the tile is nearly all tissue, and
nuclei are small (radius 3-4.5 px, against 8.5-16 px for the renderer's tumour nuclei and 5-7 px
for its lymphocytes), round, darkly stained and packed so that most of them touch (about 700 per
256 px tile against about 100). The shipped ``nuclei-hovernet`` scores Dice ~0.6 / AJI ~0.1 here
(0.997 / 0.95 on its training morphology). Tissue fields, stain model,
texture and camera are those of the nuclei renderer (any of its stain domains applies), so only
the geometry differs from the training data.
"""

from __future__ import annotations

import numpy as np

from napari_dgseg.core.data._synth_common import as_shape, check_seed, generators
from napari_dgseg.core.data.synthetic_nuclei import (
    DEFAULT_NUCLEI_DOMAIN,
    LYMPHOCYTE,
    NucleiLayout,
    get_nuclei_domain,
    make_layout,
    rasterise_nuclei,
    render_stains,
    stain_concentrations,
)

#: Name used for this morphology in benchmarks and docs.
LYMPHOID = "lymphoid-dense"


def lymphoid_layout(rng: np.random.Generator, shape: tuple[int, int]) -> NucleiLayout:
    """Tissue fields of :func:`make_layout`, with every nucleus replaced by a dense lymphoid sheet.

    Nuclei: radius 3-4.5 px, axis ratio 1-1.15, placed by rejection sampling with centre
    distance > 0.65-0.9 times the sum of radii (touching and overlapping), until the nuclear
    area reaches 0.45-0.6 of the tile.
    """
    base = make_layout(rng, shape)
    h, w = shape
    tissue = np.maximum(base.tissue, 0.85).astype(np.float32)  # lymphoid sheets fill the tile
    target_frac = rng.uniform(0.45, 0.6)
    n_cand = int(target_frac * h * w / (np.pi * 3.75**2) * 2.5) + 8
    ys = rng.uniform(-3, h + 3, n_cand)
    xs = rng.uniform(-3, w + 3, n_cand)
    r = rng.uniform(3.0, 4.5, n_cand)
    q = rng.uniform(1.0, 1.15, n_cand)
    f = rng.uniform(0.65, 0.9, n_cand)
    keep = np.zeros(n_cand, bool)
    acc_y, acc_x, acc_r = np.empty(n_cand), np.empty(n_cand), np.empty(n_cand)
    count, area, goal = 0, 0.0, target_frac * h * w
    for i in range(n_cand):
        if area >= goal:
            break
        if count:
            d2 = (acc_y[:count] - ys[i]) ** 2 + (acc_x[:count] - xs[i]) ** 2
            lim = f[i] * (acc_r[:count] + r[i])
            if np.any(d2 < lim * lim):
                continue
        acc_y[count], acc_x[count], acc_r[count] = ys[i], xs[i], r[i]
        count += 1
        keep[i] = True
        area += np.pi * r[i] ** 2
    n = int(keep.sum())
    a, b = r[keep] * np.sqrt(q[keep]), r[keep] / np.sqrt(q[keep])
    amp = np.array((0.03, 0.02, 0.012, 0.008)) * rng.uniform(0.3, 1.6, (n, 4))
    amp *= rng.choice((-1.0, 1.0), (n, 4))
    wobble = np.stack([amp, rng.uniform(0, 2 * np.pi, (n, 4))], axis=-1)
    return NucleiLayout(
        tissue=tissue,
        epithelium=np.zeros_like(base.epithelium),
        fibre_angle=base.fibre_angle,
        fibre_base=base.fibre_base,
        fibre_disp=base.fibre_disp,
        centres=np.stack([ys[keep], xs[keep]], axis=1),
        axes=np.stack([a, b], axis=1),
        theta=rng.uniform(0, np.pi, n),
        kind=np.full(n, LYMPHOCYTE, dtype=int),
        wobble=wobble,
        density=1.0,
    )


def make_lymphoid_nuclei(
    size: int | tuple[int, int] = 256, domain: str = DEFAULT_NUCLEI_DOMAIN, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Render one lymphoid-dense H&E tile and its instance labels.

    Parameters
    ----------
    size : int or (int, int)
        Tile edge or ``(H, W)``.
    domain : str
        Stain / scanner domain of :data:`~napari_dgseg.core.data.synthetic_nuclei.NUCLEI_DOMAINS`
        (default ``clean``: the training stain, so only the morphology is new).
    seed : int
        Non-negative seed; the output is a pure function of ``(size, domain, seed)``.

    Returns
    -------
    image : (H, W, 3) uint8
    labels : (H, W) int32, ids ``1..n`` contiguous.
    """
    dom = get_nuclei_domain(domain)
    shape = as_shape(size)
    seed = check_seed(seed)
    rng_layout, rng_texture, rng_camera = generators(seed + 7_000_003, 3)
    layout = lymphoid_layout(rng_layout, shape)
    labels, dnorm = rasterise_nuclei(layout, shape)
    c_h, c_e = stain_concentrations(layout, labels, dnorm, rng_texture)
    image = render_stains(c_h, c_e, dom, rng_camera)
    present = np.unique(labels)
    lut = np.zeros(int(present[-1]) + 1, dtype=np.int32)
    ids = present[present > 0]
    lut[ids] = np.arange(1, ids.size + 1, dtype=np.int32)
    return image, lut[labels]
