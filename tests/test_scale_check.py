"""Model-in-the-loop size check (:mod:`napari_dgseg.core.scale_check`)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_dgseg.core.errors import InputError
from napari_dgseg.core.scale import ScaleDecision, measure_object_size, resolve_scale
from napari_dgseg.core.scale_check import (
    DEFAULT_SIZE_CHECK,
    MIN_INSTANCES,
    SIZE_CHECK_MODES,
    check_scale,
)

#: A model trained with object-size augmentation 0.7-1.4x (the shipped nuclei models' record).
TRAINED = {"pixel_size_um": 0.25, "object_size_px": 16.0, "train_range": [0.7, 1.4]}


def discs(diameter: float, side: int = 256) -> np.ndarray:
    """Instance labels: a grid of discs of ``diameter`` px, spaced two diameters apart."""
    yy, xx = np.mgrid[:side, :side]
    lab = np.zeros((side, side), np.int32)
    step = max(int(2 * diameter), 4)
    k = 0
    for cy in range(step // 2, side - step // 2 + 1, step):
        for cx in range(step // 2, side - step // 2 + 1, step):
            k += 1
            lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= (diameter / 2) ** 2] = k
    return lab


class IdealModel:
    """A pass function whose instances have the image's true size whatever the factor."""

    def __init__(self, true_size: float) -> None:
        self.labels = discs(true_size)
        self.calls: list[float] = []

    def __call__(self, factor: float) -> tuple[str, np.ndarray]:
        self.calls.append(round(factor, 4))
        return f"pass at {factor:.4g}", self.labels


def estimated(size: float | None) -> ScaleDecision:
    """The estimator's decision for an image whose estimate is ``size`` (None: no estimate)."""
    found = {"object_size_px": size, "method": "log-blobs"}
    if size is None:
        found["why"] = "not confident"
    return resolve_scale(TRAINED, estimate=lambda: found)


@pytest.mark.parametrize("true_size", [32.0, 8.0])  # a tile at 2x and at 0.5x the model's scale
def test_pass_at_one_that_is_off_is_refined_once(true_size):
    model = IdealModel(true_size)
    true = measure_object_size(model.labels, "nuclei")
    result, dec = check_scale(estimated(None), TRAINED, model, mode="from-1", shape=(256, 256))
    ideal = TRAINED["object_size_px"] / true
    assert model.calls == [1.0, round(ideal, 4)]  # one refinement, no loop
    assert result == f"pass at {ideal:.4g}"
    assert dec.applied and dec.factor == pytest.approx(ideal) and dec.source == "estimated"
    passes = dec.as_dict()["check"]["passes"]
    assert [p["factor"] for p in passes] == model.calls
    assert passes[0]["implied_factor"] == pytest.approx(ideal, abs=1e-3)
    assert passes[0]["instances"] >= MIN_INSTANCES
    assert dec.as_dict()["check"]["kept"] == 1 and "re-run" in dec.reason


@pytest.mark.parametrize("mode", [m for m in SIZE_CHECK_MODES if m != "off"])
def test_tile_at_the_model_scale_keeps_factor_one_with_one_pass(mode):
    model = IdealModel(16.0)
    result, dec = check_scale(estimated(16.5), TRAINED, model, mode=mode, shape=(256, 256))
    assert model.calls == [1.0] and result == "pass at 1"
    assert not dec.applied and dec.factor == 1.0
    assert len(dec.as_dict()["check"]["passes"]) == 1


def test_wrong_estimate_is_corrected_from_the_pass_at_its_factor():
    """The estimate says 2x (objects 32 px) where the image is at scale: the pass at 0.5 finds
    objects of 16 px on the image (implied 1.0), so the second pass is at 1 and not resampled."""
    model = IdealModel(16.0)
    first = estimated(32.0)
    assert first.applied and first.factor == pytest.approx(0.5)
    result, dec = check_scale(first, TRAINED, model, mode="from-estimate", shape=(256, 256))
    assert model.calls == [0.5, 1.0] and result == "pass at 1"
    assert not dec.applied and dec.factor == 1.0
    assert "size check" in dec.reason and dec.as_dict()["check"]["passes"][0]["factor"] == 0.5


def test_if_unscaled_mode_does_not_recheck_a_pass_at_the_estimates_factor():
    """``if-unscaled`` (the default until 2026-12-02): a pass at a resampled grid is kept, its
    size recorded."""
    model = IdealModel(16.0)
    result, dec = check_scale(estimated(32.0), TRAINED, model, mode="if-unscaled",
                              shape=(256, 256))
    assert model.calls == [0.5] and result == "pass at 0.5" and dec.factor == pytest.approx(0.5)
    check = dec.as_dict()["check"]
    assert check["mode"] == "if-unscaled"
    assert check["passes"][0]["implied_factor"] == pytest.approx(1.0, abs=0.02)
    assert "not acted on" in check["why"] and "size check" in dec.reason
    model = IdealModel(8.0)  # the estimate not applied: the pass at 1 may ask for a second one
    _, dec = check_scale(estimated(None), TRAINED, model, mode="if-unscaled", shape=(256, 256))
    assert len(model.calls) == 2 and model.calls[0] == 1.0
    assert dec.factor == pytest.approx(model.calls[1], abs=1e-4) and 1.9 < dec.factor < 2.1


def test_back_off_mode_undoes_a_shrink_that_went_too_far_and_nothing_else():
    """``back-off`` (the default): a pass at a shrunk grid whose nuclei imply enlarging beyond the tolerance
    re-runs at the implied factor (at most 1); passes that agree, or ask to shrink further, stay."""
    assert DEFAULT_SIZE_CHECK == "back-off"
    model = IdealModel(20.0)  # the estimate reads 32 px (x0.5) where the nuclei are 20 px (x0.8)
    result, dec = check_scale(estimated(32.0), TRAINED, model, shape=(256, 256))
    assert model.calls[0] == 0.5 and len(model.calls) == 2
    assert dec.factor == pytest.approx(0.8, abs=0.02) and result == f"pass at {model.calls[1]:.4g}"
    assert "shrunk too far" in dec.reason and dec.as_dict()["check"]["kept"] == 1
    model = IdealModel(12.0)  # implied x1.33: brought back to x1 at most, not enlarged
    _, dec = check_scale(estimated(40.0), TRAINED, model, mode="back-off", shape=(256, 256))
    assert model.calls == [0.4, 1.0] and not dec.applied and dec.factor == 1.0
    for true, est in ((32.0, 32.0), (40.0, 24.0)):  # right, or shrink further: kept as it is
        model = IdealModel(true)
        _, dec = check_scale(estimated(est), TRAINED, model, mode="back-off", shape=(256, 256))
        assert model.calls == [round(16.0 / est, 4)] and dec.factor == pytest.approx(16.0 / est)


def test_agree_mode_resamples_only_when_both_agree():
    model = IdealModel(32.0)
    _, dec = check_scale(estimated(30.0), TRAINED, model, mode="agree", shape=(256, 256))
    assert model.calls == [1.0, round(16.0 / 30.0, 4)] and dec.factor == pytest.approx(16 / 30)
    model = IdealModel(32.0)
    _, dec = check_scale(estimated(None), TRAINED, model, mode="agree", shape=(256, 256))
    assert model.calls == [1.0] and not dec.applied and "disagree" in dec.reason


def test_off_user_and_metadata_scales_run_once_without_a_check():
    for mode, decision in (("off", estimated(32.0)),
                           ("from-1", resolve_scale(TRAINED, scale=0.5)),
                           ("from-1", resolve_scale(TRAINED, pixel_size_um=0.125))):
        model = IdealModel(16.0)
        _, dec = check_scale(decision, TRAINED, model, mode=mode, shape=(256, 256))
        assert model.calls == [0.5] and dec.factor == pytest.approx(0.5)
        assert "check" not in dec.as_dict()


def test_too_few_instances_keep_the_first_pass():
    model = IdealModel(32.0)
    model.labels = model.labels * (model.labels <= MIN_INSTANCES - 1)
    _, dec = check_scale(estimated(None), TRAINED, model, mode="from-1", shape=(256, 256))
    assert model.calls == [1.0] and not dec.applied and "under" in dec.as_dict()["check"]["why"]


def test_implied_factor_that_leaves_too_few_pixels_is_not_used():
    model = IdealModel(32.0)  # implied factor 0.5: a 40 px image would have 20 px a side
    _, dec = check_scale(estimated(None), TRAINED, model, mode="from-1", shape=(40, 40),
                         min_side=32)
    assert model.calls == [1.0] and not dec.applied
    assert "cannot be applied" in dec.as_dict()["check"]["why"]


def test_unknown_mode_is_one_clear_error():
    with pytest.raises(InputError, match="unknown size check"):
        check_scale(estimated(None), TRAINED, IdealModel(16.0), mode="twice")


# ------------------------------------------------------------------ with the shipped HoVer-Net


def tile_at(s: float, domain: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A 256 px training-renderer tile resized by ``s`` (anti-aliased; labels nearest)."""
    from napari_dgseg.core.data.synthetic import make_nuclei
    from napari_dgseg.core.resample import _nearest, resampled_shape, zoom_image

    src = int(np.ceil(256 / s))
    image, labels = make_nuclei(src, domain, seed)
    img = np.clip(np.rint(zoom_image(image, s)), 0, 255).astype(np.uint8)
    return img[:256, :256], _nearest(labels, resampled_shape(src, src, s))[:256, :256]


@pytest.fixture
def counted(monkeypatch):
    """The shipped HoVer-Net and a list that grows by one per segmentation forward pass."""
    from napari_dgseg import load_bundle
    from napari_dgseg.core import inference

    calls: list[tuple[int, int]] = []
    real = inference.run_tiled

    def run_tiled(model, image, **kw):
        calls.append((int(image.height), int(image.width)))
        return real(model, image, **kw)

    monkeypatch.setattr(inference, "run_tiled", run_tiled)
    return load_bundle("nuclei-hovernet"), calls


@pytest.mark.parametrize("mode", [None, "from-estimate", "from-1"])
def test_tile_at_the_model_scale_is_segmented_once(counted, mode):
    bundle, calls = counted
    image, _ = tile_at(1.0, "clean", 7000)
    pred = bundle.predict(image, device="cpu", size_check=mode)
    assert calls == [(256, 256)]
    sc = pred.provenance["scale"]
    assert sc["factor"] == 1.0 and not sc["applied"]
    if mode is not None:
        assert len(sc["check"]["passes"]) == 1 and sc["check"]["mode"] == mode


def test_tile_at_2x_is_refined_from_the_pass_at_one(counted):
    """Nuclei twice the model's size: the pass at 1 splits them, its median diameter still says
    shrink by ~0.5, and the second pass lands within the model's range of the ideal factor."""
    from napari_dgseg.core.metrics import instance_scores
    from napari_dgseg.core.scale import measure_object_size

    bundle, calls = counted
    image, labels = tile_at(2.0, "clean", 7000)
    ticks: list[tuple[int, int]] = []
    pred = bundle.predict(image, device="cpu", size_check="from-1",
                          progress=lambda d, t: ticks.append((d, t)))
    sc = pred.provenance["scale"]
    assert len(calls) == 2 and calls[0] == (256, 256) and calls[1][0] < 160
    # the second pass continues the tile count instead of starting again from zero
    done = [d for d, _ in ticks]
    assert done == sorted(done) and ticks[-1][0] == ticks[-1][1] > ticks[0][1]
    assert [p["factor"] for p in sc["check"]["passes"]] == [1.0, sc["factor"]]
    ideal = bundle.scale["object_size_px"] / measure_object_size(labels, "nuclei")
    assert sc["applied"] and 0.7 <= sc["factor"] / ideal <= 1.4, (sc["factor"], ideal)
    plain = bundle.predict(image, device="cpu", rescale="off")
    # the refined pass is clearly better than segmenting the 2x nuclei as they are (the shipped
    # marker threshold 0.45 splits fewer of them unscaled, so the gap is ~0.05, was ~0.1)
    assert (instance_scores(np.asarray(pred.labels), labels)["aji"]
            > instance_scores(np.asarray(plain.labels), labels)["aji"] + 0.03)


def test_small_nuclei_missed_by_the_estimate_are_refined_from_the_pass_at_one(counted, monkeypatch):
    """A 0.71x tile whose estimate (x1.36) is inside the model's whole size range (not
    resampled): the pass at 1 finds nuclei small enough to imply a factor above 1.43, and the
    second pass enlarges the tile. (The shipped bundle records a narrower enlarging side, so the
    estimate alone enlarges this tile: next test.)"""
    from napari_dgseg.core.metrics import instance_scores

    bundle, calls = counted
    monkeypatch.delitem(bundle.manifest["inference"], "estimate_tolerance_share")
    image, labels = tile_at(0.71, "pale-scanner", 7000)
    pred = bundle.predict(image, device="cpu", size_check="from-estimate")
    sc = pred.provenance["scale"]
    assert len(calls) == 2 and sc["check"]["passes"][0]["factor"] == 1.0
    assert sc["applied"] and sc["factor"] > 1.3 and sc["check"]["kept"] == 1
    plain = bundle.predict(image, device="cpu", rescale="off")
    # the refined pass is clearly better than segmenting the 2x nuclei as they are (the shipped
    # marker threshold 0.45 splits fewer of them unscaled, so the gap is ~0.05, was ~0.1)
    assert (instance_scores(np.asarray(pred.labels), labels)["aji"]
            > instance_scores(np.asarray(plain.labels), labels)["aji"] + 0.03)


def test_small_nuclei_are_enlarged_by_the_estimate_within_the_recorded_tolerance(counted):
    """The shipped HoVer-Net leaves estimates alone only up to x1.18 (``[1, 0.5]`` of its size
    range): the same tile is enlarged by the estimate itself, one pass, and scores better."""
    from napari_dgseg.core.metrics import instance_scores

    bundle, calls = counted
    assert bundle.scale["estimate_tolerance_share"] == [1.0, 0.5]
    image, labels = tile_at(0.71, "pale-scanner", 7000)
    pred = bundle.predict(image, device="cpu")
    sc = pred.provenance["scale"]
    assert len(calls) == 1 and sc["applied"] and sc["source"] == "estimated"
    assert 1.18 < sc["factor"] < 1.43 and sc["check"]["passes"][0]["factor"] == sc["factor"]
    plain = bundle.predict(image, device="cpu", rescale="off")
    # the refined pass is clearly better than segmenting the 2x nuclei as they are (the shipped
    # marker threshold 0.45 splits fewer of them unscaled, so the gap is ~0.05, was ~0.1)
    assert (instance_scores(np.asarray(pred.labels), labels)["aji"]
            > instance_scores(np.asarray(plain.labels), labels)["aji"] + 0.03)


def test_semantic_and_vessel_models_are_not_checked(counted, monkeypatch):
    from napari_dgseg import load_bundle
    from napari_dgseg.core.scale_check import size_check_applies

    assert size_check_applies("nuclei", "instances")
    assert not size_check_applies("nuclei", "semantic")
    assert not size_check_applies("vessels", "semantic")
    _, calls = counted
    image, _ = tile_at(2.0, "clean", 7000)
    pred = load_bundle("nuclei-unet").predict(image, device="cpu", size_check="from-1")
    assert len(calls) == 1 and "check" not in pred.provenance["scale"]


def test_whole_slide_checks_one_crop_not_the_slide(counted, tmp_path):
    """A slide without a pixel size: the plan's single decision is checked on one crop of at
    most 512 px (one pass here: the crop's nuclei agree with factor 1), never on the slide."""
    import tifffile

    from napari_dgseg.core.data.synthetic import make_nuclei
    from napari_dgseg.core.wsi import plan_slide

    bundle, calls = counted
    image, _ = make_nuclei(1024, "clean", 7001)
    tifffile.imwrite(tmp_path / "slide.tif", image, tile=(256, 256), photometric="rgb")
    plan = plan_slide(tmp_path / "slide.tif", bundle, tmp_path / "out.zarr", block_size=512,
                      device="cpu")
    sc = plan.options["scale"]
    assert calls == [(512, 512)]
    assert sc["factor"] == 1.0 and plan.options["scale_factor"] == 1.0
    y0, y1, x0, x1 = sc["check"]["region"]
    assert (y1 - y0, x1 - x0) == (512, 512) and len(sc["check"]["passes"]) == 1
