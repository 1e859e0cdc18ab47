"""Global alignment by style transfer: stage 1 of Mind the Gap.

Su, Yao, Yang, Wang, Yan, Sun & Huang, "Mind the Gap: Alleviating Local Imbalance for
Unsupervised Cross-Modality Medical Image Segmentation" (2023): an AdaIN auto-encoder whose style
comes from an MLP of the domain label renders labelled source images in the target domain's
style, so that adaptation trains on target-like source images with their labels unchanged.

* :mod:`.model`: config, AdaIN, encoder, decoder, domain MLPs, patch discriminator;
* :mod:`.losses`: reconstruction, content, cycle and adversarial losses and their weights;
* :mod:`.train`: the training loop (:func:`train_style_steps`, :func:`train_style`);
* :mod:`.transfer`: :class:`StyleModel` (apply to images and to adaptation batches);
* :mod:`.io`: ``.dgstyle`` files (JSON + safetensors, loaded without running code).
"""

from __future__ import annotations

from napari_dgseg.core.style.io import STYLE_SUFFIX, load_style, save_style
from napari_dgseg.core.style.model import PRESETS, StyleConfig, get_preset
from napari_dgseg.core.style.train import train_style, train_style_steps
from napari_dgseg.core.style.transfer import StyleModel, colour_stats

__all__ = [
    "PRESETS",
    "STYLE_SUFFIX",
    "StyleConfig",
    "StyleModel",
    "colour_stats",
    "get_preset",
    "load_style",
    "save_style",
    "train_style",
    "train_style_steps",
]
