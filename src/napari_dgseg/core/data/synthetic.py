"""Synthetic images with ground truth in named domains: H&E nuclei and fundus vessels.

Every claim the project makes about generalisation ("trained on one scanner, works on the next")
needs labelled data from several domains; none can be downloaded here, so the generator makes it.

Nuclei (H&E-like) are rendered with a Beer-Lambert stain model: per pixel, haematoxylin and eosin
concentrations ``c_H``, ``c_E`` give the optical density ``OD = c_H v_H + c_E v_E + od_0`` (stain
vectors ``v`` per RGB channel) and ``RGB = 255 exp(-OD)``. Nuclei are irregular ellipses (radial
harmonics) with chromatin texture and a darker rim, in clusters that touch and overlap (the later
nucleus owns the overlap, so labels stay a partition), over fibrous eosin stroma with white gaps.
Domains differ the way scanners and stain batches do: stain vectors and strength, blur, noise,
JPEG compression, illumination.

Vessels (fundus-like): a circular field of view, orange-red background with illumination falloff,
a bright optic disc, and vessel trees grown from the disc by branching random walks with tapering
widths. Camera domains differ in colour cast, contrast, blur, noise and vignetting.

Everything is deterministic per seed (a :class:`numpy.random.Generator`, never global state).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from napari_dgseg.core.data.sample import Sample
from napari_dgseg.core.errors import InputError

Size = int | tuple[int, int]

H_VECTOR = (0.65, 0.70, 0.29)  # haematoxylin OD per R, G, B (Ruifrok & Johnston)
E_VECTOR = (0.07, 0.99, 0.11)  # eosin


@dataclass(frozen=True)
class NucleiDomain:
    """How a scanner / stain batch renders H&E."""

    h_vector: tuple[float, float, float] = H_VECTOR
    e_vector: tuple[float, float, float] = E_VECTOR
    h_strength: float = 1.0
    e_strength: float = 1.0
    background_od: float = 0.04
    blur_sigma: float = 0.0
    noise_sigma: float = 2.0
    jpeg_quality: int = 0  # 0 = no compression
    illumination: float = 0.0  # strength of a smooth brightness gradient
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)
    description: str = ""


@dataclass(frozen=True)
class VesselDomain:
    """How a fundus camera renders the retina."""

    background: tuple[float, float, float] = (205.0, 95.0, 45.0)
    vessel_color: tuple[float, float, float] = (120.0, 30.0, 20.0)
    contrast: float = 1.0
    vignetting: float = 0.45
    blur_sigma: float = 0.5
    noise_sigma: float = 3.0
    gamma: float = 1.0
    description: str = ""


NUCLEI_DOMAINS: dict[str, NucleiDomain] = {
    "clean": NucleiDomain(description="reference scanner, balanced stain, sharp, little noise"),
    "pale-scanner": NucleiDomain(
        h_vector=(0.55, 0.72, 0.42), h_strength=0.6, e_strength=0.55, background_od=0.02,
        blur_sigma=0.8, noise_sigma=2.5, tint=(1.0, 1.0, 1.03),
        description="faded, bluish haematoxylin, weak eosin, slightly soft",
    ),
    "dark-stain": NucleiDomain(
        h_vector=(0.70, 0.75, 0.20), e_vector=(0.15, 0.95, 0.20), h_strength=1.5, e_strength=1.45,
        background_od=0.09, noise_sigma=5.0, tint=(0.97, 0.95, 1.0),
        description="over-stained purple batch, darker background, noisy sensor",
    ),
    "blurry-jpeg": NucleiDomain(
        e_vector=(0.05, 0.90, 0.30), h_strength=0.9, e_strength=1.2, blur_sigma=1.5,
        noise_sigma=3.0, jpeg_quality=30, illumination=0.25, tint=(1.04, 1.0, 0.9),
        description="out of focus, heavy JPEG compression, warm uneven illumination",
    ),
}

VESSEL_DOMAINS: dict[str, VesselDomain] = {
    "camera-a": VesselDomain(description="balanced colour, good contrast (DRIVE-like)"),
    "camera-b": VesselDomain(
        background=(170.0, 110.0, 60.0), vessel_color=(110.0, 50.0, 35.0), contrast=0.6,
        vignetting=0.3, blur_sigma=1.2, noise_sigma=4.0, gamma=0.9,
        description="greenish-yellow cast, low contrast, soft optics",
    ),
    "camera-c": VesselDomain(
        background=(150.0, 55.0, 25.0), vessel_color=(70.0, 15.0, 10.0), contrast=1.1,
        vignetting=0.75, blur_sigma=0.6, noise_sigma=7.0, gamma=1.25,
        description="dark, strong vignetting, noisy sensor",
    ),
}

DEFAULT_NUCLEI_DOMAIN = "clean"
DEFAULT_VESSEL_DOMAIN = "camera-a"
KINDS = ("nuclei", "vessels")


def list_domains() -> dict[str, list[str]]:
    """Names of the domains per kind (the first of each is the default training domain)."""
    return {"nuclei": list(NUCLEI_DOMAINS), "vessels": list(VESSEL_DOMAINS)}


def _shape(size: Size) -> tuple[int, int]:
    if isinstance(size, int):
        h = w = size
    else:
        h, w = (int(s) for s in size)
    if min(h, w) < 16:
        raise InputError(f"synthetic images must be at least 16 x 16 pixels (got {h} x {w})")
    return h, w


def _domain(table: dict, name: str, kind: str):
    if name not in table:
        raise InputError(f"unknown {kind} domain {name!r}; valid domains: {list(table)}")
    return table[name]


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise, normalised to zero mean and unit std."""
    field = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-6)


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


# ---------------------------------------------------------------------------- nuclei
def _nucleus_centres(rng: np.random.Generator, h: int, w: int, tissue: np.ndarray) -> np.ndarray:
    """Cluster centres plus scattered nuclei, kept on tissue."""
    area = h * w
    density = rng.uniform(0.5, 1.2) / 1000.0  # nuclei per pixel (about 55 per 256 px tile)
    n_total = max(3, int(area * density))
    n_clusters = max(1, int(rng.integers(1, 4) * area / 65536))
    pts = []
    for _ in range(n_clusters):
        c = rng.uniform([0, 0], [h, w])
        k = int(n_total * rng.uniform(0.15, 0.3) / max(1.0, n_clusters / 3.0))
        pts.append(c + rng.normal(0, rng.uniform(10, 25), (k, 2)))
    pts.append(rng.uniform([0, 0], [h, w], (max(0, n_total - sum(len(p) for p in pts)), 2)))
    pts = np.concatenate(pts)
    pts = pts[(pts[:, 0] >= 0) & (pts[:, 0] < h) & (pts[:, 1] >= 0) & (pts[:, 1] < w)]
    keep = tissue[pts[:, 0].astype(int), pts[:, 1].astype(int)]
    return pts[keep]


def make_nuclei(size: Size = 256, domain: str = DEFAULT_NUCLEI_DOMAIN, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An H&E-like tile and its instance labels.

    Returns
    -------
    image : np.ndarray
        ``(H, W, 3)`` uint8 RGB.
    labels : np.ndarray
        ``(H, W)`` int32 instance ids 1..n, 0 = background.
    """
    dom = _domain(NUCLEI_DOMAINS, domain, "nuclei")
    h, w = _shape(size)
    rng = np.random.default_rng(seed)
    # tissue vs empty space (white gaps, lumen)
    tissue = _smooth_noise(rng, (h, w), 18.0) > rng.uniform(-1.6, -0.6)
    # fibrous stroma: elongated smoothed noise at a random orientation
    fib = ndi.gaussian_filter(rng.standard_normal((h, w)).astype(np.float32),
                              (1.0, 6.0), mode="wrap")
    fib = ndi.rotate(fib, rng.uniform(0, 180), reshape=False, mode="wrap", order=1)
    fib = (fib - fib.mean()) / (fib.std() + 1e-6)
    c_e = np.clip(0.38 + 0.12 * fib + 0.12 * _smooth_noise(rng, (h, w), 8.0), 0.05, None)
    c_h = np.clip(0.06 + 0.04 * _smooth_noise(rng, (h, w), 3.0), 0.0, None)
    soft_tissue = ndi.gaussian_filter(tissue.astype(np.float32), 2.0)
    c_e *= soft_tissue
    c_h *= soft_tissue

    labels = np.zeros((h, w), np.int32)
    chromatin = _smooth_noise(rng, (h, w), 1.2)
    centres = _nucleus_centres(rng, h, w, tissue)
    yy_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    nid = 0
    for cy, cx in centres:
        a = rng.uniform(6.0, 12.5)
        b = a * rng.uniform(0.6, 1.0)
        theta = rng.uniform(0, np.pi)
        harm = rng.normal(0, 0.06, 3)
        phase = rng.uniform(0, 2 * np.pi, 3)
        r = int(np.ceil(a * 1.25)) + 1
        if r not in yy_cache:
            yy_cache[r] = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float32)
        dy, dx = yy_cache[r]
        y0, x0 = int(round(cy)), int(round(cx))
        ys0, ys1 = max(0, y0 - r), min(h, y0 + r + 1)
        xs0, xs1 = max(0, x0 - r), min(w, x0 + r + 1)
        sy, sx = slice(ys0 - (y0 - r), ys1 - (y0 - r)), slice(xs0 - (x0 - r), xs1 - (x0 - r))
        py, px = dy[sy, sx] + (y0 - cy), dx[sy, sx] + (x0 - cx)
        ct, st = np.cos(theta), np.sin(theta)
        u, v = px * ct + py * st, -px * st + py * ct
        ang = np.arctan2(v, u)
        wobble = 1.0 + sum(harm[k] * np.cos((k + 2) * ang + phase[k]) for k in range(3))
        rho = np.sqrt((u / a) ** 2 + (v / b) ** 2) / wobble
        inside = rho <= 1.0
        if inside.sum() < 12:
            continue
        nid += 1
        region = labels[ys0:ys1, xs0:xs1]
        region[inside] = nid
        strength = rng.uniform(1.1, 1.8)
        tex = chromatin[ys0:ys1, xs0:xs1]
        rim = np.clip((rho - 0.75) / 0.25, 0, 1) * 0.35
        dens = strength * (1.0 + 0.25 * tex + rim)
        ch = c_h[ys0:ys1, xs0:xs1]
        ch[inside] = np.maximum(ch[inside], dens[inside])
        ce = c_e[ys0:ys1, xs0:xs1]
        ce[inside] *= 0.35
    # relabel so ids are contiguous after overlaps
    ids = np.unique(labels)
    ids = ids[ids > 0]
    lut = np.zeros(nid + 1, np.int32)
    lut[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
    labels = lut[labels]

    v_h = np.asarray(dom.h_vector, np.float32)
    v_e = np.asarray(dom.e_vector, np.float32)
    od = (dom.h_strength * c_h[..., None] * v_h + dom.e_strength * c_e[..., None] * v_e
          + dom.background_od)
    rgb = 255.0 * np.exp(-od) * np.asarray(dom.tint, np.float32)
    if dom.illumination:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        ang = rng.uniform(0, 2 * np.pi)
        ramp = (np.cos(ang) * xx / w + np.sin(ang) * yy / h)
        rgb *= (1.0 - dom.illumination * (ramp - ramp.min()) / (np.ptp(ramp) + 1e-6))[..., None]
    if dom.blur_sigma:
        rgb = ndi.gaussian_filter(rgb, (dom.blur_sigma, dom.blur_sigma, 0))
    rgb += rng.normal(0, dom.noise_sigma, rgb.shape).astype(np.float32)
    image = np.clip(np.round(rgb), 0, 255).astype(np.uint8)
    if dom.jpeg_quality:
        image = _jpeg(image, dom.jpeg_quality)
    return image, labels


# ---------------------------------------------------------------------------- vessels
def _grow_tree(rng: np.random.Generator, start: np.ndarray, direction: float, width: float,
               length: float, depth: int, segments: list) -> None:
    """Branching random walk: appends ``(y, x, radius)`` samples to ``segments``."""
    pos = start.astype(np.float64).copy()
    step = 1.0
    n = int(length / step)
    curv = rng.normal(0, 0.006)
    next_branch = rng.uniform(0.25, 0.5) * n
    for i in range(n):
        direction += curv + rng.normal(0, 0.02)
        pos += step * np.array([np.sin(direction), np.cos(direction)])
        radius = max(0.45, width * (1.0 - 0.5 * i / n) / 2.0)
        segments.append((pos[0], pos[1], radius))
        if depth > 0 and i >= next_branch:
            side = rng.choice([-1.0, 1.0])
            _grow_tree(rng, pos, direction + side * rng.uniform(0.4, 1.0), width * 0.7,
                       length * rng.uniform(0.45, 0.7), depth - 1, segments)
            next_branch = i + rng.uniform(0.25, 0.45) * n


def make_vessels(size: Size = 256, domain: str = DEFAULT_VESSEL_DOMAIN, seed: int = 0
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A fundus-like photograph, its vessel labels and its field-of-view mask.

    Returns
    -------
    image : np.ndarray
        ``(H, W, 3)`` uint8 RGB.
    labels : np.ndarray
        ``(H, W)`` uint8, 1 = vessel (inside the field of view), 0 elsewhere.
    fov : np.ndarray
        ``(H, W)`` bool field of view.
    """
    dom = _domain(VESSEL_DOMAINS, domain, "vessels")
    h, w = _shape(size)
    rng = np.random.default_rng(seed)
    s = min(h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = h / 2.0, w / 2.0
    radius = 0.47 * s
    dist = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    fov = dist <= radius
    side = rng.choice([-1.0, 1.0])
    disc = np.array([cy + rng.normal(0, 0.03 * s), cx + side * 0.28 * s])
    disc_r = 0.075 * s

    segments: list = []
    base_w = max(1.6, 0.015 * s)
    for k in range(4):
        ang = (np.pi if side > 0 else 0.0) + (k - 1.5) * 0.75 + rng.normal(0, 0.12)
        _grow_tree(rng, disc, ang, base_w * rng.uniform(0.8, 1.1), 0.75 * s, 3, segments)
    # rasterise at 2x for sub-pixel widths, then downsample to soft vessel coverage
    up = 2
    cover2 = np.zeros((h * up, w * up), np.float32)
    seg = np.asarray(segments, np.float64)
    if len(seg):
        for r2 in np.unique(np.round(seg[:, 2] * up * 2) / 2):
            pts = seg[np.round(seg[:, 2] * up * 2) / 2 == r2][:, :2] * up
            rr = int(np.ceil(r2))
            oy, ox = np.mgrid[-rr : rr + 1, -rr : rr + 1]
            disk = (oy**2 + ox**2) <= r2 * r2
            offs = np.stack([oy[disk], ox[disk]], 1)
            allp = (np.round(pts)[:, None, :] + offs[None]).reshape(-1, 2).astype(np.int64)
            ok = (allp[:, 0] >= 0) & (allp[:, 0] < h * up) & (allp[:, 1] >= 0) & (allp[:, 1] < w * up)
            cover2[allp[ok, 0], allp[ok, 1]] = 1.0
    cover = cover2.reshape(h, up, w, up).mean(axis=(1, 3))
    labels = ((cover >= 0.5) & fov).astype(np.uint8)

    bg = np.asarray(dom.background, np.float32)
    falloff = 1.0 - dom.vignetting * (dist / radius) ** 2
    shading = 1.0 + 0.08 * _smooth_noise(rng, (h, w), s / 12.0)
    rgb = bg * (falloff * shading)[..., None]
    ddisc = np.sqrt((yy - disc[0]) ** 2 + (xx - disc[1]) ** 2)
    disc_w = np.clip(1.3 - ddisc / disc_r, 0, 1) ** 1.5
    rgb = rgb * (1 - disc_w[..., None]) + np.array([250, 220, 150], np.float32) * disc_w[..., None]
    vcol = np.asarray(dom.vessel_color, np.float32) * falloff[..., None]
    alpha = np.clip(ndi.gaussian_filter(cover, 0.6) * 1.3 * dom.contrast, 0, 1)[..., None]
    rgb = rgb * (1 - alpha) + vcol * alpha
    if dom.blur_sigma:
        rgb = ndi.gaussian_filter(rgb, (dom.blur_sigma, dom.blur_sigma, 0))
    rgb = 255.0 * np.clip(rgb / 255.0, 0, 1) ** dom.gamma
    rgb += rng.normal(0, dom.noise_sigma, rgb.shape).astype(np.float32)
    rgb *= ndi.gaussian_filter(fov.astype(np.float32), 1.0)[..., None]
    image = np.clip(np.round(rgb), 0, 255).astype(np.uint8)
    return image, labels, fov


# ---------------------------------------------------------------------------- datasets
def make_sample(kind: str, size: Size = 256, domain: str | None = None, seed: int = 0) -> Sample:
    """One synthetic :class:`Sample` of ``kind`` (``nuclei`` or ``vessels``)."""
    if kind == "nuclei":
        domain = domain or DEFAULT_NUCLEI_DOMAIN
        image, labels = make_nuclei(size, domain, seed)
        return Sample(image=image, labels=labels, name=f"nuclei_{domain}_{seed}", domain=domain,
                      meta={"synthetic": True, "seed": seed})
    if kind == "vessels":
        domain = domain or DEFAULT_VESSEL_DOMAIN
        image, labels, fov = make_vessels(size, domain, seed)
        return Sample(image=image, labels=labels.astype(np.int32), name=f"vessels_{domain}_{seed}",
                      mask=fov, domain=domain, meta={"synthetic": True, "seed": seed})
    raise InputError(f"unknown kind {kind!r}; valid kinds: {list(KINDS)}")


def item_seed(seed: int, index: int) -> int:
    """Seed of image ``index`` of a dataset made with ``seed`` (stable, distinct per pair)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_dataset(kind: str, domain: str, n: int, size: int, seed: int, out: str | Path) -> dict:
    """Write ``n`` images of one domain as ``out/images/*.png`` + ``out/labels/*.tif``.

    Vessels also get ``out/masks/*.png`` (field of view, 0/255). Returns a JSON-able summary.
    """
    import tifffile
    from PIL import Image

    if kind not in KINDS:
        raise InputError(f"unknown kind {kind!r}; valid kinds: {list(KINDS)}")
    _domain(NUCLEI_DOMAINS if kind == "nuclei" else VESSEL_DOMAINS, domain, kind)
    if n < 1:
        raise InputError(f"--n must be >= 1 (got {n})")
    out = Path(out)
    for sub in ("images", "labels") + (("masks",) if kind == "vessels" else ()):
        (out / sub).mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        sample = make_sample(kind, size, domain, item_seed(seed, i))
        stem = f"{kind}_{domain}_{i:04d}"
        _atomic_write(out / "images" / f"{stem}.png",
                      lambda p, im=sample.image: Image.fromarray(im).save(p, format="PNG"))
        lab = sample.labels.astype(np.int32 if kind == "nuclei" else np.uint8)
        _atomic_write(out / "labels" / f"{stem}.tif",
                      lambda p, lb=lab: tifffile.imwrite(p, lb, compression="zlib"))
        if kind == "vessels":
            m = (sample.mask * 255).astype(np.uint8)
            _atomic_write(out / "masks" / f"{stem}.png",
                          lambda p, mm=m: Image.fromarray(mm).save(p, format="PNG"))
        files.append(stem)
    params = NUCLEI_DOMAINS[domain] if kind == "nuclei" else VESSEL_DOMAINS[domain]
    summary = {"kind": kind, "domain": domain, "n": n, "size": size, "seed": seed, "out": str(out),
               "domain_params": asdict(params), "files": files}
    _atomic_write(out / "synth.json", lambda p: Path(p).write_text(json.dumps(summary, indent=2)))
    return summary
