"""``select_device``: auto order CUDA > MPS > CPU, explicit names, and clear errors.

The CUDA and MPS branches are exercised without such hardware by patching the availability checks.
"""

from __future__ import annotations

import types

import pytest
import torch

from napari_dgseg.core.device import DEVICES, select_device
from napari_dgseg.core.errors import InputError


def _available(monkeypatch, cuda: bool, mps: bool | None) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    if mps is None:  # a torch build without the MPS backend (deleting the attribute does not
        # stick: torch.backends imports it again on access), so replace torch.backends
        monkeypatch.setattr(torch, "backends", types.SimpleNamespace())
    else:
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


@pytest.mark.parametrize(
    "cuda,mps,want",
    [(False, False, "cpu"), (False, None, "cpu"), (True, False, "cuda"), (True, True, "cuda"),
     (False, True, "mps"), (True, None, "cuda")],
)
def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, want):
    _available(monkeypatch, cuda, mps)
    assert select_device("auto") == torch.device(want)
    assert select_device("AUTO") == torch.device(want)
    assert select_device() == torch.device(want)


def test_explicit_names(monkeypatch):
    _available(monkeypatch, cuda=True, mps=True)
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("CPU") == torch.device("cpu")
    assert select_device("cuda") == torch.device("cuda")
    assert select_device("cuda:1") == torch.device("cuda", 1)
    assert select_device("mps") == torch.device("mps")
    dev = torch.device("cuda", 3)
    assert select_device(dev) is dev  # a torch.device is taken as it is
    assert DEVICES == ("auto", "cpu", "cuda", "mps")


def test_cpu_needs_no_accelerator(monkeypatch):
    _available(monkeypatch, cuda=False, mps=None)
    assert select_device("cpu") == torch.device("cpu")


def test_unavailable_accelerators_are_refused_with_a_clear_message(monkeypatch):
    _available(monkeypatch, cuda=False, mps=False)
    with pytest.raises(InputError) as err:
        select_device("cuda")
    assert str(err.value) == (
        "device 'cuda' asked for but no CUDA GPU is available; use --device auto"
    )
    with pytest.raises(InputError, match="no CUDA GPU"):
        select_device("cuda:0")
    with pytest.raises(InputError) as err:
        select_device("mps")
    assert str(err.value) == "device 'mps' asked for but MPS is not available; use --device auto"
    _available(monkeypatch, cuda=True, mps=None)  # a torch build without the MPS backend
    with pytest.raises(InputError, match="MPS is not available"):
        select_device("mps")


@pytest.mark.parametrize("name", ["tpu", "gpu", "", "cpux", "xla:0"])
def test_unknown_names_are_refused(monkeypatch, name):
    _available(monkeypatch, cuda=True, mps=True)
    with pytest.raises(InputError) as err:
        select_device(name)
    assert str(err.value) == (
        f"unknown device {name!r}; choose one of ['auto', 'cpu', 'cuda', 'mps']"
    )


def test_real_machine_auto_is_consistent_with_torch():
    dev = select_device("auto")
    if torch.cuda.is_available():
        assert dev.type == "cuda"
    else:
        assert dev.type in ("mps", "cpu")
