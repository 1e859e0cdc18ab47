"""Inference at the model's scale: tile-wise resampling, outputs back on the image grid, the
reader's pixel size reaching inference, and the fundus field of view."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_dgseg.core.data.synthetic import make_nuclei, make_vessels
from napari_dgseg.core.imageprep import ImageAdapter
from napari_dgseg.core.resample import ResampledImage, resample_to, zoom_image


def _u8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.round(a), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------- resampling


@pytest.mark.parametrize("factor", [0.4, 1.7, 3.0])
def test_resampled_regions_agree_with_the_whole_image(factor):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    resized = ResampledImage.of(ImageAdapter.from_array(image), factor)
    whole = resized.region(0, resized.height, 0, resized.width)
    np.testing.assert_allclose(whole, zoom_image(image, factor) / 255.0, atol=1e-5)
    h, w = resized.height, resized.width
    for y0, y1, x0, x1 in ((0, h // 2, 0, w // 3), (h // 3, h, w // 4, w), (5, 9, 7, 8)):
        np.testing.assert_allclose(resized.region(y0, y1, x0, x1), whole[y0:y1, x0:x1], atol=1e-5)


def test_outputs_back_on_the_image_grid():
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 5, (40, 40)).astype(np.int32)
    logits = rng.normal(size=(3, 40, 40)).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(0)
    out = resample_to({"labels": ids, "p": probs, "other": "x", "small": np.zeros((3, 3))},
                      (40, 40), (100, 100))
    assert out["labels"].shape == (100, 100) and out["labels"].dtype == np.int32
    assert set(np.unique(out["labels"])) <= set(np.unique(ids))  # never a mixed id
    np.testing.assert_array_equal(out["labels"][::5, ::5][:8, :8], ids[::2, ::2][:8, :8])
    np.testing.assert_allclose(out["p"].sum(0), 1.0, atol=1e-5)
    assert out["other"] == "x" and out["small"].shape == (3, 3)


# ---------------------------------------------------------------------- predictions


def test_upsampled_tile_with_its_pixel_size_gives_the_same_instances():
    from napari_dgseg import load_bundle
    from napari_dgseg.core.metrics import instance_scores

    bundle = load_bundle("nuclei-hovernet")
    image, _ = make_nuclei(256, "clean", seed=21)
    at_1x = bundle.predict(image, device="cpu", rescale="off")
    big = _u8(zoom_image(image, 2.0))
    pred = bundle.predict(big, device="cpu", pixel_size_um=(0.125, 0.125))
    assert pred.labels.shape == big.shape[:2]
    prov = pred.provenance["scale"]
    assert (prov["source"], prov["factor"], prov["applied"]) == ("metadata", 0.5, True)
    assert prov["model_grid_shape"] == [256, 256]
    down = pred.labels[::2, ::2]
    assert instance_scores(down, at_1x.labels)["aji"] >= 0.9
    # each instance keeps one id: its pixels are one connected region
    from scipy import ndimage as ndi

    ids = np.unique(pred.labels)[1:]
    pieces = [ndi.label(pred.labels == i)[1] for i in ids[:40]]
    assert max(pieces) == 1
    # without the pixel size nor an estimate, the network sees objects twice too large
    plain = bundle.predict(big, device="cpu", rescale="off")
    assert instance_scores(plain.labels[::2, ::2], at_1x.labels)["aji"] < 0.85


def test_tiles_stream_through_the_resampled_image(tiny_bundle):
    """Small tiles on the model grid give the result of one tile (no seams from resampling)."""
    image, _ = make_nuclei(200, "clean", seed=4)
    one = tiny_bundle.predict(image, device="cpu", scale=1.6, tile=512)
    tiled = tiny_bundle.predict(image, device="cpu", scale=1.6, tile=96, overlap=32)
    assert one.provenance["scale"]["model_grid_shape"] == [320, 320]
    np.testing.assert_allclose(tiled.probabilities, one.probabilities, atol=2e-3)
    assert one.labels.shape == (200, 200)


def test_fundus_field_of_view_and_rim_are_empty():
    from napari_dgseg import load_bundle
    from napari_dgseg.core.fov import field_of_view

    image, _, fov = make_vessels(256, "camera-b", seed=5)
    bundle = load_bundle("vessels-ram-sgcg")
    pred = bundle.predict(image, device="cpu", dcin="none")
    assert pred.provenance["fov"]["applied"]
    assert not pred.labels[~fov].any()
    mask, info = field_of_view(ImageAdapter.from_array(image))
    assert not pred.labels[~mask].any() and info["rim_px"] >= 3
    np.testing.assert_allclose(pred.probabilities[0][~mask], 1.0)
    # a crop inside the eye has no dark surround: nothing is masked
    assert field_of_view(ImageAdapter.from_array(image[96:160, 96:160]))[0] is None
    off = bundle.predict(image, device="cpu", dcin="none", fov="off")
    assert not off.provenance["fov"]["applied"]


# ---------------------------------------------------------------------- reader -> CLI


def test_tiff_resolution_reaches_inference(tiny_bundle, tmp_path, capsys):
    import tifffile

    from napari_dgseg.cli import main
    from napari_dgseg.core.labels_io import read_labels

    image, _ = make_nuclei(128, "clean", seed=2)
    # 0.125 um/px written as TIFF resolution tags (pixels per centimetre)
    tifffile.imwrite(tmp_path / "tile.tif", image, photometric="rgb",
                     resolution=(1e4 / 0.125, 1e4 / 0.125), resolutionunit="CENTIMETER")
    rc = main(["predict", "--model", str(tmp_path / "tiny.dgseg"), "--out", str(tmp_path / "o"),
               "--quiet", str(tmp_path / "tile.tif")])
    assert rc == 0
    row = json.loads(capsys.readouterr().out)["outputs"][0]
    assert row["scale"] == {"factor": 0.5, "source": "metadata", "proposed": 0.5}
    labels, prov = read_labels(row["labels"])
    assert labels.shape == (128, 128)
    assert prov["scale"]["image_pixel_size_um"] == pytest.approx(0.125)
    assert prov["pixel_size_um"] == pytest.approx([0.125, 0.125])
    # the user's pixel size wins over the file's; two overrides at once are refused
    rc = main(["predict", "--model", str(tmp_path / "tiny.dgseg"), "--out", str(tmp_path / "o2"),
               "--quiet", "--mpp", "0.75", str(tmp_path / "tile.tif")])
    assert rc == 0
    row = json.loads(capsys.readouterr().out)["outputs"][0]
    assert row["scale"]["source"] == "user" and row["scale"]["factor"] == 3.0
    rc = main(["predict", "--model", str(tmp_path / "tiny.dgseg"), "--out", str(tmp_path / "o3"),
               "--quiet", "--mpp", "0.5", "--scale", "2", str(tmp_path / "tile.tif")])
    captured = capsys.readouterr()
    assert rc == 2 and "give one of --scale, --mpp and --object-size" in captured.err
    assert "Traceback" not in captured.err and not (tmp_path / "o3").exists()  # refused up front


def test_png_pixel_density_is_read_and_desktop_dpi_ignored(tmp_path):
    from PIL import Image

    from napari_dgseg.core.slide import open_image

    image = make_nuclei(64, "clean", seed=1)[0]
    Image.fromarray(image).save(tmp_path / "scan.png", dpi=(25400 / 0.5, 25400 / 0.5))
    Image.fromarray(image).save(tmp_path / "desk.png", dpi=(72, 72))
    with open_image(tmp_path / "scan.png") as opened:
        assert opened.pixel_size_um == pytest.approx((0.5, 0.5), rel=1e-3)
    with open_image(tmp_path / "desk.png") as opened:
        assert opened.pixel_size_um is None


def test_lazy_image_is_resampled_tile_by_tile(tiny_bundle, monkeypatch):
    """A dask image (a slide level) gives what the same numpy image gives, read in tiles."""
    import dask.array as da

    image, _ = make_nuclei(192, "clean", seed=6)
    lazy = da.from_array(image, chunks=(64, 64, 3))
    lazy_pred = tiny_bundle.predict(lazy, device="cpu", scale=2.0, tile=128, overlap=32)
    eager = tiny_bundle.predict(image, device="cpu", scale=2.0, tile=128, overlap=32)
    np.testing.assert_array_equal(lazy_pred.labels, eager.labels)
    np.testing.assert_allclose(lazy_pred.probabilities, eager.probabilities, atol=1e-6)
    assert lazy_pred.provenance["scale"]["model_grid_shape"] == [384, 384]
    # a 128 px tile on the model grid reads only the 64 px of source under it (plus a margin)
    resized = ResampledImage.of(ImageAdapter.from_array(lazy), 2.0)
    seen: list[tuple[int, int]] = []
    original = ImageAdapter.region

    def spy(self, y0, y1, x0, x1):
        seen.append((y1 - y0, x1 - x0))
        return original(self, y0, y1, x0, x1)

    monkeypatch.setattr(ImageAdapter, "region", spy)
    resized.region(0, 128, 0, 128)
    assert seen and max(max(s) for s in seen) <= 64 + 4
