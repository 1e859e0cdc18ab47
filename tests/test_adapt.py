"""MaNi adaptation loop, the adapt API and `dgseg adapt`: provenance, parent intact, bad input."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

from conftest import disks_image
from napari_dgseg.core.bundle import load_bundle, sha256_file
from napari_dgseg.core.data.sample import Sample
from napari_dgseg.core.errors import CancelledError, InputError
from napari_dgseg.core.train.adapt import adapt, adapt_steps, next_version_path


def _domain(n: int, tint: tuple[int, int, int], seed0: int, size: int = 96) -> list[Sample]:
    out = []
    for i in range(n):
        img, lab = disks_image(size, seed=seed0 + i, n=8)
        img = img.copy()
        img[lab > 0] = tint
        out.append(Sample(img, lab, f"img{i}", domain=str(tint)))
    return out


@pytest.fixture(scope="module")
def parent_file(tmp_path_factory):
    from napari_dgseg.core.train.source import train

    path = tmp_path_factory.mktemp("parent") / "parent.dgseg"
    train(
        "hovernet",
        [_domain(3, (90, 40, 140), 0)],
        out=path,
        iters=4,
        size=64,
        batch=2,
        config={"widths": [8, 16, 32]},
        seed=0,
    )
    return path


def _targets(n=2):
    return [s.image for s in _domain(n, (150, 70, 90), 100)]


@pytest.mark.slow
def test_adapt_makes_new_bundle_with_provenance_and_leaves_parent(parent_file, tmp_path):
    before = parent_file.read_bytes()
    parent = load_bundle(parent_file)
    w0 = {k: v.clone() for k, v in parent.model.state_dict().items()}
    seen = []
    out = tmp_path / "new.dgseg"
    adapt(
        parent,
        _targets(),
        iters=5,
        size=64,
        batch=2,
        seed=1,
        out=out,
        progress=lambda i, n, logs: seen.append((i, n, logs)),
        select=False,  # the last iterate: its weights must differ from the parent's
    )
    assert [s[0] for s in seen] == [1, 2, 3, 4, 5] and seen[0][2]["mi"] == 0.0  # warm-up first
    assert all(s[2]["mi"] > 0 for s in seen[1:])
    assert parent_file.read_bytes() == before  # the parent file is untouched
    for k, v in parent.model.state_dict().items():  # and so is the loaded parent model
        torch.testing.assert_close(v, w0[k])
    prov = load_bundle(out).provenance
    assert prov["parent"]["sha256"] == sha256_file(parent_file)
    assert prov["iterations"] == 5 and prov["targets"] == ["target0", "target1"]
    assert len(prov["losses"]["seg"]) == 5 and len(prov["losses"]["mi"]) == 5
    assert prov["source"].startswith("replay set of parent")
    loaded = load_bundle(out)
    assert loaded.extra("replay") is not None and loaded.extra("mani") is not None
    changed = any(not torch.equal(v, w0[k]) for k, v in loaded.model.state_dict().items())
    assert changed
    sel = prov["selection"]  # two targets: too few to hold out, both are scored
    assert sel["held_out"] is False and sel["selected"] is False
    assert [c["iteration"] for c in sel["checkpoints"]] == [0, 1, 2, 3, 4, 5]
    assert sel["chosen_iteration"] == 5
    pred = loaded.predict(_targets(1)[0], device="cpu")
    assert pred.labels.shape == (96, 96) and pred.labels.dtype == np.int32


def test_pseudo_labels_come_from_the_models_prediction(parent_file, monkeypatch):
    from napari_dgseg.core.losses import mani as mani_mod

    calls = []
    original = mani_mod.ManiModule.forward

    def spy(self, fs, st, ft, tlogits, tlabels=None):
        calls.append((tlogits, tlabels))
        return original(self, fs, st, ft, tlogits, tlabels)

    monkeypatch.setattr(mani_mod.ManiModule, "forward", spy)
    gen = adapt_steps(load_bundle(parent_file), _targets(), iters=3, size=64, batch=2, warmup=0.0)
    for _ in gen:
        pass
    assert len(calls) == 3
    for logits, labels in calls:
        assert logits.grad_fn is not None and logits.shape == (2, 2, 64, 64)  # the network's output
        assert bool((labels == 255).all())  # no target labels: only the pseudo-labels count


def test_parent_pseudo_labels_come_from_the_frozen_parent(parent_file, monkeypatch):
    """``pseudo_labels="parent"``: MaNi pools the target foreground the *parent* predicts on
    the same crops (no gradient, the parent's weights), not the adapted network's."""
    from napari_dgseg.core.losses import mani as mani_mod

    parent = load_bundle(parent_file)
    reference = parent.model.eval()
    calls = []
    original = mani_mod.ManiModule.forward

    def spy(self, fs, st, ft, tlogits, tlabels=None):
        calls.append(tlogits)
        return original(self, fs, st, ft, tlogits, tlabels)

    monkeypatch.setattr(mani_mod.ManiModule, "forward", spy)
    import napari_dgseg.core.train.adapt as adapt_mod

    inputs = []  # every network input the loop prepares (source and target crops)
    prepare = adapt_mod.normalise_input

    def record(x, spec):
        out = prepare(x, spec)
        inputs.append(out.detach().clone())
        return out

    monkeypatch.setattr(adapt_mod, "normalise_input", record)
    seen = parent.family.features_and_outputs
    out = adapt(parent, _targets(), iters=3, size=64, batch=2, warmup=0.0, select=False,
                pseudo_labels="parent")
    assert len(calls) == 3
    assert out.provenance["pseudo_labels"].startswith("parent:")
    for logits in calls:
        assert logits.grad_fn is None  # the teacher is not trained through the MI term
        # the parent's own logits on one of the crops the loop fed forward just before
        matches = [x for x in inputs if x.shape[0] == logits.shape[0]
                   and torch.allclose(seen(reference, x)[1]["logits"], logits, atol=1e-5)]
        assert matches
    with pytest.raises(InputError, match="pseudo-label source"):
        adapt(parent, _targets(), iters=1, size=64, batch=2, pseudo_labels="teacher")


def test_source_folder_and_labelled_targets(parent_file, tmp_path):
    from napari_dgseg.core.data.datasets import save_folder

    src = tmp_path / "src"
    save_folder(_domain(2, (90, 40, 140), 50), src)
    tg = _domain(2, (150, 70, 90), 200)
    new = adapt(
        load_bundle(parent_file),
        [s.image for s in tg],
        source=src,
        target_labels=[tg[0].labels, None],
        iters=2,
        size=64,
        batch=2,
    )
    prov = new.provenance
    assert prov["source"] == str(src) and prov["labelled_targets"] == ["target0"]
    with pytest.raises(InputError, match="one \\(or None\\) per target"):
        adapt(
            load_bundle(parent_file), [s.image for s in tg], target_labels=[None], iters=1, size=64
        )


def test_unet_family_adapts_too(tmp_path):
    from napari_dgseg.core.train.source import train

    b = train(
        "unet",
        [_domain(2, (90, 40, 140), 0)],
        iters=2,
        size=64,
        batch=2,
        config={"widths": [8, 16, 32]},
        seed=0,
    )
    new = adapt(b, _targets(1), iters=3, size=64, batch=2)
    assert new.family_name == "unet" and new.provenance["iterations"] == 3
    assert new.provenance["parent"]["sha256"]  # computed from the bytes of an unsaved parent


def test_bad_input(parent_file, tmp_path):
    parent = load_bundle(parent_file)
    with pytest.raises(InputError, match="no target images"):
        adapt(parent, [], iters=1, size=64)
    with pytest.raises(InputError, match="smaller than the crop size 64"):
        adapt(parent, [np.zeros((40, 200, 3), np.uint8)], iters=1, size=64)
    with pytest.raises(InputError, match="neither an image file nor a folder"):
        adapt(parent, [tmp_path / "missing.png"], iters=1, size=64)
    with pytest.raises(InputError, match="multiple of 4"):
        adapt(parent, _targets(1), iters=1, size=66)
    bare = load_bundle(parent_file)
    del bare._tensors["replay.safetensors"]
    with pytest.raises(InputError, match="--source"):
        adapt(bare, _targets(1), iters=1, size=64)


def test_cancel_during_run_and_during_save(parent_file, tmp_path):
    before = parent_file.read_bytes()
    ev = threading.Event()
    ev.set()
    with pytest.raises(CancelledError):
        adapt(load_bundle(parent_file), _targets(1), iters=3, size=64, batch=2, cancel=ev)
    # stop_on_cancel: the iterations done so far become the result
    ev2 = threading.Event()
    gen = adapt_steps(
        load_bundle(parent_file),
        _targets(1),
        iters=10,
        size=64,
        batch=2,
        cancel=ev2,
        stop_on_cancel=True,
    )
    next(gen)
    next(gen)
    ev2.set()
    with pytest.raises(StopIteration) as stop:
        next(gen)
    partial = stop.value.value
    assert partial.provenance["iterations"] == 2 and partial.provenance["stopped_early"]
    # cancel while saving onto the parent's own path: the parent stays byte-identical
    save_ev = threading.Event()
    save_ev.set()
    with pytest.raises(CancelledError):
        partial.save(parent_file, cancel=save_ev, overwrite=True)
    assert parent_file.read_bytes() == before
    assert not any(p.name.endswith(".tmp") for p in parent_file.parent.iterdir())


def test_next_version_path(tmp_path):
    assert next_version_path("nuclei", tmp_path).name == "nuclei-adapted-1.dgseg"
    (tmp_path / "nuclei-adapted-1.dgseg").write_bytes(b"x")
    assert next_version_path("nuclei", tmp_path).name == "nuclei-adapted-2.dgseg"
    assert next_version_path("nuclei-adapted-1", tmp_path).name == "nuclei-adapted-2.dgseg"


def test_cli_adapt(parent_file, tmp_path, capsys):
    import tifffile

    from napari_dgseg.cli import main

    tdir = tmp_path / "targets"
    tdir.mkdir()
    for i, img in enumerate(_targets(2)):
        tifffile.imwrite(tdir / f"t{i}.tif", img)
    out = tmp_path / "adapted.dgseg"
    before = parent_file.read_bytes()
    rc = main(
        [
            "adapt",
            "--model",
            str(parent_file),
            "--target",
            str(tdir),
            "--out",
            str(out),
            "--iters",
            "2",
            "--size",
            "64",
            "--batch",
            "2",
            "--source-augment",
            "none",
            "--freeze-encoder",
            "--pseudo-labels",
            "parent",
            "--target-scale",
            "model",
            "--quiet",
        ]
    )
    assert rc == 0
    info = json.loads(capsys.readouterr().out)
    assert info["iterations"] == 2 and info["targets"] == 2 and out.is_file()
    assert (
        info["parent"]["sha256"] == sha256_file(parent_file) and parent_file.read_bytes() == before
    )
    prov = load_bundle(out).provenance
    assert prov["command"].startswith("dgseg adapt") and prov["targets"][0].endswith("t0.tif")
    assert prov["source_augment"].startswith("none") and prov["trained_parameters"].startswith("dec")
    assert prov["weight_average"] is None  # the default: the label-free selection's checkpoint
    assert prov["pseudo_labels"].startswith("parent:")
    assert prov["target_scale"]["mode"] == "model" and len(prov["target_scale"]["factors"]) == 2
    assert info["selection"]["returned"].startswith(("checkpoint", "the parent's weights"))
    rc = main(
        [
            "adapt",
            "--model",
            str(parent_file),
            "--target",
            str(tdir),
            "--out",
            str(parent_file),
            "--iters",
            "1",
            "--quiet",
        ]
    )
    assert rc == 2 and "never overwritten" in capsys.readouterr().err
    # the fast method, judged like MaNi: the JSON carries the label-free check
    stats_out = tmp_path / "stats.dgseg"
    rc = main(["adapt", "--model", str(parent_file), "--target", str(tdir), "--out",
               str(stats_out), "--method", "stats", "--size", "64", "--quiet"])
    assert rc == 0
    captured = capsys.readouterr()
    info = json.loads(captured.out)
    sel = info["selection"]
    assert info["method"] == "stats" and "checkpoints" not in sel
    assert {"parent", "adapted", "verdict", "reference_foreground", "held_out"} <= set(sel)
    assert sel["held_out"] is False  # two targets: too few to hold any out
    assert (sel["warning"] is None) == (sel["verdict"] == "better")
    if sel["warning"]:
        assert "warning:" in captured.err
    assert load_bundle(stats_out).provenance["statistics"]["layers"] > 0


@pytest.mark.slow
def test_default_adapt_is_not_worse_than_its_parent_on_held_out_target_tiles():
    """Issue 11 acceptance, small case: default settings, 16 unlabelled 256 px tiles of a new scanner.

    The shipped nuclei-hovernet, ``adapt`` with no tuning arguments (what ``dgseg adapt`` does),
    scored against labels on held-out tiles of the same domain: faded, JPEG-compressed tiles of
    the independently written held-out renderer (the parent was trained on the other renderer).
    """
    from napari_dgseg.core.data.heldout_nuclei import make_heldout_nuclei
    from napari_dgseg.core.metrics import instance_scores

    parent = load_bundle("nuclei-hovernet")
    tiles = [make_heldout_nuclei(256, "ho-faded-jpeg", 300 + i)[0] for i in range(16)]
    test = [make_heldout_nuclei(256, "ho-faded-jpeg", 400 + i) for i in range(4)]
    torch.set_num_threads(1)
    adapted = adapt(parent, tiles, device="cpu")

    def dice(b):  # through the default pipeline (scale estimate and check), as `dgseg predict`
        return np.mean([instance_scores(b.predict(im, device="cpu").labels, lab)["dice"]
                        for im, lab in test])

    sel = adapted.provenance["selection"]
    assert sel["held_out"] and sel["held_out_images"] == 4
    assert sel["selected"] and sel["returned"].startswith(("checkpoint", "the parent's weights"))
    # A label-free run cannot promise "never worse"; the bound is "not worse by more than 0.01
    # Dice"; docs/hovernet-mani.md gives the measured values.
    assert dice(adapted) >= dice(parent) - 0.01


def test_source_batches_repeat_the_parents_training_augmentation(parent_file):
    """Default ``source_augment="training"``: the replay crops get the parent's own recipe."""
    from napari_dgseg.core.train.adapt import source_recipe, training_recipe

    parent = load_bundle(parent_file)
    assert training_recipe(parent) == ("none", None)  # trained without augmentation
    parent.manifest["provenance"].update(augment="stain", scale_range=[0.7, 1.4])
    assert training_recipe(parent) == ("stain", (0.7, 1.4))
    aug, rng, desc = source_recipe(parent, "training")
    assert (aug, rng) == ("stain", (0.7, 1.4)) and "stain" in desc and "0.7-1.4" in desc
    assert source_recipe(parent, "none")[:2] == ("none", None)
    assert source_recipe(parent, True)[2].startswith("jitter")
    assert source_recipe(parent, False)[2].startswith("none")
    with pytest.raises(InputError, match="unknown source augmentation"):
        source_recipe(parent, "heavy")
    new = adapt(parent, _targets(), iters=2, size=64, batch=2, seed=0, select=False)
    prov = new.provenance
    assert prov["source_augment"].startswith("training") and "stain" in prov["source_augment"]
    # an adapted model is adapted again with the same recipe (recorded for its children)
    assert prov["training_augment"] == {"augment": "stain", "scale_range": (0.7, 1.4)}
    assert training_recipe(new) == ("stain", (0.7, 1.4))


def test_freeze_encoder_trains_the_decoders_only(parent_file):
    parent = load_bundle(parent_file)
    w0 = {k: v.clone() for k, v in parent.model.state_dict().items()}
    new = adapt(parent, _targets(), iters=3, size=64, batch=2, seed=0, select=False,
                freeze_encoder=True, lr=1e-2)
    after = new.model.state_dict()
    enc = [k for k in w0 if k.startswith("encoder.") and "running" not in k and "num_batches" not in k]
    dec = [k for k in w0 if not k.startswith("encoder.") and w0[k].is_floating_point()]
    assert enc and all(torch.equal(after[k], w0[k]) for k in enc)
    assert any(not torch.equal(after[k], w0[k]) for k in dec)
    assert new.provenance["trained_parameters"].startswith("decoders")
    with pytest.raises(InputError, match="pseudo-label threshold"):
        adapt(parent, _targets(), iters=1, size=64, pseudo_threshold=1.5)


def test_classical_agreement_is_recorded_for_tasks_with_a_classical_method(parent_file):
    from napari_dgseg.core.train.selection import classical_foreground, label_free_signals

    imgs = _targets(2)
    assert classical_foreground("semantic", imgs) is None
    masks = classical_foreground("nuclei", imgs)
    assert len(masks) == 2 and masks[0].dtype == bool and 0 < masks[0].mean() < 0.9
    parent = load_bundle(parent_file)
    sig = label_free_signals(parent.model, imgs, parent.input_spec, classical_masks=masks)
    assert 0.0 <= sig["classical_agreement"] <= 1.0
    # against its own mask a model agrees perfectly; against the inverse it cannot agree at all
    from napari_dgseg.core.train.selection import foreground_probability

    own = [foreground_probability(parent.model, im, parent.input_spec) >= 0.5 for im in imgs]
    assert label_free_signals(parent.model, imgs, parent.input_spec,
                              classical_masks=own)["classical_agreement"] == 1.0
    assert label_free_signals(parent.model, imgs, parent.input_spec,
                              classical_masks=[~m for m in own])["classical_agreement"] == 0.0


def test_weight_average_mixes_floats_and_keeps_counters():
    from napari_dgseg.core.train.adapt import weight_average

    a = {"w": torch.tensor([2.0, 4.0]), "n": torch.tensor(7)}
    p = {"w": torch.tensor([0.0, 1.0]), "n": torch.tensor(3)}
    out = weight_average(a, p, 0.25)
    torch.testing.assert_close(out["w"], torch.tensor([0.5, 1.75]))
    assert int(out["n"]) == 7


def test_average_returns_the_mean_of_the_last_iterate_and_the_parent(parent_file, monkeypatch):
    from napari_dgseg.core.train.adapt import DEFAULT_AVERAGE, _Judge

    parent = load_bundle(parent_file)
    p = {k: v.clone() for k, v in parent.model.state_dict().items()}
    kw = dict(iters=3, size=64, batch=2, seed=3, lr=1e-2, average=0.5)
    last = adapt(parent, _targets(), **(kw | {"average": None}), select=False).model.state_dict()
    new = adapt(parent, _targets(), **kw)
    assert DEFAULT_AVERAGE is None  # lost on the held-out styles: an option, not the default
    got = new.model.state_dict()
    moved = [k for k in p if p[k].is_floating_point() and not torch.equal(last[k], p[k])]
    assert moved
    for k in moved:
        torch.testing.assert_close(got[k], 0.5 * last[k] + 0.5 * p[k])
    sel = new.provenance["selection"]
    assert sel["returned"].startswith("weight average: 0.5 x iteration 3")
    assert sel["selected"] is False and sel["returned_parent_weights"] is False
    assert "WiSE-FT" in new.provenance["weight_average"]
    # an average whose foreground is degenerate is not returned: the parent's weights are
    monkeypatch.setattr(_Judge, "returned", lambda self, model, it: {
        **self.checkpoints[-1], "iteration": it, "degenerate": True})
    kept = adapt(parent, _targets(), **kw)
    for k, v in kept.model.state_dict().items():
        torch.testing.assert_close(v, p[k])
    assert kept.provenance["selection"]["returned_parent_weights"] is True
    assert kept.provenance["selection"]["warning"].endswith("the parent's weights were kept")
    with pytest.raises(InputError, match="average must be in"):
        adapt(parent, _targets(), **(kw | {"average": 1.5}))


def test_run_steps_calls_back_per_step_and_returns_the_generators_value():
    from napari_dgseg.core.steps import run_steps

    def steps():
        yield 1
        yield 2
        return "done"

    seen: list[int] = []
    assert run_steps(steps(), seen.append) == "done" and seen == [1, 2]
    assert run_steps(steps()) == "done"


def test_the_drift_guard_keeps_the_checkpoint_before_the_drift(parent_file, monkeypatch):
    """The run's choice is the guarded one: a drifted last checkpoint with the best score is passed
    over, the weights of the checkpoint before the drift are returned, and the record says why."""
    from napari_dgseg.core.train import selection

    script = iter([  # the parent, then iterations 1, 2, 3 (select_every=1)
        {"prior_match": -0.05, "certainty": 0.93, "agreement": 0.96},
        {"prior_match": -0.02, "certainty": 0.93, "agreement": 0.96},  # a healthy gain
        {"prior_match": -0.04, "certainty": 0.80, "agreement": 0.95},  # certainty collapses
        {"prior_match": -0.001, "certainty": 0.60, "agreement": 0.90},  # drifted, best score
    ])

    def scripted(model, images, input_spec, **kw):
        s = next(script)
        return {**s, "foreground": 0.4, "foreground_reference": 0.4, "score": s["prior_match"]}

    monkeypatch.setattr(selection, "label_free_signals", scripted)
    states: dict[int, dict] = {}

    def hook(it, model):
        states[it] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    parent = load_bundle(parent_file)
    new = adapt(parent, _targets(), iters=3, size=64, batch=2, seed=3, lr=1e-2, select_every=1,
                checkpoint_hook=hook, source_augment="none")
    sel = new.provenance["selection"]
    assert [c["iteration"] for c in sel["checkpoints"]] == [0, 1, 2, 3]
    assert sel["chosen_iteration"] == 1 and sel["returned"] == "checkpoint 1"
    assert sel["stopped_at"] == 2 and sel["guard_fired"] and "early stop" in sel["guard"]
    assert "checkpoint(s) [3]" in sel["guard_note"]
    assert "certainty fell 0.930 -> 0.800" in sel["guard_note"]
    assert sel["verdict"] == "better" and sel["warning"] is None
    assert any(not torch.equal(v, states[3][k]) for k, v in states[1].items()
               if v.is_floating_point())  # the last iterate's weights differ: the choice matters
    for k, v in new.model.state_dict().items():
        torch.testing.assert_close(v, states[1][k].cpu())
