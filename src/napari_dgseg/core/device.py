"""Device selection: CUDA, then Apple MPS, then CPU."""

from __future__ import annotations

import torch

from napari_dgseg.core.errors import InputError

DEVICES = ("auto", "cpu", "cuda", "mps")


def select_device(device: str | torch.device = "auto") -> torch.device:
    """Resolve ``"auto"`` to the best available device; check an explicit one is available."""
    if isinstance(device, torch.device):
        return device
    name = str(device).lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    base = name.split(":")[0]
    if base not in DEVICES:
        raise InputError(f"unknown device {device!r}; choose one of {list(DEVICES)}")
    if base == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' asked for but no CUDA GPU is available; use --device auto")
    if base == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise InputError("device 'mps' asked for but MPS is not available; use --device auto")
    return torch.device(name)
