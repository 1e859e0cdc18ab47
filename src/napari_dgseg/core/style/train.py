"""Training the stage-1 style-transfer model of Mind the Gap on source and target images.

Su, Yao, Yang, Wang, Yan, Sun & Huang, "Mind the Gap: Alleviating Local Imbalance for
Unsupervised Cross-Modality Medical Image Segmentation" (2023), sections III-B and IV-A-1: Adam
with learning rate 2e-4 and weight decay 1e-4 for the generator and the discriminator, which are
updated alternately; batch 8 in the paper (``batch`` crops per domain here, 4 + 4 by default);
50k iterations in the paper, a few hundred for the CPU ``light`` preset. Adam's betas are not
given; (0.5, 0.999), the value of the GAN literature the paper builds on, is used.

Neither stage needs labels: the source images may come from a labelled folder (their labels
are ignored) and the targets are unlabelled tiles. :func:`train_style_steps` is a generator
(one :class:`StyleStep` per iteration; the napari runner and the CLI progress bar drive it) that
returns the trained :class:`~napari_dgseg.core.style.transfer.StyleModel`; :func:`train_style`
runs it to the end.
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from napari_dgseg.core.cancel import is_cancelled
from napari_dgseg.core.device import select_device
from napari_dgseg.core.errors import CancelledError, InputError
from napari_dgseg.core.style.losses import LossWeights, discriminator_loss, generator_pass
from napari_dgseg.core.style.model import (
    SOURCE,
    TARGET,
    PatchDiscriminator,
    StyleConfig,
    StyleGenerator,
    init_weights,
)
from napari_dgseg.core.style.transfer import StyleModel, colour_stats, from_unit

#: Fewest images per domain.
MIN_IMAGES = 1
#: Smallest crop side (the discriminator reads 8x down-sampled patches).
MIN_SIZE = 32


@dataclass
class StyleStep:
    """One iteration: ``iteration`` (1-based), ``iters`` planned and the ``logs`` (loss terms)."""

    iteration: int
    iters: int
    logs: dict[str, float]


class CropStream:
    """Random square crops (reflect-padded when an image is smaller), flips and 90-degree turns.

    Parameters
    ----------
    images : sequence of np.ndarray
        ``(H, W, 3)`` uint8 images.
    size : int
        Crop side.
    seed : int
        Seed of the stream's generator.
    """

    def __init__(self, images: Sequence[np.ndarray], size: int, seed: int) -> None:
        self.images = list(images)
        self.size = size
        self.rng = np.random.default_rng(seed)

    def _crop(self, img: np.ndarray) -> np.ndarray:
        s = self.size
        h, w = img.shape[:2]
        if h < s or w < s:
            ph, pw = max(0, s - h), max(0, s - w)
            img = np.pad(img, ((0, ph), (0, pw), (0, 0)), mode="reflect" if min(h, w) > 1 else "edge")
            h, w = img.shape[:2]
        y = int(self.rng.integers(0, h - s + 1))
        x = int(self.rng.integers(0, w - s + 1))
        crop = np.rot90(img[y : y + s, x : x + s], int(self.rng.integers(0, 4)))
        if self.rng.random() < 0.5:
            crop = crop[:, ::-1]
        return np.ascontiguousarray(crop)

    def batch(self, n: int) -> torch.Tensor:
        """``(n, 3, size, size)`` float in [0, 1]."""
        crops = [self._crop(self.images[int(self.rng.integers(0, len(self.images)))]) for _ in range(n)]
        return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().div_(255.0)


def _check_images(images: Sequence[np.ndarray], what: str) -> list[np.ndarray]:
    out = []
    for i, im in enumerate(images):
        im = np.asarray(im)
        if im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3:
            raise InputError(f"{what} image {i} must be (H, W, 3) uint8 RGB (got {im.dtype} {im.shape})")
        out.append(im)
    if len(out) < MIN_IMAGES:
        raise InputError(f"no {what} images given; style training needs source and target images")
    return out


def train_style_steps(
    source: Sequence[np.ndarray],
    target: Sequence[np.ndarray],
    *,
    config: StyleConfig | None = None,
    iters: int = 400,
    size: int = 128,
    batch: int = 4,
    lr: float = 2e-4,
    weight_decay: float = 1e-4,
    weights: LossWeights = LossWeights(),
    seed: int = 0,
    device: str = "auto",
    cancel: Any = None,
    source_name: str = "source",
    target_name: str = "target",
    command: str | None = None,
) -> Generator[StyleStep, None, StyleModel]:
    """Train the style-transfer auto-encoder; yields a :class:`StyleStep` per iteration.

    Parameters
    ----------
    source, target : sequence of np.ndarray
        ``(H, W, 3)`` uint8 images of the source and the target domain (no labels needed).
    config : StyleConfig, optional
        Architecture (default: the ``light`` preset).
    iters, size, batch, lr, weight_decay :
        Iterations, crop side (a multiple of the config's divisor, >= 32), crops per domain per
        iteration, Adam learning rate and weight decay (paper: 2e-4, 1e-4).
    weights : LossWeights
        The lambdas (paper: reconstruction 20, content 1, cycle 20, adversarial 1).
    seed : int
        Seeds the weights and the crop streams.
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``mps``.
    cancel : threading.Event or callable
        Checked every iteration; raises :class:`CancelledError`.

    Returns
    -------
    StyleModel
        The trained generator (eval mode, CPU) with its config and provenance.
    """
    cfg = config or StyleConfig()
    if iters < 1:
        raise InputError(f"iters must be >= 1 (got {iters})")
    if batch < 1:
        raise InputError(f"batch must be >= 1 (got {batch})")
    if not lr > 0:
        raise InputError(f"learning rate must be > 0 (got {lr})")
    if size < MIN_SIZE or size % cfg.divisor:
        raise InputError(f"crop size {size} must be >= {MIN_SIZE} and a multiple of {cfg.divisor}; "
                         f"try {max(MIN_SIZE, size - size % cfg.divisor)}")
    src_images = _check_images(source, "source")
    tgt_images = _check_images(target, "target")
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    dev = select_device(device)
    gen = StyleGenerator(cfg)
    disc = PatchDiscriminator(cfg)
    init_weights(gen)
    init_weights(disc)
    gen.to(dev).train()
    disc.to(dev).train()
    opt_g = torch.optim.Adam(gen.parameters(), lr=lr, betas=(0.5, 0.999), weight_decay=weight_decay)
    opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=(0.5, 0.999), weight_decay=weight_decay)
    streams = (CropStream(src_images, size, seed), CropStream(tgt_images, size, seed + 1))
    domain = torch.tensor([SOURCE] * batch + [TARGET] * batch, device=dev)
    history: list[dict[str, float]] = []
    for it in range(iters):
        if is_cancelled(cancel):
            raise CancelledError("style training cancelled; no style model was saved")
        x = from_unit(torch.cat([streams[0].batch(batch), streams[1].batch(batch)]).to(dev))
        out = generator_pass(gen, disc, x, domain, weights)
        opt_g.zero_grad(set_to_none=True)
        out.total.backward()
        opt_g.step()
        d_loss = discriminator_loss(disc(x, domain), disc(out.transferred.detach(), out.other))
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        logs = {k: float(v.detach()) for k, v in out.terms.items()}
        logs.update({"loss": float(out.total.detach()), "disc": float(d_loss.detach())})
        if not np.isfinite(logs["loss"]) or not np.isfinite(logs["disc"]):
            raise InputError(f"style training diverged at iteration {it + 1}; lower the learning rate")
        history.append(logs)
        yield StyleStep(it + 1, iters, logs)
    gen.eval().cpu()
    provenance = {
        "command": command or "napari_dgseg.core.style.train_style(...)",
        "method": ("Mind the Gap stage 1 (Su, Yao, Yang, Wang, Yan, Sun & Huang, 2023): AdaIN "
                   "auto-encoder, domain-label MLP style, reconstruction + content + cycle + "
                   "adversarial losses"),
        "weights": {"rec_im": weights.rec_im, "rec_c": weights.rec_c, "cyc": weights.cyc,
                    "adv": weights.adv},
        "source": {"name": source_name, "images": len(src_images),
                   "colour": colour_stats(src_images)},
        "target": {"name": target_name, "images": len(tgt_images),
                   "colour": colour_stats(tgt_images)},
        "iterations": iters,
        "crop_size": size,
        "batch": f"{batch} source + {batch} target",
        "lr": lr,
        "weight_decay": weight_decay,
        "optimizer": "Adam (0.5, 0.999), generator and discriminator alternately",
        "seed": seed,
        "losses": {k: _thin(history, k) for k in ("rec_im", "rec_c", "cyc", "adv", "disc")},
        "final": {k: round(float(np.mean([h[k] for h in history[-20:]])), 5)
                  for k in ("rec_im", "rec_c", "cyc", "adv", "disc")},
        "device": str(dev),
        "seconds": round(time.perf_counter() - t0, 1),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
    }
    return StyleModel(gen, cfg, provenance, domains=(source_name, target_name))


def train_style(
    source: Sequence[np.ndarray],
    target: Sequence[np.ndarray],
    *,
    progress: Callable[[int, int, dict], Any] | None = None,
    **kwargs: Any,
) -> StyleModel:
    """Run :func:`train_style_steps` to the end; ``progress(iteration, iters, logs)`` each step."""
    from napari_dgseg.core.steps import run_steps

    return run_steps(train_style_steps(source, target, **kwargs), None if progress is None else
                     lambda step: progress(step.iteration, step.iters, step.logs))


def _thin(history: list[dict], key: str, points: int = 100) -> list[list[float]]:
    step = max(1, len(history) // points)
    return [[i + 1, round(float(np.mean([h[key] for h in history[i : i + step]])), 5)]
            for i in range(0, len(history), step)]


__all__ = ["CropStream", "StyleStep", "train_style", "train_style_steps"]
