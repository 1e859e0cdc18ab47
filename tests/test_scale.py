"""Training scale records, the factor decision, the object-size measure and its estimator."""

from __future__ import annotations

import numpy as np
import pytest

from napari_dgseg.core.data.synthetic import make_nuclei, make_vessels
from napari_dgseg.core.errors import InputError
from napari_dgseg.core.resample import zoom_image
from napari_dgseg.core.scale import (
    TASK_DEFAULTS,
    bundle_scale,
    measure_object_size,
    normalize_scale,
    resolve_scale,
)
from napari_dgseg.core.scale_estimate import estimate_object_size

NUCLEI = {"pixel_size_um": 0.25, "object_size_px": 17.1, "train_range": None}
VESSELS = {"pixel_size_um": None, "object_size_px": 2.0, "train_range": None}


# ---------------------------------------------------------------------- measure_object_size


def test_nuclei_size_is_the_median_equivalent_diameter():
    from skimage.draw import disk

    lab = np.zeros((100, 100), np.int32)
    for i, (c, r) in enumerate((((20, 20), 5), ((50, 50), 10), ((80, 80), 15)), start=1):
        rr, cc = disk(c, r, shape=lab.shape)
        lab[rr, cc] = i
    areas = np.bincount(lab.ravel())[1:]
    expected = float(np.median(np.sqrt(4 * areas / np.pi)))
    assert measure_object_size(lab, "nuclei") == pytest.approx(expected)
    assert expected == pytest.approx(20.0, abs=0.5)
    # a 0/1 mask is split into its components first; several images pool their objects
    assert measure_object_size((lab > 0).astype(np.uint8), "nuclei") == pytest.approx(expected)
    assert measure_object_size([lab, lab[:40, :40]], "nuclei") == pytest.approx(
        float(np.median(np.r_[np.sqrt(4 * areas / np.pi), np.sqrt(4 * areas[0] / np.pi)])))


def test_vessel_calibre_is_twice_the_centreline_distance():
    mask = np.zeros((60, 80), np.uint8)
    mask[20:27, 5:75] = 1  # a bar 7 px wide: centreline distance 4 -> calibre 8
    assert measure_object_size(mask, "vessels") == pytest.approx(8.0)
    mask[40:43, 5:75] = 1  # plus an equally long 3 px bar (calibre 4): the median lies between
    value = measure_object_size(mask, "vessels")
    assert 4.0 <= value <= 8.0
    assert np.isnan(measure_object_size(np.zeros((10, 10)), "vessels"))
    with pytest.raises(InputError, match="unknown object kind"):
        measure_object_size(mask, "cells")


def test_task_defaults_are_the_training_renderers_sizes():
    nuclei = [make_nuclei(256, "clean", seed=s)[1] for s in range(8)]
    vessels = [make_vessels(256, "camera-a", seed=s)[1] for s in range(8)]
    assert measure_object_size(nuclei, "nuclei") == pytest.approx(
        TASK_DEFAULTS["nuclei"]["object_size_px"], abs=0.1)
    assert measure_object_size(vessels, "vessels") == pytest.approx(
        TASK_DEFAULTS["vessels"]["object_size_px"], abs=0.1)


# ---------------------------------------------------------------------- records


def test_bundle_scale_record_default_and_validation():
    rec = {"pixel_size_um": 0.5, "object_size_px": 12, "train_range": [0.5, 2]}
    got = bundle_scale({"scale": rec, "task": "nuclei"})
    assert got == {"pixel_size_um": 0.5, "object_size_px": 12.0, "train_range": [0.5, 2.0],
                   "source": "manifest"}
    assert bundle_scale({"task": "vessels"})["object_size_px"] == 2.0
    assert bundle_scale({"task": "vessels"})["source"] == "default:vessels"
    assert bundle_scale({"task": ""})["source"] == "unknown"
    for bad, field in (({"object_size_px": -1}, "object_size_px"),
                       ({"pixel_size_um": "x"}, "pixel_size_um"),
                       ({"train_range": [2, 1]}, "train_range"),
                       ({"size": 3}, "unknown")):
        with pytest.raises(InputError, match=field):
            normalize_scale(bad)


def test_bundle_create_stores_scale_and_old_bundles_get_the_default(tmp_path, tiny_bundle):
    from napari_dgseg.core.bundle import Bundle, load_bundle

    assert "scale" not in tiny_bundle.manifest
    assert load_bundle(tmp_path / "tiny.dgseg").scale == {
        "pixel_size_um": 0.25, "object_size_px": 17.1, "train_range": None}
    rec = {"pixel_size_um": 0.5, "object_size_px": 9.0, "train_range": [0.5, 2.0]}
    made = Bundle.create(tiny_bundle.model, "unet", tiny_bundle.config, name="scaled",
                         class_names=["background", "nucleus"], task="nuclei", scale=rec)
    path = made.save(tmp_path / "scaled.dgseg")
    assert load_bundle(path).scale == rec
    assert load_bundle(path).manifest["scale"] == rec
    # `dgseg info` shows the scale inference uses, and where it comes from
    assert load_bundle(path).info()["scale"]["source"] == "manifest"
    assert tiny_bundle.info()["scale"] == {"pixel_size_um": 0.25, "object_size_px": 17.1,
                                           "train_range": None, "source": "default:nuclei"}
    with pytest.raises(InputError, match="object_size_px"):
        Bundle.create(tiny_bundle.model, "unet", tiny_bundle.config, name="bad",
                      class_names=["a", "b"], scale={"object_size_px": 0})


# ---------------------------------------------------------------------- resolve_scale


def test_factor_sources_in_order_and_tolerance():
    never = lambda: pytest.fail("estimated although something was known")  # noqa: E731
    d = resolve_scale(NUCLEI, scale=2.0, pixel_size_um=(0.5, 0.5), estimate=never)
    assert (d.source, d.factor, d.applied) == ("user", 2.0, True)
    d = resolve_scale(NUCLEI, mpp=0.5, pixel_size_um=0.25, estimate=never)
    assert (d.source, d.factor) == ("user", 2.0)
    d = resolve_scale(NUCLEI, object_size=34.2, estimate=never)
    assert (d.source, d.factor) == ("user", pytest.approx(0.5))
    d = resolve_scale(NUCLEI, pixel_size_um=(0.5, 0.5), estimate=never)
    assert (d.source, d.factor, d.applied) == ("metadata", 2.0, True)
    d = resolve_scale(NUCLEI, pixel_size_um=0.27, estimate=never)  # within the tolerance
    assert (d.source, d.factor, d.applied) == ("metadata", 1.0, False)
    assert d.proposed == pytest.approx(1.08)
    d = resolve_scale(NUCLEI, estimate=lambda: {"object_size_px": 8.55})
    assert (d.source, d.factor, d.applied) == ("estimated", pytest.approx(2.0), True)
    assert d.as_dict()["estimate"] == {"object_size_px": 8.55}
    d = resolve_scale(NUCLEI, estimate=lambda: {"object_size_px": None})
    assert (d.source, d.applied) == ("none", False)
    d = resolve_scale(NUCLEI, rescale="metadata", estimate=never)
    assert (d.source, d.applied) == ("none", False)
    d = resolve_scale(NUCLEI, rescale="off", pixel_size_um=0.5, estimate=never)
    assert (d.source, d.applied) == ("none", False)
    # fundus: no pixel size, so the file's is not used; the object size is
    d = resolve_scale(VESSELS, pixel_size_um=3.0, estimate=lambda: {"object_size_px": 5.0})
    assert (d.source, d.factor) == ("estimated", pytest.approx(0.4))
    # models that are not upsampled: only the user's factor makes an image larger
    d = resolve_scale(VESSELS, estimate=lambda: {"object_size_px": 1.0}, upsample=False)
    assert (d.source, d.applied, d.proposed) == ("estimated", False, 2.0)
    assert "upsample" in d.reason
    assert resolve_scale(VESSELS, scale=2.0, upsample=False).applied
    assert resolve_scale(VESSELS, estimate=lambda: {"object_size_px": 5.0}, upsample=False).applied


def test_factor_errors_say_what_to_do():
    with pytest.raises(InputError, match="give one of"):
        resolve_scale(NUCLEI, scale=2.0, mpp=0.5)
    with pytest.raises(InputError, match="--object-size or --scale"):
        resolve_scale(VESSELS, mpp=0.5)
    with pytest.raises(InputError, match="rescaling is off"):
        resolve_scale(NUCLEI, rescale="off", scale=2.0)
    with pytest.raises(InputError, match="positive"):
        resolve_scale(NUCLEI, scale=-1.0)
    with pytest.raises(InputError, match="outside"):
        resolve_scale(NUCLEI, mpp=100.0)
    with pytest.raises(InputError, match="rescale mode"):
        resolve_scale(NUCLEI, rescale="sometimes")
    # an absurd estimate is not applied (and not an error)
    d = resolve_scale(NUCLEI, estimate=lambda: {"object_size_px": 1000.0})
    assert not d.applied and "outside" in d.reason


# ---------------------------------------------------------------------- the estimator


@pytest.mark.parametrize("s", [0.5, 2.0])
@pytest.mark.parametrize("kind", ["nuclei", "vessels"])
def test_estimator_within_25_percent_of_the_true_factor(kind, s):
    """On rescaled synthetic tiles (seeds outside the calibration and benchmark sets)."""
    errors = []
    for seed in (7, 8):
        if kind == "nuclei":
            image = make_nuclei(256, "clean", seed=seed)[0]
        else:
            image = make_vessels(256, "camera-a", seed=seed)[0]
        img = np.clip(np.round(zoom_image(image, s)), 0, 255).astype(np.uint8)
        found = estimate_object_size(img, kind)
        factor = TASK_DEFAULTS[kind]["object_size_px"] / found["object_size_px"]
        errors.append(factor * s - 1.0)  # true factor = 1 / s
    assert max(abs(e) for e in errors) <= 0.25, errors


def test_vessel_ridges_estimator_without_field_of_view():
    """A crop inside the eye has no dark surround: the ridge estimator takes over."""
    image = make_vessels(512, "camera-a", seed=3)[0]
    crop = image[128:384, 128:384]
    found = estimate_object_size(crop, "vessels")
    assert found["method"] == "hessian-ridges"
    assert found["object_size_px"] is not None and found["object_size_px"] > 0
    assert estimate_object_size(image, "vessels")["method"] == "fov"
    with pytest.raises(InputError, match="unknown estimator"):
        estimate_object_size(image, "nuclei", "fov")


def test_estimated_factors_inside_the_training_range_are_not_applied():
    from napari_dgseg.core.scale import estimate_tolerance, resolve_scale

    trained = {"pixel_size_um": None, "object_size_px": 16.0, "train_range": [0.7, 1.4]}
    plain = {"pixel_size_um": None, "object_size_px": 16.0}
    assert estimate_tolerance(trained) == pytest.approx((1 / 1.4, 1 / 0.7))
    assert estimate_tolerance(plain) == (0.9, 1.1)

    def est(size):
        return lambda: {"object_size_px": size}

    inside = resolve_scale(trained, estimate=est(20.0))  # factor 0.8, inside [0.714, 1.43]
    assert not inside.applied and inside.factor == 1.0 and inside.source == "estimated"
    assert resolve_scale(plain, estimate=est(20.0)).applied  # no record: the narrow tolerance
    outside = resolve_scale(trained, estimate=est(32.0))  # factor 0.5
    assert outside.applied and outside.factor == pytest.approx(0.5)
    # file and user scales keep the narrow tolerance
    meta = resolve_scale({**trained, "pixel_size_um": 0.25}, pixel_size_um=0.2)
    assert meta.applied and meta.factor == pytest.approx(0.8)


def test_an_estimated_factor_can_be_applied_part_of_the_way():
    from napari_dgseg.core.scale import approach_factor, estimate_tolerance

    trained = {"pixel_size_um": 0.25, "object_size_px": 16.0, "train_range": [0.7, 1.4]}
    tol = estimate_tolerance(trained)

    def est(size):
        return lambda: {"object_size_px": size}

    whole = resolve_scale(trained, estimate=est(40.0))  # factor 0.4, the default: applied whole
    assert whole.factor == pytest.approx(0.4)
    edge = resolve_scale(trained, estimate=est(40.0), approach=0.0)
    # only as far as the near edge: the estimated nuclei end at 1.4x the model's size
    assert edge.applied and edge.proposed == pytest.approx(0.4)
    assert edge.factor == pytest.approx(0.4 * 1.4)
    assert "part of the way" in edge.reason and "1.40x the model's" in edge.reason
    half = resolve_scale(trained, estimate=est(40.0), approach=0.5)
    assert half.factor == pytest.approx(0.4 * 1.4 ** 0.5)
    up = resolve_scale(trained, estimate=est(4.0), approach=0.0)  # factor 4: to 1/0.7 of it
    assert up.factor == pytest.approx(4.0 * 0.7)
    # inside the tolerance nothing moves; file and user factors are never shortened
    assert approach_factor(0.8, tol, 0.0) == 0.8
    assert not resolve_scale(trained, estimate=est(20.0), approach=0.0).applied
    meta = resolve_scale(trained, pixel_size_um=1.0, approach=0.0)
    assert meta.factor == pytest.approx(4.0)
    with pytest.raises(InputError, match=r"approach must be in \[0, 1\]"):
        approach_factor(0.4, tol, 1.5)


def test_a_bundle_can_record_a_narrower_estimate_tolerance():
    from napari_dgseg.core.scale import estimate_tolerance

    manifest = {"name": "m", "task": "nuclei",
                "scale": {"pixel_size_um": 0.25, "object_size_px": 16.0, "train_range": [0.7, 1.4]}}
    wide = bundle_scale(manifest)
    assert "estimate_tolerance_share" not in wide
    assert estimate_tolerance(wide) == pytest.approx((1 / 1.4, 1 / 0.7))
    narrow = bundle_scale({**manifest, "inference": {"estimate_tolerance_share": 0.5}})
    assert estimate_tolerance(narrow) == pytest.approx((1.4 ** -0.5, 0.7 ** -0.5))
    # small dense nuclei estimated at 12.3 px (factor 1.3): left alone by the whole range,
    # resampled when only half of it is left alone
    est = lambda: {"object_size_px": 12.3}  # noqa: E731
    assert not resolve_scale(wide, estimate=est).applied
    applied = resolve_scale(narrow, estimate=est)
    assert applied.applied and applied.factor == pytest.approx(16.0 / 12.3)
    # never narrower than the plain tolerance; a task default gets the key too
    zero = bundle_scale({**manifest, "inference": {"estimate_tolerance_share": 0.0}})
    assert estimate_tolerance(zero) == (0.9, 1.1)
    assert "estimate_tolerance_share" not in bundle_scale({"task": "nuclei"})
    with pytest.raises(InputError, match="estimate_tolerance_share must be a number in"):
        bundle_scale({**manifest, "inference": {"estimate_tolerance_share": 2}})


def test_the_bundle_passes_its_measured_share_to_inference(tiny_bundle):
    assert "estimate_tolerance_share" not in tiny_bundle.scale
    tiny_bundle.manifest["inference"] = {"estimate_tolerance_share": 0.5}
    assert tiny_bundle.scale["estimate_tolerance_share"] == 0.5


def test_the_two_sides_of_the_tolerance_can_differ():
    from napari_dgseg.core.scale import estimate_tolerance

    manifest = {"name": "m", "task": "nuclei",
                "scale": {"pixel_size_um": 0.25, "object_size_px": 16.0, "train_range": [0.7, 1.4]},
                "inference": {"estimate_tolerance_share": [1, 0.5]}}
    rec = bundle_scale(manifest)
    assert rec["estimate_tolerance_share"] == [1.0, 0.5]
    assert estimate_tolerance(rec) == pytest.approx((1 / 1.4, 0.7 ** -0.5))
    assert resolve_scale(rec, estimate=lambda: {"object_size_px": 12.3}).applied  # x1.30: enlarged
    assert not resolve_scale(rec, estimate=lambda: {"object_size_px": 20.0}).applied  # x0.8: left
    for bad in ([1, 2], [0.5], "half"):
        with pytest.raises(InputError, match="a number in"):
            bundle_scale({**manifest, "inference": {"estimate_tolerance_share": bad}})
