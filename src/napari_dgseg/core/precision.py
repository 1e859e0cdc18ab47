"""Numerical precision, host-to-device copies and CPU threads for tiled inference.

* :func:`check_precision` validates ``fp32`` / ``bf16`` / ``fp16`` against the device (fp16 needs
  CUDA; bf16 runs on CUDA and, through CPU autocast, on the CPU).
* :func:`autocast` is the mixed-precision context one tile batch runs under (a no-op for fp32).
* :func:`to_device` copies a tile batch to the device: on CUDA through pinned (page-locked) host
  memory with ``non_blocking=True``, so the copy is a direct DMA transfer queued on the stream
  instead of a staged synchronous one; elsewhere a plain ``.to``.
* :func:`set_threads` sets the CPU threads torch uses (``--threads``).

The accuracy of bf16 against fp32 on every shipped bundle is measured by
``benchmarks/precision.py`` (docs/distributed.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from napari_dgseg.core.errors import InputError

#: Precisions tiled inference accepts.
PRECISIONS = ("fp32", "bf16", "fp16")

#: Autocast dtype of each reduced precision.
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

#: Device types each reduced precision runs on.
_DEVICES = {"bf16": ("cuda", "cpu"), "fp16": ("cuda",)}


def check_precision(precision: str, device: torch.device) -> str:
    """Return ``precision`` normalised (lower case); one-line :class:`InputError` when invalid.

    Parameters
    ----------
    precision : str
        ``fp32``, ``bf16`` or ``fp16``.
    device : torch.device
        The device inference runs on.
    """
    name = str(precision).lower()
    if name not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; choose one of {list(PRECISIONS)}")
    if name != "fp32" and device.type not in _DEVICES[name]:
        where = " or ".join(_DEVICES[name])
        raise InputError(
            f"--precision {name} runs on {where} only, not on {device.type}; "
            f"use --precision fp32{' or bf16' if device.type == 'cpu' else ''}"
        )
    return name


@contextlib.contextmanager
def autocast(device: torch.device, precision: str = "fp32") -> Iterator[None]:
    """Mixed-precision context for one forward pass (``fp32``: nothing changes).

    Under bf16/fp16 autocast, convolutions and matrix products run in the reduced type while
    reductions such as softmax stay in float32 (torch's autocast op lists).
    """
    name = check_precision(precision, device)
    if name == "fp32":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=_DTYPES[name]):
        yield


@dataclass(frozen=True)
class TransferPlan:
    """How a host tensor is copied to a device.

    Attributes
    ----------
    pin : bool
        Copy through page-locked host memory first.
    non_blocking : bool
        Queue the copy asynchronously on the device's stream.
    """

    pin: bool
    non_blocking: bool


def transfer_plan(device: torch.device) -> TransferPlan:
    """Pinned, non-blocking copies for CUDA; plain synchronous copies for CPU and MPS.

    Pinning needs CUDA (on a CPU-only build ``pin_memory`` raises), and a non-blocking copy from
    pageable memory is synchronous anyway, so the two go together.
    """
    cuda = device.type == "cuda"
    return TransferPlan(pin=cuda, non_blocking=cuda)


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy the host tensor ``x`` to ``device`` following :func:`transfer_plan`.

    Ops queued later on the same CUDA stream see the finished copy, and reading the results back
    with ``.cpu()`` synchronises, so no explicit synchronisation is needed.
    """
    plan = transfer_plan(device)
    if x.device == device:
        return x
    if plan.pin and not x.is_pinned():
        x = x.pin_memory()
    return x.to(device, non_blocking=plan.non_blocking)


def set_threads(threads: int | None) -> int:
    """Set the CPU threads torch uses for intra-op parallelism; returns the number in effect.

    ``None`` leaves torch's default (``OMP_NUM_THREADS`` or the core count).
    """
    if threads is not None:
        if int(threads) < 1:
            raise InputError(f"--threads {threads} must be >= 1")
        if torch.get_num_threads() != int(threads):
            torch.set_num_threads(int(threads))
    return torch.get_num_threads()
