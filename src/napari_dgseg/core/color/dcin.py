"""DCIN at inference: choose references and build the colour branches for every tile.

Modes (Shah, Fukuda & Cap, "Color-Quality Invariance for Robust Medical Image Segmentation", 2025):

``none``       the image as it is;
``gris``       transfer to the GRIS reference (the training histogram medoid);
``lris``       transfer to the training image whose embedding is cosine-nearest to the target's;
``full``       both branches, raw logits averaged; their disagreement is the uncertainty map;
``reference``  transfer to a reference the user chooses (an image or its (mean, std));
``auto``       ``full`` when the bundle has a reference bank, else ``none``.

The target's colour statistics come from its tissue pixels on a downsampled copy, computed once
per image or slide and applied identically to every tile, so a slide has no seams.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from napari_dgseg.core.color.bank import BANK_FILE, downsample, image_embedding, validate_bank
from napari_dgseg.core.color.tissue import has_tissue, image_color_stats
from napari_dgseg.core.color.transfer import FLAT_STD, _reference_stats, transfer
from napari_dgseg.core.errors import BundleError, InputError

DCIN_MODES = ("auto", "none", "gris", "lris", "full", "reference")

Branch = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class DcinPlan:
    """What DCIN will do for one image.

    Attributes
    ----------
    mode : str
        The resolved mode (``auto`` already decided).
    branches : list of callables
        Input transforms for :func:`napari_dgseg.core.predict.run_tiled`.
    references : list of dict
        One per branch: ``{"branch", "reference", "mean", "std"}`` for display and provenance.
    target_mean, target_std : list of float
        The target's colour statistics (None for ``none``).
    notice : str or None
        Why normalisation was skipped (no tissue, flat image), for the user.
    """

    mode: str
    branches: list[Branch]
    references: list[dict] = field(default_factory=list)
    target_mean: list[float] | None = None
    target_std: list[float] | None = None
    space: str = "lab-reinhard"
    notice: str | None = None

    def provenance(self) -> dict[str, Any]:
        return {"mode": self.mode, "space": self.space, "references": self.references,
                "target_mean": self.target_mean, "target_std": self.target_std,
                "notice": self.notice}


def _make_branch(t_mean: np.ndarray, t_std: np.ndarray, r_mean: np.ndarray, r_std: np.ndarray,
                 space: str) -> Branch:
    tm, ts = torch.tensor(t_mean, dtype=torch.float32), torch.tensor(t_std, dtype=torch.float32)
    rm, rs = torch.tensor(r_mean, dtype=torch.float32), torch.tensor(r_std, dtype=torch.float32)

    def branch(x: torch.Tensor) -> torch.Tensor:
        return transfer(x, tm.to(x.device), ts.to(x.device), rm.to(x.device), rs.to(x.device),
                        space=space)

    return branch


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def target_sample(adapter: Any, max_side: int = 1024) -> np.ndarray:
    """A strided uint8 RGB copy of the whole image (reads only the strided pixels of a slide)."""
    step = max(1, int(np.ceil(max(adapter.height, adapter.width) / max_side)))
    return adapter.to_rgb_uint8(np.asarray(adapter.image[::step, ::step]))


def plan_dcin(bundle: Any, adapter: Any, mode: str = "auto", reference: Any = None) -> DcinPlan:
    """Resolve ``mode`` for ``bundle`` and the image behind ``adapter`` into colour branches."""
    if mode not in DCIN_MODES:
        raise InputError(f"unknown DCIN mode {mode!r}; choose one of {list(DCIN_MODES)}")
    bank = bundle.extra(BANK_FILE)
    space = (bundle.manifest.get("dcin") or {}).get("space", "lab-reinhard")
    if mode == "auto":
        mode = "full" if bank is not None else "none"
    if mode == "none":
        return DcinPlan(mode="none", branches=[_identity], space=space)
    if mode in ("gris", "lris", "full") and bank is None:
        raise InputError(
            f"model {bundle.name!r} has no DCIN reference bank, needed for mode {mode!r}; add one "
            "with `dgseg bank MODEL --source TRAINING_DIR`, or use mode 'reference' or 'none'"
        )
    if mode in ("gris", "lris", "full"):
        validate_bank(bank, bundle.name)
    sample = target_sample(adapter)
    if not has_tissue(sample):
        # White background only: statistics of glass would turn it into tissue colours.
        return DcinPlan(mode="none", branches=[_identity], space=space,
                        notice=f"DCIN {mode} skipped: no tissue found (blank or white image)")
    t_mean, t_std = image_color_stats(sample, space=space)
    if (t_std < FLAT_STD).all():
        # A flat image: nothing to normalise (transfer would amplify noise).
        return DcinPlan(mode="none", branches=[_identity], space=space,
                        notice=f"DCIN {mode} skipped: the image is a single flat colour")
    plan = DcinPlan(mode=mode, branches=[], target_mean=t_mean.tolist(), target_std=t_std.tolist(),
                    space=space)
    names = (bundle.manifest.get("dcin") or {}).get("names") or []
    if mode == "reference":
        if reference is None:
            raise InputError("DCIN mode 'reference' needs a reference image (or its mean and std)")
        r_mean, r_std = _reference_stats(_as_reference(reference), space)
        plan.branches.append(_make_branch(t_mean, t_std, r_mean, r_std, space))
        plan.references.append({"branch": "reference", "reference": _describe(reference),
                                "mean": r_mean.tolist(), "std": r_std.tolist()})
        return plan
    picks: list[tuple[str, int]] = []
    if mode in ("gris", "full"):
        picks.append(("gris", int(bank["gris"][0])))
    if mode in ("lris", "full"):
        emb = image_embedding(bundle.model, downsample(sample, 512), bundle.input_spec)
        if bank["embedding"].shape[1] != emb.shape[0]:
            raise BundleError(
                f"model {bundle.name!r}: the DCIN reference bank holds {bank['embedding'].shape[1]}-"
                f"value embeddings but the model makes {emb.shape[0]}; rebuild it with "
                f"`dgseg bank {bundle.name} --source TRAINING_DIR`"
            )
        sims = bank["embedding"].numpy() @ emb
        picks.append(("lris", int(np.argmax(sims))))
    for branch_name, i in picks:
        r_mean = bank["mean"][i].double().numpy()
        r_std = bank["std"][i].double().numpy()
        plan.branches.append(_make_branch(t_mean, t_std, r_mean, r_std, space))
        plan.references.append({
            "branch": branch_name,
            "reference": names[i] if i < len(names) else f"training image #{i}",
            "index": i,
            "mean": r_mean.tolist(),
            "std": r_std.tolist(),
        })
    return plan


def _as_reference(reference: Any) -> Any:
    if isinstance(reference, (str,)) or hasattr(reference, "__fspath__"):
        from napari_dgseg.core.slide import open_image

        return np.asarray(open_image(reference).levels[-1])
    return reference


def _describe(reference: Any) -> str:
    if isinstance(reference, str) or hasattr(reference, "__fspath__"):
        return str(reference)
    if isinstance(reference, (tuple, list)):
        return "user (mean, std)"
    shape = getattr(reference, "shape", None)
    return f"user image {tuple(shape)}" if shape is not None else "user reference"


def normalized_image(adapter: Any, branch: Branch, *, block: int = 1024) -> np.ndarray:
    """The whole image through one branch, block by block (uint8 RGB, for display)."""
    out = np.zeros((adapter.height, adapter.width, 3), np.uint8)
    for y in range(0, adapter.height, block):
        for x in range(0, adapter.width, block):
            y1, x1 = min(y + block, adapter.height), min(x + block, adapter.width)
            rgb = torch.from_numpy(adapter.region(y, y1, x, x1)).permute(2, 0, 1)[None]
            with torch.inference_mode():
                res = branch(rgb)[0].permute(1, 2, 0).numpy()
            out[y:y1, x:x1] = np.round(res * 255.0).astype(np.uint8)
    return out
