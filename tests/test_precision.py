"""Precision (fp32/bf16/fp16), host-to-device copies, CPU threads and batch size of tiled inference."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from skimage.io import imsave

from conftest import disks_image
from napari_dgseg import load_bundle
from napari_dgseg.cli import main
from napari_dgseg.core.errors import InputError
from napari_dgseg.core.labels_io import read_labels
from napari_dgseg.core.precision import (
    autocast,
    check_precision,
    set_threads,
    to_device,
    transfer_plan,
)

CPU = torch.device("cpu")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("name", ["nuclei-unet", "nuclei-hovernet"])
def test_bf16_on_cpu_is_close_to_fp32(name):
    bundle = load_bundle(name)
    img, _ = disks_image(160, seed=3)
    ref = bundle.predict(img, device="cpu", dcin="none")
    low = bundle.predict(img, device="cpu", dcin="none", precision="bf16")
    assert low.provenance["precision"] == "bf16" and ref.provenance["precision"] == "fp32"
    assert low.probabilities.dtype == np.float32
    # bf16 keeps 8 bits of mantissa: probabilities move by a few 1e-3 (benchmarks/precision.py)
    assert float(np.abs(low.probabilities - ref.probabilities).max()) < 0.05
    fg_ref, fg_low = ref.labels > 0, low.labels > 0
    assert np.mean(fg_ref == fg_low) > 0.995
    # and it is not silently fp32: some probability differs
    assert float(np.abs(low.probabilities - ref.probabilities).max()) > 0


def test_autocast_runs_convolutions_in_bf16_on_cpu():
    conv = torch.nn.Conv2d(3, 4, 3)
    x = torch.rand(1, 3, 8, 8)
    with autocast(CPU, "bf16"):
        assert conv(x).dtype == torch.bfloat16
    with autocast(CPU, "fp32"):
        assert conv(x).dtype == torch.float32


def test_precision_checks_are_one_line():
    assert check_precision("BF16", CPU) == "bf16"
    with pytest.raises(InputError, match="runs on cuda only") as err:
        check_precision("fp16", CPU)
    assert "\n" not in str(err.value) and "bf16" in str(err.value)
    with pytest.raises(InputError, match="unknown precision"):
        check_precision("fp8", CPU)
    with pytest.raises(InputError, match="cuda or cpu only"):
        check_precision("bf16", torch.device("mps"))


def test_fp16_on_cpu_is_refused_in_one_line_by_the_cli(tmp_path, capsys):
    img, _ = disks_image(64, seed=1)
    imsave(tmp_path / "a.png", img, check_contrast=False)
    rc = main(["predict", "--model", "nuclei-unet", "--out", str(tmp_path / "o"), "--device",
               "cpu", "--precision", "fp16", str(tmp_path / "a.png")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--precision fp16 runs on cuda only" in err[0]
    assert not (tmp_path / "o").exists()


def test_transfer_plan_pins_and_queues_only_for_cuda():
    assert transfer_plan(CPU) == transfer_plan(torch.device("mps"))
    assert not transfer_plan(CPU).pin and not transfer_plan(CPU).non_blocking
    cuda = transfer_plan(torch.device("cuda", 0))
    assert cuda.pin and cuda.non_blocking


def test_to_device_on_cpu_is_the_same_tensor():
    x = torch.rand(2, 3, 4, 4)
    assert to_device(x, CPU) is x


@needs_cuda
def test_to_device_on_cuda_goes_through_pinned_memory(monkeypatch):
    pinned = []
    original = torch.Tensor.pin_memory

    def spy(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        pinned.append(out.is_pinned())
        return out

    monkeypatch.setattr(torch.Tensor, "pin_memory", spy)
    x = torch.rand(2, 3, 16, 16)
    y = to_device(x, torch.device("cuda"))
    assert pinned == [True] and y.is_cuda
    torch.testing.assert_close(y.cpu(), x)


@needs_cuda
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_reduced_precision_on_cuda_is_close_to_fp32(precision):
    bundle = load_bundle("nuclei-unet")
    img, _ = disks_image(160, seed=3)
    ref = bundle.predict(img, device="cuda", dcin="none", batch=8)
    low = bundle.predict(img, device="cuda", dcin="none", batch=8, precision=precision)
    assert float(np.abs(low.probabilities - ref.probabilities).max()) < 0.05


def test_set_threads():
    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1
        assert set_threads(None) == 1
        with pytest.raises(InputError, match="--threads 0 must be >= 1"):
            set_threads(0)
    finally:
        torch.set_num_threads(before)


def test_batch_size_threads_and_precision_flags_on_the_cli(tiny_bundle, tmp_path, capsys):
    img, _ = disks_image(150, seed=2)
    imsave(tmp_path / "a.png", img, check_contrast=False)
    model = str(tmp_path / "tiny.dgseg")
    base = ["predict", "--model", model, "--tile", "64", "--overlap", "16", "--quiet",
            "--device", "cpu", str(tmp_path / "a.png")]
    before = torch.get_num_threads()
    try:
        assert main([*base, "--out", str(tmp_path / "b1"), "--batch", "1"]) == 0
        one = json.loads(capsys.readouterr().out)["outputs"][0]
        assert main([*base, "--out", str(tmp_path / "b8"), "--batch-size", "8", "--threads", "1",
                     "--precision", "bf16"]) == 0
        eight = json.loads(capsys.readouterr().out)["outputs"][0]
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    a, pa = read_labels(one["labels"])
    b, pb = read_labels(eight["labels"])
    assert pa["batch"] == 1 and pb["batch"] == 8
    assert pa["precision"] == "fp32" and pb["precision"] == "bf16"
    assert np.mean(a == b) > 0.99
