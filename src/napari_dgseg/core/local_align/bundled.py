"""D1 inside a bundle: storage, loading without code, and the model tiled inference runs.

A bundle carrying D1 (made by ``dgseg adapt --local-alignment`` or by a fitted domain-gap map)
holds

* ``local_align.safetensors``: D1's state dict with every key prefixed ``d1.``;
* a manifest entry ``"local_alignment"``: ``{"d1": {"in_channels": F, "hidden": H}, "reweight":
  bool, "mask": ..., "method": ..., "weights": {...}}``; ``reweight`` says whether predictions
  feed the reweighted features to the label predictor (true after local-alignment adaptation,
  the target flow of Mind the Gap; false for a D1 fitted afterwards to a frozen model, which was
  never trained on reweighted features);
* ``"local_mask"`` in the manifest's ``"capabilities"`` list.

Loading stays code-free: D1 is rebuilt from the two integers of its JSON config (checked, and
built on the meta device first so a forged config cannot allocate), and its tensors must have
exactly the expected names and shapes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from napari_dgseg.core.errors import BundleError, InputError
from napari_dgseg.core.local_align.discriminators import (
    D1Config,
    PixelDiscriminator,
    display_mask,
    local_feature_mask,
    reweight_features,
)

#: Name of the extra tensor file and the key prefix of D1's tensors in it.
TENSOR_FILE = "local_align"
D1_PREFIX = "d1."
#: Manifest keys.
MANIFEST_KEY = "local_alignment"
CAPABILITIES_KEY = "capabilities"
LOCAL_MASK = "local_mask"
#: The output key of the local mask in ``infer`` maps (a dense, blended ``(B, 1, H, W)`` map).
MASK_OUTPUT = "local_mask"


def check_family(family: Any) -> None:
    """Refuse, in one line, a family that cannot reweight its features (no local alignment)."""
    if getattr(family, "features_and_infer", None) is None:
        from napari_dgseg.core.registry import family_names, get_family

        able = [n for n in family_names() if get_family(n).features_and_infer is not None]
        raise InputError(
            f"the {family.name!r} family exposes no feature map for a local feature mask "
            f"(local alignment, domain-gap map); use a model of one of these families: {able}"
        )


class LocalMaskModel(nn.Module):
    """A segmenter plus D1: ``infer`` adds ``local_mask`` = ``tanh(|D1(f)|)`` ``(B, 1, H, W)``.

    With ``reweight`` the label predictor reads ``f_hat = f + f * tanh(m)`` (Mind the Gap's
    target flow); without, the segmenter's own outputs are unchanged. Presents the
    :class:`~napari_dgseg.core.models.base.SegModel` surface tiled inference uses (``divisor``,
    ``discrete_outputs``, ``infer``, ``forward``, ``embed``).
    """

    def __init__(self, segmenter: nn.Module, d1: nn.Module,
                 features_and_infer: Callable[..., Any], reweight: bool) -> None:
        super().__init__()
        self.segmenter = segmenter
        self.d1 = d1
        self._features_and_infer = features_and_infer
        self.reweight = bool(reweight)
        self.divisor = int(segmenter.divisor)
        self.num_classes = int(getattr(segmenter, "num_classes", 2))
        self.discrete_outputs = tuple(segmenter.discrete_outputs)

    def infer(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The segmenter's ``infer`` maps (reweighted when ``reweight``) and ``local_mask``."""
        seen: dict[str, torch.Tensor] = {}

        def hook(f: torch.Tensor) -> torch.Tensor:
            seen["m"] = local_feature_mask(self.d1, f)
            return reweight_features(f, seen["m"]) if self.reweight else f

        feats, maps = self._features_and_infer(self.segmenter, x, hook)
        m = seen["m"] if "m" in seen else local_feature_mask(self.d1, feats)
        return {**maps, MASK_OUTPUT: display_mask(m)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.infer(x)["logits"]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The segmenter's global embedding (DCIN's LRIS)."""
        return self.segmenter.embed(x)


def has_d1(bundle: Any) -> bool:
    """Whether ``bundle`` carries a D1 (manifest entry present)."""
    return isinstance(bundle.manifest.get(MANIFEST_KEY), Mapping)


def supports_local_mask(bundle: Any) -> bool:
    """Whether predictions of ``bundle`` hold a local mask (its manifest declares ``local_mask``)."""
    caps = bundle.manifest.get(CAPABILITIES_KEY) or []
    return LOCAL_MASK in caps and has_d1(bundle)


def load_d1(bundle: Any) -> PixelDiscriminator:
    """D1 of ``bundle``, rebuilt from its JSON config and tensors (no code is read).

    Raises
    ------
    BundleError
        The entry or tensors are missing, malformed or do not fit each other.
    """
    source = str(bundle.path or bundle.name)
    entry = bundle.manifest.get(MANIFEST_KEY)
    if not isinstance(entry, Mapping) or not isinstance(entry.get("d1"), Mapping):
        raise BundleError(f"{source}: no '{MANIFEST_KEY}' entry with a 'd1' config; it has no D1")
    try:
        cfg = D1Config(**dict(entry["d1"]))
    except (TypeError, ValueError) as exc:
        raise BundleError(f"{source}: the D1 config {dict(entry['d1'])} is invalid ({exc}); the "
                          "bundle was edited or is not genuine") from None
    tensors = bundle.extra(TENSOR_FILE)
    if tensors is None:
        raise BundleError(f"{source}: declares D1 but holds no {TENSOR_FILE}.safetensors")
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in PixelDiscriminator(cfg).state_dict().items()}
    state = {k[len(D1_PREFIX):]: v for k, v in tensors.items() if k.startswith(D1_PREFIX)}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != expected or any(v.dtype != torch.float32 for v in state.values()):
        raise BundleError(f"{source}: D1's tensors do not fit its config {cfg.as_dict()}; the "
                          "bundle was made by another version or edited")
    d1 = PixelDiscriminator(cfg)
    d1.load_state_dict(state, strict=True)
    return d1.eval()


def inference_model(bundle: Any) -> nn.Module:
    """The network tiled inference runs: ``bundle.model``, wrapped with D1 when it has one."""
    if not has_d1(bundle):
        return bundle.model
    check_family(bundle.family)
    entry = bundle.manifest[MANIFEST_KEY]
    return LocalMaskModel(bundle.model, load_d1(bundle), bundle.family.features_and_infer,
                          reweight=bool(entry.get("reweight", False)))


def attach_d1(bundle: Any, d1: PixelDiscriminator, *, reweight: bool,
              info: Mapping[str, Any] | None = None) -> None:
    """Store ``d1`` in ``bundle`` (tensors, manifest entry, ``local_mask`` capability)."""
    bundle.set_extra(TENSOR_FILE, {D1_PREFIX + k: v.float() for k, v in d1.state_dict().items()})
    bundle.manifest[MANIFEST_KEY] = {
        "d1": d1.config.as_dict(),
        "reweight": bool(reweight),
        "mask": "tanh(|D1(f)|) in [0, 1): 0 = the feature looks like the source domain",
        **dict(info or {}),
    }
    caps = [c for c in (bundle.manifest.get(CAPABILITIES_KEY) or []) if c != LOCAL_MASK]
    bundle.manifest[CAPABILITIES_KEY] = [*caps, LOCAL_MASK]


def mask_from_maps(maps: Mapping[str, Any]) -> Any:
    """The ``(H, W)`` local mask of blended inference maps, or None."""
    value = maps.get(MASK_OUTPUT)
    return None if value is None else value[0]
