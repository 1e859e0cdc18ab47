"""Bundles: round trip, atomic save, and refusal of tampered / unknown / pickled files."""

import hashlib
import io
import json
import zipfile

import numpy as np
import pytest
import torch

from napari_dgseg.core.bundle import (
    MANIFEST,
    WEIGHTS,
    convert_checkpoint,
    list_bundles,
    load_bundle,
)
from napari_dgseg.core.errors import BundleError, InputError
from napari_dgseg.core.registry import family_names, get_family


def _rewrite(src, dst, mutate):
    with zipfile.ZipFile(src) as zf:
        files = {n: zf.read(n) for n in zf.namelist()}
    mutate(files)
    with zipfile.ZipFile(dst, "w") as zf:
        for n, b in files.items():
            zf.writestr(n, b)


def test_round_trip_identical_logits(tiny_bundle, tmp_path):
    loaded = load_bundle(tmp_path / "tiny.dgseg")
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a = tiny_bundle.model.eval()(x)
        b = loaded.model(x)
    assert torch.equal(a, b)
    assert loaded.family_name == "unet"
    assert loaded.class_names == ("background", "nucleus")
    assert loaded.path == tmp_path / "tiny.dgseg"
    assert len(loaded.sha256) == 64


def test_manifest_contents(tiny_bundle):
    info = tiny_bundle.info()
    for key in ("schema", "schema_version", "family", "config", "classes", "input", "files", "provenance"):
        assert key in info
    assert info["config"]["widths"] == [8, 16, 32]
    assert set(info["files"]) == {WEIGHTS}


def test_tampered_weights_refused(tiny_bundle, tmp_path):
    src = tmp_path / "tiny.dgseg"
    bad = tmp_path / "bad.dgseg"

    def flip(files):
        data = bytearray(files[WEIGHTS])
        data[-1] ^= 0xFF
        files[WEIGHTS] = bytes(data)

    _rewrite(src, bad, flip)
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(bad)


def test_unknown_schema_refused(tiny_bundle, tmp_path):
    bad = tmp_path / "schema.dgseg"

    def bump(files):
        m = json.loads(files[MANIFEST])
        m["schema_version"] = 99
        files[MANIFEST] = json.dumps(m).encode()

    _rewrite(tmp_path / "tiny.dgseg", bad, bump)
    with pytest.raises(BundleError, match="schema version"):
        load_bundle(bad)


class _Boom:
    def __reduce__(self):
        return (open, ("/tmp/dgseg-pwned", "w"))


def test_pickle_inside_refused_and_not_executed(tiny_bundle, tmp_path):
    import os
    import pickle

    marker = "/tmp/dgseg-pwned"
    if os.path.exists(marker):
        os.unlink(marker)
    bad = tmp_path / "pickle.dgseg"

    def add_pickle(files):
        files["extra.pkl"] = pickle.dumps(_Boom())

    _rewrite(tmp_path / "tiny.dgseg", bad, add_pickle)
    with pytest.raises(BundleError, match="pickle"):
        load_bundle(bad)

    # a pickle disguised as a safetensors file listed in the manifest
    def disguise(files):
        blob = pickle.dumps(_Boom())
        files[WEIGHTS] = blob
        import hashlib

        m = json.loads(files[MANIFEST])
        m["files"][WEIGHTS] = hashlib.sha256(blob).hexdigest()
        files[MANIFEST] = json.dumps(m).encode()

    _rewrite(tmp_path / "tiny.dgseg", bad, disguise)
    with pytest.raises(BundleError, match="pickle"):
        load_bundle(bad)
    # a plain torch.save checkpoint given as a bundle
    ckpt = tmp_path / "model.dgseg"
    torch.save({"w": torch.zeros(2)}, ckpt)
    with pytest.raises(BundleError, match="pickle|convert"):
        load_bundle(ckpt)
    assert not os.path.exists(marker)


def test_missing_and_garbage(tmp_path):
    with pytest.raises(BundleError, match="known models"):
        load_bundle("no-such-model")
    junk = tmp_path / "junk.dgseg"
    junk.write_text("hello")
    with pytest.raises(BundleError):
        load_bundle(junk)


def test_atomic_save_cancel_keeps_old_file(tiny_bundle, tmp_path):
    import threading

    path = tmp_path / "tiny.dgseg"
    before = path.read_bytes()
    ev = threading.Event()
    ev.set()
    with pytest.raises(Exception, match="cancelled"):
        tiny_bundle.save(path, cancel=ev)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_user_folder_listing_and_names(tiny_bundle, monkeypatch, tmp_path):
    user = tmp_path / "models"
    monkeypatch.setenv("DGSEG_MODEL_DIR", str(user))
    tiny_bundle.save(user / "mine.dgseg")
    rows = {r["name"]: r for r in list_bundles()}
    assert rows["mine"]["where"] == "user"
    assert load_bundle("mine").path == user / "mine.dgseg"


def test_registry_unknown_lists_valid():
    assert "unet" in family_names()
    with pytest.raises(InputError, match="valid families"):
        get_family("resnet-9000")
    with pytest.raises(InputError, match="valid keys"):
        get_family("unet").make_config({"depth_of_field": 3})


def test_convert_checkpoint_weights_only(tmp_path):
    fam = get_family("unet")
    model = fam.build_model({"widths": [8, 16]})
    ckpt = tmp_path / "ckpt.pth"
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, ckpt)
    bundle = convert_checkpoint(ckpt, "unet", config={"widths": [8, 16]})
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), bundle.model(x))
    # a checkpoint holding arbitrary objects is refused by weights_only
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": model.state_dict(), "obj": _Boom()}, evil)
    with pytest.raises(BundleError, match="weights_only"):
        convert_checkpoint(evil, "unet", config={"widths": [8, 16]})


def test_bytes_roundtrip_extra_tensors(tiny_bundle):
    tiny_bundle.set_extra("bank", {"hist": torch.arange(6.0).reshape(2, 3)})
    data = tiny_bundle.to_bytes()
    from napari_dgseg.core.bundle import read_bundle_bytes

    manifest, tensors = read_bundle_bytes(data)
    assert "bank.safetensors" in manifest["files"]
    np.testing.assert_array_equal(tensors["bank.safetensors"]["hist"].numpy(), np.arange(6.0).reshape(2, 3))
    # the bytes are a zip of exactly the manifest and the two tensor files, each hashed in it
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert sorted(zf.namelist()) == sorted([MANIFEST, WEIGHTS, "bank.safetensors"])
        for fname, digest in manifest["files"].items():
            assert hashlib.sha256(zf.read(fname)).hexdigest() == digest
    # and the weights read back are the live model's, tensor for tensor
    live = tiny_bundle.state_dict()
    assert set(tensors[WEIGHTS]) == set(live)
    assert all(torch.equal(tensors[WEIGHTS][k], live[k]) for k in live)
