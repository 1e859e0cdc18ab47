"""Training data: source folders -> in-memory samples -> balanced random crop batches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from napari_dgseg.core.data.sample import Sample
from napari_dgseg.core.errors import InputError
from napari_dgseg.core.imageprep import to_rgb_uint8
from napari_dgseg.core.losses.segmentation import IGNORE_INDEX

Source = str | Path | Sequence[Sample]


def _is_rgb8(image: np.ndarray) -> bool:
    image = np.asarray(image)
    return image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


def _is_generic_folder(path: Path) -> bool:
    return (path / "images").is_dir() and (path / "labels").is_dir()


def load_sources(sources: Sequence[Source]) -> list[tuple[str, list[Sample]]]:
    """Load every source into ``(domain_name, samples)`` pairs.

    A source is a generic folder (``images/`` + ``labels/``), a folder of such folders (one domain
    per sub-folder), or an already-loaded list of :class:`Sample`. Each generic folder is a domain.
    """
    from napari_dgseg.core.data.datasets import load_folder

    domains: list[tuple[str, list[Sample]]] = []
    for src in sources:
        if not isinstance(src, (str, Path)):
            # in-memory samples of any dtype go through the one image preparer, as files do
            samples = [s if _is_rgb8(s.image) else replace(s, image=to_rgb_uint8(s.image))
                       for s in src]
            name = samples[0].domain if samples and samples[0].domain else f"domain{len(domains)}"
            domains.append((name, samples))
            continue
        path = Path(src)
        if not path.is_dir():
            raise InputError(f"source {path} is not a folder; give folders with images/ and labels/")
        if _is_generic_folder(path):
            domains.append((path.name, load_folder(path)))
            continue
        subs = sorted(p for p in path.iterdir() if p.is_dir() and _is_generic_folder(p))
        if not subs:
            raise InputError(
                f"source {path} has no images/ + labels/ folders (nor sub-folders that have them); "
                "make one with `dgseg synth` or arrange your data that way"
            )
        domains.extend((sub.name, load_folder(sub)) for sub in subs)
    for name, samples in domains:
        if not samples:
            raise InputError(f"source domain {name!r} holds no labelled images")
        if any(s.labels is None for s in samples):
            raise InputError(f"source domain {name!r} has images without labels")
    return domains


def semantic_target(labels: np.ndarray, num_classes: int, instance: bool) -> np.ndarray:
    """Class-id target: foreground = any instance when ``instance``, else the label values."""
    if instance:
        return (labels > 0).astype(np.int64)
    out = labels.astype(np.int64)
    out[(out < 0) | (out >= num_classes)] = IGNORE_INDEX
    return out


def _is_instance_map(labels: np.ndarray) -> bool:
    """True when every non-zero id forms one connected region and there are >= 3 ids."""
    from scipy import ndimage as ndi

    ids = np.unique(labels)
    ids = ids[ids > 0]
    if len(ids) < 3:
        return False
    _, n_components = ndi.label(labels > 0)
    if n_components >= len(ids):
        # touching instances merge into one component, so count per id on a sample of ids
        for i in ids[:: max(1, len(ids) // 12)]:
            if ndi.label(labels == i)[1] != 1:
                return False
        return True
    return all(ndi.label(labels == i)[1] == 1 for i in ids[:: max(1, len(ids) // 12)])


def infer_task(domains: Sequence[tuple[str, list[Sample]]]) -> tuple[str, bool, int]:
    """Guess ``(task, labels_are_instances, num_classes)`` from the labels.

    Instance maps (every id one connected region, >= 3 ids) mean nuclei; only 0/1 means a binary
    semantic task (vessels when the samples carry a field-of-view mask); otherwise multi-class
    semantic with ``max id + 1`` classes. ``--task`` overrides the guess.
    """
    maxima, instance_votes, has_mask = [], [], False
    for _, samples in domains:
        for s in samples[:8]:
            maxima.append(int(s.labels.max()))
            instance_votes.append(_is_instance_map(s.labels))
            has_mask |= s.mask is not None
    top = max(maxima) if maxima else 1
    if top <= 1:
        return ("vessels" if has_mask else "binary", False, 2)
    if np.mean(instance_votes) >= 0.5:
        return ("nuclei", True, 2)
    return ("semantic", False, top + 1)


TASK_IS_INSTANCE = {"nuclei": True, "vessels": False, "binary": False, "semantic": False}


@dataclass
class CropSampler:
    """Random crops, flips and 90-degree rotations, balanced over domains.

    Attributes
    ----------
    domains : list of (name, samples)
    size : int
        Crop side (images smaller than this are reflect-padded; padding is ignored in the loss).
    num_classes : int
    instance : bool
        Labels are instance ids (kept in ``batch["instances"]`` for families that need them).
    seed : int
    augment : str
        ``none``, ``camera`` (white balance, gamma, contrast, blur, noise, JPEG), ``stain``
        (H&E stain jitter, then camera), ``stain-nuclei`` (each nucleus's haematoxylin scaled on
        its own, then stain and camera) or ``fundus`` (channel gains, saturation, illumination,
        sharpening, then camera; :mod:`napari_dgseg.core.train.augment`).
    scale_range : (float, float), optional
        Object-size augmentation: each crop is magnified by a factor drawn log-uniformly from
        this range (objects appear that much larger).
    """

    domains: list[tuple[str, list[Sample]]]
    size: int
    num_classes: int
    instance: bool
    seed: int = 0
    augment: str = "none"
    scale_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def _crop(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        img, lab = sample.image, sample.labels.astype(np.int64)
        if sample.mask is not None and not self.instance:
            lab = lab.copy()
            lab[~sample.mask.astype(bool)] = 0
        h, w = lab.shape
        size = s = self.size
        factor = 1.0
        if self.scale_range is not None:
            lo, hi = self.scale_range
            factor = float(np.exp(self.rng.uniform(np.log(lo), np.log(hi))))
            s = max(8, min(int(round(size / factor)), max(h, w) * 2))
        if h < s or w < s:
            ph, pw = max(0, s - h), max(0, s - w)
            img = np.pad(img, ((0, ph), (0, pw), (0, 0)), mode="reflect" if min(h, w) > 1 else "edge")
            lab = np.pad(lab, ((0, ph), (0, pw)), constant_values=-1)
            h, w = lab.shape
        y = int(self.rng.integers(0, h - s + 1))
        x = int(self.rng.integers(0, w - s + 1))
        img, lab = img[y : y + s, x : x + s], lab[y : y + s, x : x + s]
        if s != size:
            from napari_dgseg.core.train.augment import rescale_crop

            img, lab = rescale_crop(img, lab, size, factor)
        if self.augment != "none":
            from napari_dgseg.core.train.augment import camera_jitter, fundus_jitter, stain_jitter

            if self.augment == "fundus":
                img = fundus_jitter(img, self.rng)
            else:
                if self.augment == "stain-nuclei":
                    from scipy import ndimage as ndi

                    from napari_dgseg.core.train.augment import nucleus_jitter

                    regions = lab if self.instance else ndi.label(lab > 0)[0]
                    img = nucleus_jitter(img, regions, self.rng)
                if self.augment in ("stain", "stain-nuclei"):
                    img = stain_jitter(img, self.rng)
                img = camera_jitter(img, self.rng)
        k = int(self.rng.integers(0, 4))
        img, lab = np.rot90(img, k), np.rot90(lab, k)
        if self.rng.random() < 0.5:
            img, lab = img[:, ::-1], lab[:, ::-1]
        return np.ascontiguousarray(img), np.ascontiguousarray(lab)

    def batch(self, n: int) -> dict[str, torch.Tensor]:
        """A batch: ``image`` (n,3,s,s) float [0,1], ``target`` (n,s,s) long, ``domain`` (n,)."""
        images, targets, instances, doms = [], [], [], []
        for _ in range(n):
            d = int(self.rng.integers(0, len(self.domains)))
            samples = self.domains[d][1]
            img, lab = self._crop(samples[int(self.rng.integers(0, len(samples)))])
            tgt = semantic_target(np.maximum(lab, 0), self.num_classes, self.instance)
            tgt[lab < 0] = IGNORE_INDEX
            images.append(img)
            targets.append(tgt)
            instances.append(np.maximum(lab, 0))
            doms.append(d)
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0)
        return {
            "image": x.contiguous(),
            "target": torch.from_numpy(np.stack(targets)),
            "instances": torch.from_numpy(np.stack(instances)),
            "domain": torch.tensor(doms, dtype=torch.long),
        }
