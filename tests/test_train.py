"""Training API: determinism, progress, cancel, provenance, learning something."""

import threading

import numpy as np
import pytest
import torch

from conftest import disks_image
from napari_dgseg.core.data.sample import Sample
from napari_dgseg.core.errors import CancelledError, InputError
from napari_dgseg.core.train.source import train

CFG = {"widths": [8, 16, 32]}


def _samples(n=4, domain="a"):
    out = []
    for i in range(n):
        img, lab = disks_image(96, seed=i)
        out.append(Sample(image=img, labels=lab, name=f"{domain}{i}", domain=domain))
    return out


@pytest.mark.slow
def test_deterministic_and_learns(tmp_path):
    seen = []
    b1 = train("unet", [_samples()], iters=40, size=64, batch=4, lr=3e-3, seed=1, config=CFG,
               device="cpu", progress=lambda i, n, logs: seen.append(logs["loss"]),
               val=_samples(2, "v"), out=tmp_path / "a.dgseg")
    b2 = train("unet", [_samples()], iters=40, size=64, batch=4, lr=3e-3, seed=1, config=CFG,
               device="cpu")
    for k, v in b1.state_dict().items():
        assert torch.equal(v, b2.state_dict()[k]), k
    assert len(seen) == 40 and np.mean(seen[-5:]) < np.mean(seen[:5])
    prov = b1.provenance
    assert prov["seed"] == 1 and prov["iterations"] == 40
    assert prov["val_metrics"]["dice"] > 0.5  # disks are easy
    assert b1.manifest["task"] == "nuclei"
    assert (tmp_path / "a.dgseg").is_file()


def test_cancel_writes_nothing(tmp_path):
    ev = threading.Event()

    def stop(i, n, logs):
        if i == 3:
            ev.set()

    with pytest.raises(CancelledError):
        train("unet", [_samples()], iters=50, size=64, config=CFG, device="cpu",
              progress=stop, cancel=ev, out=tmp_path / "x.dgseg")
    assert not (tmp_path / "x.dgseg").exists()


def test_bad_arguments(tmp_path):
    with pytest.raises(InputError, match="not a folder"):
        train("unet", [tmp_path / "nope"], iters=2)
    with pytest.raises(InputError, match="multiple of"):
        train("unet", [_samples()], iters=2, size=66, config=CFG)
    with pytest.raises(InputError, match="valid families"):
        train("unetz", [_samples()], iters=2)
