"""DCIN planning: what each mode promises in docs/dcin.md, checked on a tiny bundle.

The reference bank here is written by hand (statistics, GRIS index, embeddings) instead of being
computed from images, so every expected choice is known in advance:

* GRIS is the bank's stored medoid index (3 here, "d"), never the first entry;
* LRIS is the entry whose embedding is cosine-nearest to the target's (1 here, "b": its row is
  the target's own embedding; entry 0 is its exact opposite, so argmin would pick 0);
* ``full`` has the GRIS branch then the LRIS branch; ``auto`` is ``full`` with a bank and
  ``none`` without; ``reference`` uses the user's statistics.

Each branch must equal ``transfer`` from the target's statistics (tissue pixels of the strided
copy) to the chosen reference's statistics.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import disks_image
from napari_dgseg.core.color.bank import BANK_FILE, downsample, image_embedding
from napari_dgseg.core.color.dcin import (
    DCIN_MODES,
    normalized_image,
    target_sample,
)
from napari_dgseg.core.color.dcin import plan_dcin as _plan_dcin
from napari_dgseg.core.color.tissue import image_color_stats
from napari_dgseg.core.color.transfer import transfer
from napari_dgseg.core.errors import InputError
from napari_dgseg.core.imageprep import ImageAdapter

NAMES = ["a", "b", "c", "d"]
GRIS = 3
LRIS = 1
BANK_MEAN = np.array(
    [[-0.90, 0.02, 0.00], [-0.70, 0.06, 0.01], [-0.50, -0.03, 0.02], [-0.60, 0.04, -0.01]],
    np.float32,
)
BANK_STD = np.array(
    [[0.10, 0.02, 0.01], [0.20, 0.03, 0.02], [0.15, 0.05, 0.03], [0.25, 0.04, 0.015]], np.float32
)


def plan_dcin(*args, **kwargs):
    """These tests pin the Reinhard method (every branch must equal ``transfer``) and leave the
    guard of ``auto`` out (tests/test_dcin_guard.py checks it); other methods:
    tests/test_normalizers.py."""
    kwargs.setdefault("method", "reinhard")
    kwargs.setdefault("guard", False)
    return _plan_dcin(*args, **kwargs)


def _target() -> np.ndarray:
    img, _ = disks_image(96, seed=3)
    return np.clip(img * np.array([0.8, 1.0, 1.1]), 0, 255).astype(np.uint8)


def _install_bank(bundle, target: np.ndarray, *, names=NAMES, space=None) -> None:
    """A 4-entry bank whose LRIS choice for ``target`` is entry LRIS and GRIS entry GRIS."""
    sample = target_sample(ImageAdapter.from_array(target))
    emb = image_embedding(bundle.model, downsample(sample, 512), bundle.input_spec)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(4):
        if i == LRIS:
            rows.append(emb)
        elif i == 0:
            rows.append(-emb)  # the farthest: argmin would choose it
        else:  # unit vectors at ~60 degrees from the target's embedding
            r = rng.normal(size=emb.shape)
            r -= (r @ emb) * emb
            r /= np.linalg.norm(r)
            rows.append(0.5 * emb + np.sqrt(0.75) * r)
    bundle.set_extra(BANK_FILE, {
        "hist": torch.zeros(4, 512),
        "embedding": torch.from_numpy(np.stack(rows).astype(np.float32)),
        "mean": torch.from_numpy(BANK_MEAN),
        "std": torch.from_numpy(BANK_STD),
        "gris": torch.tensor([GRIS], dtype=torch.int64),
        "source_index": torch.arange(4),
    })  # fmt: skip
    bundle.manifest["dcin"] = {"names": names}
    if space is not None:
        bundle.manifest["dcin"]["space"] = space


@pytest.fixture
def setup(tiny_bundle):
    target = _target()
    _install_bank(tiny_bundle, target)
    return tiny_bundle, target


def _expected_branch_output(target, ref_mean, ref_std, space="lab-reinhard"):
    """Target statistics from the strided tissue copy, then one transfer of a test batch."""
    adapter = ImageAdapter.from_array(target)
    t_mean, t_std = image_color_stats(target_sample(adapter), space=space)
    x = torch.from_numpy(adapter.region(0, 96, 0, 96)).permute(2, 0, 1)[None]
    return x, t_mean, t_std, transfer(x, t_mean, t_std, ref_mean, ref_std, space=space)


def _check_bank_branch(plan, k, target, index, branch_name):
    ref = plan.references[k]
    assert ref["branch"] == branch_name
    assert ref["index"] == index and ref["reference"] == NAMES[index]
    np.testing.assert_allclose(ref["mean"], BANK_MEAN[index], rtol=0, atol=1e-7)
    np.testing.assert_allclose(ref["std"], BANK_STD[index], rtol=0, atol=1e-7)
    x, t_mean, t_std, want = _expected_branch_output(target, BANK_MEAN[index], BANK_STD[index])
    np.testing.assert_allclose(plan.target_mean, t_mean, rtol=0, atol=1e-12)
    np.testing.assert_allclose(plan.target_std, t_std, rtol=0, atol=1e-12)
    # branch statistics are float32 tensors: float32 rounding only
    torch.testing.assert_close(plan.branches[k](x), want, rtol=0, atol=2e-6)


# ---------------------------------------------------------------------------------------- modes


def test_mode_none_is_the_image_as_it_is(setup):
    bundle, target = setup
    plan = plan_dcin(bundle, ImageAdapter.from_array(target), "none")
    assert plan.mode == "none" and len(plan.branches) == 1 and plan.references == []
    x = torch.rand(1, 3, 8, 8)
    assert plan.branches[0](x) is x
    assert plan.target_mean is None and plan.target_std is None and plan.notice is None


def test_mode_gris_uses_the_stored_medoid(setup):
    bundle, target = setup
    plan = plan_dcin(bundle, ImageAdapter.from_array(target), "gris")
    assert plan.mode == "gris" and len(plan.branches) == 1 and len(plan.references) == 1
    _check_bank_branch(plan, 0, target, GRIS, "gris")


def test_mode_lris_uses_the_nearest_embedding(setup):
    bundle, target = setup
    plan = plan_dcin(bundle, ImageAdapter.from_array(target), "lris")
    assert plan.mode == "lris" and len(plan.branches) == 1 and len(plan.references) == 1
    _check_bank_branch(plan, 0, target, LRIS, "lris")


def test_mode_full_has_gris_then_lris(setup):
    bundle, target = setup
    plan = plan_dcin(bundle, ImageAdapter.from_array(target), "full")
    assert plan.mode == "full" and len(plan.branches) == 2
    assert [r["branch"] for r in plan.references] == ["gris", "lris"]
    _check_bank_branch(plan, 0, target, GRIS, "gris")
    _check_bank_branch(plan, 1, target, LRIS, "lris")
    x = torch.from_numpy(ImageAdapter.from_array(target).region(0, 96, 0, 96)).permute(2, 0, 1)
    assert (plan.branches[0](x[None]) - plan.branches[1](x[None])).abs().max() > 0.01


def test_mode_auto_is_full_with_a_bank_and_none_without(setup, tmp_path):
    bundle, target = setup
    adapter = ImageAdapter.from_array(target)
    auto = plan_dcin(bundle, adapter)  # default mode is auto
    full = plan_dcin(bundle, adapter, "full")
    assert auto.mode == "full" and auto.references == full.references
    from napari_dgseg.core.bundle import Bundle
    from napari_dgseg.core.registry import get_family

    model = get_family("unet").build_model({"num_classes": 2, "widths": [8, 16, 32]})
    plain = Bundle.create(model, "unet", model.config, name="plain",
                          class_names=["background", "nucleus"], task="nuclei")  # fmt: skip
    assert plain.extra(BANK_FILE) is None
    none = plan_dcin(plain, adapter, "auto")
    assert none.mode == "none" and none.references == [] and none.notice is None


@pytest.mark.parametrize("as_file", [None, "path", "str"])
def test_mode_reference_image(setup, tmp_path, as_file):
    bundle, target = setup
    ref_img, _ = disks_image(80, seed=11)
    ref_img = np.clip(ref_img * np.array([1.1, 0.7, 0.9]), 0, 255).astype(np.uint8)
    reference = ref_img
    if as_file:
        import skimage.io

        reference = tmp_path / "ref.png"
        skimage.io.imsave(reference, ref_img, check_contrast=False)
        if as_file == "str":
            reference = str(reference)
    plan = plan_dcin(bundle, ImageAdapter.from_array(target), "reference", reference=reference)
    assert plan.mode == "reference" and len(plan.branches) == 1
    r_mean, r_std = image_color_stats(ref_img)
    (ref,) = plan.references
    assert ref["branch"] == "reference"
    assert ref["reference"] == (str(reference) if as_file else "user image (80, 80, 3)")
    np.testing.assert_allclose(ref["mean"], r_mean, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ref["std"], r_std, rtol=0, atol=1e-12)
    x, _, _, want = _expected_branch_output(target, r_mean, r_std)
    torch.testing.assert_close(plan.branches[0](x), want, rtol=0, atol=2e-6)


def test_mode_reference_statistics_pair_and_errors(setup):
    bundle, target = setup
    adapter = ImageAdapter.from_array(target)
    pair = ([-0.55, 0.05, 0.02], [0.18, 0.03, 0.02])
    plan = plan_dcin(bundle, adapter, "reference", reference=pair)
    assert plan.references[0]["reference"] == "user (mean, std)"
    assert plan.references[0]["mean"] == pair[0] and plan.references[0]["std"] == pair[1]
    x, _, _, want = _expected_branch_output(target, np.array(pair[0]), np.array(pair[1]))
    torch.testing.assert_close(plan.branches[0](x), want, rtol=0, atol=2e-6)
    with pytest.raises(InputError) as info:
        plan_dcin(bundle, adapter, "reference")
    assert str(info.value) == "DCIN mode 'reference' needs a reference image (or its mean and std)"
    with pytest.raises(InputError) as info:
        plan_dcin(bundle, adapter, "GRIS")
    assert str(info.value) == (
        "unknown DCIN mode 'GRIS'; choose one of "
        "['auto', 'none', 'gris', 'lris', 'full', 'reference']"
    )
    assert set(DCIN_MODES) == {"auto", "none", "gris", "lris", "full", "reference"}


def test_bank_modes_without_bank_say_what_to_do(tiny_bundle):
    adapter = ImageAdapter.from_array(_target())
    for mode in ("gris", "lris", "full"):
        with pytest.raises(InputError) as info:
            plan_dcin(tiny_bundle, adapter, mode)
        assert str(info.value) == (
            f"model 'tiny' has no DCIN reference bank, needed for mode '{mode}'; add one with "
            "`dgseg bank MODEL --source TRAINING_DIR`, or use mode 'reference' or 'none'"
        )
    # 'reference' works without a bank
    plan = plan_dcin(tiny_bundle, adapter, "reference", reference=([-0.5, 0, 0], [0.2, 0.1, 0.1]))
    assert plan.mode == "reference" and len(plan.branches) == 1


def test_bank_space_and_missing_names(tiny_bundle):
    target = _target()
    _install_bank(tiny_bundle, target, names=None, space="cielab")
    plan = plan_dcin(tiny_bundle, ImageAdapter.from_array(target), "gris")
    assert plan.space == "cielab" and plan.provenance()["space"] == "cielab"
    for mode in ("none", "auto"):  # the space is recorded for every mode
        assert plan_dcin(tiny_bundle, ImageAdapter.from_array(target), mode).space == "cielab"
    white = ImageAdapter.from_array(np.full((32, 32, 3), 250, np.uint8))
    assert plan_dcin(tiny_bundle, white, "gris").space == "cielab"
    flat = ImageAdapter.from_array(np.full((32, 32, 3), (120, 60, 140), np.uint8))
    assert plan_dcin(tiny_bundle, flat, "gris").space == "cielab"
    assert plan.references[0]["reference"] == f"training image #{GRIS}"
    x, t_mean, t_std, want = _expected_branch_output(
        target, BANK_MEAN[GRIS], BANK_STD[GRIS], space="cielab"
    )
    np.testing.assert_allclose(plan.target_mean, t_mean, atol=1e-12)  # CIELAB statistics
    assert t_mean[0] > 10  # L in [0, 100], not l-alpha-beta
    torch.testing.assert_close(plan.branches[0](x), want, rtol=0, atol=1e-5)


def test_provenance_records_the_plan(setup):
    bundle, target = setup
    plan = plan_dcin(bundle, ImageAdapter.from_array(target), "full")
    prov = plan.provenance()
    assert prov == {"mode": "full", "requested": "full", "method": "reinhard",
                    "space": "lab-reinhard", "references": plan.references,
                    "target_mean": plan.target_mean, "target_std": plan.target_std,
                    "target_stats": plan.target_stats, "stats_from": "image", "guard": None,
                    "notice": None}  # fmt: skip
    np.testing.assert_allclose(plan.target_stats, plan.target_mean + plan.target_std, atol=1e-6)


@pytest.mark.parametrize("mode", ["gris", "lris", "full", "reference", "auto"])
def test_blank_and_flat_images_are_not_normalised(setup, mode):
    bundle, _ = setup
    ref = ([-0.5, 0.0, 0.0], [0.2, 0.1, 0.1])
    white = np.full((64, 64, 3), 250, np.uint8)
    plan = plan_dcin(bundle, ImageAdapter.from_array(white), mode, reference=ref)
    resolved = "full" if mode == "auto" else mode
    assert plan.mode == "none" and plan.references == [] and plan.target_mean is None
    assert plan.notice == f"DCIN {resolved} skipped: no tissue found (blank or white image)"
    x = torch.rand(1, 3, 4, 4)
    assert plan.branches[0](x) is x
    flat = np.full((64, 64, 3), (120, 60, 140), np.uint8)
    plan = plan_dcin(bundle, ImageAdapter.from_array(flat), mode, reference=ref)
    assert plan.mode == "none" and plan.references == [] and plan.target_mean is None
    assert plan.notice == f"DCIN {resolved} skipped: the image is a single flat colour"
    assert len(plan.branches) == 1 and plan.branches[0](x) is x


# ------------------------------------------------------------------------------- helpers


def test_target_sample_strides_to_at_most_max_side():
    img = np.zeros((300, 2050, 3), np.uint8)
    img[::3, ::3] = 200  # the pixels a stride of 3 keeps
    s = target_sample(ImageAdapter.from_array(img))  # ceil(2050 / 1024) = 3
    assert s.shape == (100, 684, 3) and s.dtype == np.uint8 and (s == 200).all()
    small = target_sample(ImageAdapter.from_array(img[:50, :60]), max_side=60)
    assert small.shape == (50, 60, 3)
    s2 = target_sample(ImageAdapter.from_array(img[:100, :100]), max_side=50)
    assert s2.shape == (50, 50, 3)


def test_normalized_image_blocks_equal_one_pass(setup):
    bundle, target = setup
    adapter = ImageAdapter.from_array(target)
    plan = plan_dcin(bundle, adapter, "gris")
    whole = normalized_image(adapter, plan.branches[0])
    assert whole.shape == target.shape and whole.dtype == np.uint8
    np.testing.assert_array_equal(normalized_image(adapter, plan.branches[0], block=40), whole)
    x = torch.from_numpy(adapter.region(0, 96, 0, 96)).permute(2, 0, 1)[None]
    want = np.round(plan.branches[0](x)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    np.testing.assert_array_equal(whole, want)


def test_names_shorter_than_the_bank_fall_back_to_the_index(tiny_bundle):
    target = _target()
    _install_bank(tiny_bundle, target, names=NAMES[:GRIS])  # no name for the GRIS entry
    plan = plan_dcin(tiny_bundle, ImageAdapter.from_array(target), "full")
    assert [r["reference"] for r in plan.references] == [f"training image #{GRIS}", NAMES[LRIS]]


def test_grey_tissue_is_normalised_not_called_flat(setup):
    """Grey pixels have constant alpha and beta (std 0) but a varying l: not a flat image."""
    bundle, _ = setup
    img, _ = disks_image(96, seed=2)
    grey = np.repeat(img.mean(-1, keepdims=True), 3, -1).astype(np.uint8)
    _, t_std = image_color_stats(grey)
    assert t_std[1:].max() < 1e-3 < t_std[0]  # two channels flat, one not
    plan = plan_dcin(bundle, ImageAdapter.from_array(grey), "gris")
    assert plan.mode == "gris" and plan.notice is None and len(plan.references) == 1


def test_auto_follows_the_mode_recorded_for_the_model(setup):
    """``dcin.auto`` in the manifest (measured per model) decides what ``auto`` means."""
    bundle, target = setup
    adapter = ImageAdapter.from_array(target)
    assert plan_dcin(bundle, adapter).mode == "full"  # the rule for an RGB model with a bank
    bundle.manifest["dcin"].update(auto="none", auto_evidence="tie on the selection tiles")
    none = plan_dcin(bundle, adapter)
    assert none.mode == "none" and none.requested == "auto"
    assert "tie on the selection tiles" in none.auto_reason
    assert plan_dcin(bundle, adapter, "full").mode == "full"  # an explicit mode is obeyed
    bundle.manifest["dcin"]["auto"] = "full"
    full = plan_dcin(bundle, adapter)
    assert full.mode == "full" and full.references == plan_dcin(bundle, adapter, "full").references
    bundle.manifest["dcin"]["auto"] = "bogus"  # an unknown record is ignored: the rule applies
    assert plan_dcin(bundle, adapter).mode == "full"
    bundle.manifest["input"] = {**bundle.input_spec, "features": "rgb+stain"}
    assert plan_dcin(bundle, adapter).mode == "none"  # the rule for self-normalising inputs
