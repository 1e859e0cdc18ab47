"""Cancel lands within one layer of a forward pass, not after a whole batch of tiles.

A user's *Cancel* used to wait for the batch in flight (two 1024 px tiles, times two DCIN
branches: seconds on a CPU). :func:`napari_dgseg.core.cancel.cancel_hooks` makes every layer
check the token; these tests request a cancel from *inside* a forward pass and count how many
layers still ran (no clock involved).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from torch import nn

from napari_dgseg.core.cancel import cancel_hooks
from napari_dgseg.core.errors import CancelledError
from napari_dgseg.core.models.base import SegModel
from napari_dgseg.core.predict import run_tiled


class Chain(SegModel):
    """Eight 1x1 convolutions in a row; ``ran`` records which ones ran."""

    divisor = 1

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Conv2d(3 if i == 0 else 4, 4, 1) for i in range(8))
        self.head = nn.Conv2d(4, 2, 1)
        self.ran: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            self.ran.append(i)
        return self.head(x)


def _cancel_in_layer(model: Chain, index: int, cancel: threading.Event) -> None:
    """Press Cancel while layer ``index`` runs (as the GUI thread would, mid-forward)."""
    model.layers[index].register_forward_hook(lambda *_: cancel.set())


def test_run_tiled_stops_at_the_next_layer():
    model, cancel = Chain(), threading.Event()
    _cancel_in_layer(model, 2, cancel)
    image = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(CancelledError):
        run_tiled(model, image, tile=32, overlap=0, batch=4, device="cpu", cancel=cancel)
    assert model.ran == [0, 1, 2]  # layer 3 of the first forward pass never ran


def test_second_branch_is_not_started_after_a_cancel():
    model, cancel = Chain(), threading.Event()
    calls = []

    def first(x):
        calls.append("first")
        cancel.set()  # the cancel arrives after the first branch's forward was prepared
        return x

    def second(x):
        calls.append("second")
        return x

    with pytest.raises(CancelledError):
        run_tiled(
            model, np.zeros((32, 32, 3), np.uint8), tile=32, overlap=0, device="cpu",
            branches=[first, second], cancel=cancel,
        )
    assert calls == ["first"]


def test_hooks_are_removed_and_other_threads_are_not_stopped():
    model, cancel = Chain(), threading.Event()
    cancel.set()
    x = torch.zeros(1, 3, 4, 4)
    with cancel_hooks(model, cancel):
        with pytest.raises(CancelledError):
            model(x)
        errors = []

        def other_thread() -> None:
            try:
                model(x)
            except CancelledError as exc:  # pragma: no cover - the failure being tested
                errors.append(exc)

        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
        assert errors == []
    model.ran.clear()
    model(x)  # no hook left behind
    assert len(model.ran) == 8


def test_no_token_registers_nothing():
    model = Chain()
    with cancel_hooks(model, None):
        assert all(not m._forward_pre_hooks for m in model.modules())
