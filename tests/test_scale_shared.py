"""One scale for a batch of tiles (``dgseg predict --rescale shared``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_dgseg.core.data.synthetic import make_nuclei
from napari_dgseg.core.resample import zoom_image
from napari_dgseg.core.scale_batch import shared_scale

MANIFEST = {"task": "nuclei", "scale": {"pixel_size_um": 0.25, "object_size_px": 16.04,
                                         "train_range": [0.7, 1.4]}}


def _small_nuclei_tiles(n: int = 3, factor: float = 0.55, size: int = 192) -> list[np.ndarray]:
    """Tiles of one "slide" whose nuclei are ``factor`` times the model's size."""
    big, _ = make_nuclei(int(size * n / factor) + 8, "clean", seed=21)
    small = np.clip(np.rint(zoom_image(big, factor)), 0, 255).astype(np.uint8)
    return [small[:size, i * size:(i + 1) * size] for i in range(n)]


def test_one_factor_from_the_median_of_the_tiles_estimates(monkeypatch):
    import napari_dgseg.core.scale_estimate as se

    sizes = iter([8.0, 9.0, None, 30.0])
    monkeypatch.setattr(se, "estimate_object_size", lambda *a, **k: {"object_size_px": next(sizes)})
    tiles = [np.full((64, 64, 3), 200, np.uint8)] * 4
    found = shared_scale(MANIFEST, tiles)
    assert found["sizes"] == [8.0, 9.0, None, 30.0] and found["estimated"] == 3
    assert found["object_size_px"] == 9.0  # the median of the three estimates
    assert found["applied"] and found["factor"] == pytest.approx(16.04 / 9.0, abs=1e-3)
    assert "median nucleus size 9 px over 3 of 4 images" in found["reason"]
    sizes = iter([15.0, 16.0, 17.0])  # inside the model's tolerance: one factor, and it is 1
    found = shared_scale(MANIFEST, tiles[:3])
    assert found["factor"] == 1.0 and not found["applied"]


def test_no_estimate_leaves_each_image_its_own(monkeypatch):
    tiles = [np.full((32, 32, 3), 200, np.uint8)]  # under the estimator's smallest side
    found = shared_scale(MANIFEST, tiles)
    assert found["factor"] is None and found["sizes"] == [None] and "each keeps its own" in found["reason"]
    assert shared_scale({"task": "binary"}, [np.zeros((64, 64, 3), np.uint8)])["factor"] is None


def test_small_nuclei_tiles_of_one_slide_get_one_enlarging_factor():
    found = shared_scale(MANIFEST, _small_nuclei_tiles())
    assert found["estimated"] == 3 and found["applied"]
    assert 1.4 < found["factor"] < 2.3  # nuclei 0.55x the model's size: about 1.8x


def test_cli_applies_the_shared_factor_to_every_tile_and_records_it(tiny_bundle, tmp_path, capsys):
    from skimage.io import imsave

    from napari_dgseg.cli import main
    from napari_dgseg.core.labels_io import read_labels

    tiles = _small_nuclei_tiles()
    for i, t in enumerate(tiles):
        imsave(tmp_path / f"t{i}.png", t, check_contrast=False)
    model = str(tmp_path / "tiny.dgseg")
    rc = main(["predict", "--model", model, "--out", str(tmp_path / "o"), "--rescale", "shared",
               "--quiet", *[str(tmp_path / f"t{i}.png") for i in range(3)]])
    captured = capsys.readouterr()
    assert rc == 0 and "one factor for the batch" in captured.err
    out = json.loads(captured.out)
    factors = {row["scale"]["factor"] for row in out["outputs"]}
    assert len(factors) == 1 and out["shared_scale"]["factor"] == pytest.approx(factors.pop())
    assert all(row["scale"]["source"] == "shared" for row in out["outputs"])
    _, prov = read_labels(out["outputs"][0]["labels"])
    assert prov["scale"]["shared"]["estimated"] == 3
    rc = main(["predict", "--model", model, "--out", str(tmp_path / "o2"), "--rescale", "shared",
               "--scale", "2", "--quiet", str(tmp_path / "t0.png")])
    captured = capsys.readouterr()
    assert rc == 2 and "--rescale shared estimates one factor" in captured.err
    assert "Traceback" not in captured.err and not (tmp_path / "o2").exists()


def test_a_broken_file_in_the_batch_fails_alone(tiny_bundle, tmp_path, capsys):
    from skimage.io import imsave

    from napari_dgseg.cli import main

    for i, t in enumerate(_small_nuclei_tiles(2)):
        imsave(tmp_path / f"t{i}.png", t, check_contrast=False)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    rc = main(["predict", "--model", str(tmp_path / "tiny.dgseg"), "--out", str(tmp_path / "o"),
               "--rescale", "shared", "--quiet", str(tmp_path / "t0.png"), str(tmp_path / "t1.png"),
               str(tmp_path / "broken.png")])
    captured = capsys.readouterr()
    assert rc != 0 and "Traceback" not in captured.err and "broken.png" in captured.err
    out = json.loads(captured.out)
    assert out["shared_scale"]["images"] == 2 and len(out["outputs"]) == 2
