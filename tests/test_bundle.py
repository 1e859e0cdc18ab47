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
    Bundle,
    convert_checkpoint,
    list_bundles,
    load_bundle,
    read_bundle_bytes,
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
        tiny_bundle.save(path, cancel=ev, overwrite=True)
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


# ----------------------------------------------------------------------------- folders and hashes
def test_model_folders(monkeypatch, tmp_path):
    from napari_dgseg.core.bundle import shipped_dir, user_dir

    assert (shipped_dir() / "nuclei-unet.dgseg").is_file()
    monkeypatch.setenv("DGSEG_MODEL_DIR", "~/my-models")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert user_dir() == tmp_path / "my-models"
    monkeypatch.delenv("DGSEG_MODEL_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert user_dir() == tmp_path / "xdg" / "napari-dgseg" / "models"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert user_dir() == tmp_path / ".local" / "share" / "napari-dgseg" / "models"


def test_sha256_helpers(tmp_path):
    from napari_dgseg.core.bundle import sha256_bytes, sha256_file

    data = bytes(range(256)) * 9000  # > 2 MiB: several 1 MiB chunks plus a partial one
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest() == sha256_bytes(data)
    (tmp_path / "e").write_bytes(b"")
    assert sha256_file(tmp_path / "e") == hashlib.sha256(b"").hexdigest()


def test_looks_like_pickle_cases():
    import pickle

    from napari_dgseg.core.bundle import _looks_like_pickle

    for proto in (2, 3, 4, 5):
        assert _looks_like_pickle(pickle.dumps({"a": 1}, protocol=proto))
    assert not _looks_like_pickle(b"\x80\x01rest") and not _looks_like_pickle(b"\x80\x06rest")
    assert not _looks_like_pickle(b"\x80") and not _looks_like_pickle(b"")
    assert _looks_like_pickle(b"\x80\x02") and _looks_like_pickle(b"\x80\x05")
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(1)}, buf)
    assert _looks_like_pickle(buf.getvalue())
    for inner in ("archive/data.pkl", "x.pkl"):
        z = io.BytesIO()
        with zipfile.ZipFile(z, "w") as zf:
            zf.writestr(inner, b"x")
        assert _looks_like_pickle(z.getvalue())
    z = io.BytesIO()
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("weights.safetensors", b"x")
        zf.writestr("pkl.txt", b"x")
    assert not _looks_like_pickle(z.getvalue())
    assert not _looks_like_pickle(b"PK\x03\x04 broken zip")


# ----------------------------------------------------------------------------- the Bundle object
def test_bundle_properties_and_defaults(tiny_bundle, tmp_path):
    from napari_dgseg.core.bundle import DEFAULT_COLORS, DEFAULT_INPUT_SPEC, SCHEMA, SCHEMA_VERSION

    b = tiny_bundle
    m = b.manifest
    assert m["schema"] == SCHEMA and m["schema_version"] == SCHEMA_VERSION
    assert b.name == "tiny" and b.family_name == "unet" and b.family.name == "unet"
    assert m["description"] == get_family("unet").description and m["task"] == "nuclei"
    assert b.class_colors == {0: tuple(DEFAULT_COLORS[0]), 1: tuple(DEFAULT_COLORS[1])}
    assert m["classes"] == [{"id": 0, "name": "background", "color": DEFAULT_COLORS[0]},
                            {"id": 1, "name": "nucleus", "color": DEFAULT_COLORS[1]}]
    assert b.input_spec == DEFAULT_INPUT_SPEC and b.provenance == {}
    assert b.config["widths"] == [8, 16, 32] and isinstance(b.config, dict)
    assert b.tensor_files == [WEIGHTS]
    assert b.extra("bank") is None
    b.set_extra("bank.safetensors", {"h": torch.ones(2)})
    assert b.tensor_files == ["bank.safetensors", WEIGHTS]
    assert torch.equal(b.extra("bank")["h"], torch.ones(2))
    assert b.extra("bank.safetensors") is b.extra("bank")
    info = b.info()
    assert info["parameters"] == sum(p.numel() for p in b.model.state_dict().values())
    assert info["path"] == str(tmp_path / "tiny.dgseg") and info["sha256"] == b.sha256
    assert info["sha256"] == hashlib.sha256((tmp_path / "tiny.dgseg").read_bytes()).hexdigest()
    assert repr(b) == f"Bundle(name='tiny', family='unet', path={tmp_path / 'tiny.dgseg'})"
    fresh = Bundle.create(b.model, "unet", b.config, name="n", class_names=["a"])
    assert fresh.info()["path"] is None and fresh.info()["sha256"] is None


def test_create_colours_spec_provenance_extras():
    fam = get_family("unet")
    model = fam.build_model({"widths": [8, 16]})
    b = Bundle.create(model, "unet", {"widths": [8, 16]}, name="c",
                      class_names=["bg", "a", "b"], class_colors=[[1, 2, 3], [4, 5, 6]],
                      input_spec={"channels": 1}, provenance={"by": "me"}, description="d",
                      extras={"bank": {"h": torch.zeros(3)}})
    # colours cycle when fewer than classes; ints in the manifest
    assert b.class_colors == {0: (1, 2, 3), 1: (4, 5, 6), 2: (1, 2, 3)}
    assert b.input_spec == {"channels": 1} and b.provenance == {"by": "me"}
    assert b.manifest["description"] == "d" and b.config["widths"] == [8, 16]
    assert b.tensor_files == ["bank.safetensors", WEIGHTS]
    manifest, tensors = read_bundle_bytes(b.to_bytes())
    assert manifest["classes"][2]["color"] == [1, 2, 3] and manifest["provenance"] == {"by": "me"}
    assert torch.equal(tensors["bank.safetensors"]["h"], torch.zeros(3))


def test_state_dict_follows_the_live_model(tiny_bundle, tmp_path):
    with torch.no_grad():
        next(tiny_bundle.model.parameters()).add_(1.0)
    key = next(iter(tiny_bundle.model.state_dict()))
    live = tiny_bundle.model.state_dict()[key]
    assert torch.equal(tiny_bundle.state_dict()[key], live)
    tiny_bundle.save(tmp_path / "edited.dgseg")
    assert torch.equal(load_bundle(tmp_path / "edited.dgseg").state_dict()[key], live)
    # a bundle loaded from disk builds its model lazily, in eval mode, from the stored weights
    loaded = load_bundle(tmp_path / "edited.dgseg")
    assert loaded._model is None and not loaded.model.training
    assert torch.equal(loaded.model.state_dict()[key], live)


def test_weights_that_do_not_fit_the_config(tiny_bundle, tmp_path):
    bad = tmp_path / "wide.dgseg"

    def widen(files):
        m = json.loads(files[MANIFEST])
        m["config"]["widths"] = [8, 16, 64]
        files[MANIFEST] = json.dumps(m).encode()

    _rewrite(tmp_path / "tiny.dgseg", bad, widen)
    # hashes still match (the tensors are untouched): the shapes are compared at load, against
    # the network the config describes built on the meta device, before anything is allocated
    with pytest.raises(BundleError, match="do not fit the 'unet' config") as info:
        load_bundle(bad)
    assert "\n" not in str(info.value) and "wide.dgseg" in str(info.value)


def test_save_suffix_folders_mode_and_callable_cancel(tiny_bundle, tmp_path):
    import os
    import stat

    path = tiny_bundle.save(tmp_path / "a" / "b" / "model")
    assert path == tmp_path / "a" / "b" / "model.dgseg" and path.is_file()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert tiny_bundle.path == path and tiny_bundle.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.dgseg"]
    before = path.read_bytes()
    with pytest.raises(Exception, match="cancelled"):
        tiny_bundle.save(path, cancel=lambda: True, overwrite=True)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.dgseg"]
    tiny_bundle.save(path, cancel=lambda: False, overwrite=True)  # not cancelled: written
    assert load_bundle(path).name == "tiny"


def test_to_bytes_is_deflated_and_updates_manifest(tiny_bundle):
    tiny_bundle.manifest["files"] = {}
    data = tiny_bundle.to_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in zf.infolist())
        assert zf.namelist()[0] == MANIFEST
        assert json.loads(zf.read(MANIFEST))["files"] == tiny_bundle.manifest["files"]
    assert set(tiny_bundle.manifest["files"]) == {WEIGHTS}


# ----------------------------------------------------------------------------- finding bundles
def test_resolve_by_path_and_name(tiny_bundle, monkeypatch, tmp_path):
    from napari_dgseg.core.bundle import resolve_bundle_path, shipped_dir, user_dir

    assert resolve_bundle_path(tmp_path / "tiny.dgseg") == tmp_path / "tiny.dgseg"
    assert resolve_bundle_path("nuclei-unet") == shipped_dir() / "nuclei-unet.dgseg"
    assert resolve_bundle_path("nuclei-unet.dgseg") == shipped_dir() / "nuclei-unet.dgseg"
    # a user bundle with a shipped name shadows the shipped one
    tiny_bundle.save(user_dir() / "nuclei-unet.dgseg")
    assert resolve_bundle_path("nuclei-unet") == user_dir() / "nuclei-unet.dgseg"
    assert load_bundle("nuclei-unet").name == "tiny"
    rows = {r["name"]: r for r in list_bundles()}
    assert rows["nuclei-unet"]["where"] == "user" and rows["nuclei-unet"]["family"] == "unet"
    with pytest.raises(BundleError, match="nuclei-unet") as info:
        resolve_bundle_path("nope")
    assert "known models" in str(info.value) and "'nope'" in str(info.value)
    assert load_bundle(tiny_bundle) is tiny_bundle


def test_list_bundles_rows_order_and_broken_files(tiny_bundle, tmp_path):
    from napari_dgseg.core.bundle import shipped_dir, user_dir

    tiny_bundle.manifest["provenance"] = {"val_metrics": {"dice": 0.5}}
    tiny_bundle.save(user_dir() / "a-mine.dgseg")
    (user_dir() / "broken.dgseg").write_text("not a zip")
    rows = list_bundles()
    names = [r["name"] for r in rows]
    shipped = sorted(p.name[: -len(".dgseg")] for p in shipped_dir().glob("*.dgseg"))
    from napari_dgseg.core.bundle_index import default_models

    defaults = sorted(n for n in shipped if n in set(default_models().values()))
    shipped = defaults + [n for n in shipped if n not in defaults]
    # the tasks' defaults, then the other shipped (sorted), then user; a broken file is listed
    # with its reason, not hidden
    assert names == shipped + ["a-mine", "broken"]
    assert "not a bundle" in rows[-1]["broken"] and rows[-1]["family"] is None
    rows = rows[:-1]
    mine = rows[-1]
    assert mine == {"name": "a-mine", "family": "unet", "task": "nuclei",
                    "classes": ["background", "nucleus"], "where": "user",
                    "path": str(user_dir() / "a-mine.dgseg"),
                    "description": tiny_bundle.manifest["description"],
                    "val_metrics": {"dice": 0.5}, "heldout_metrics": {}, "default": False}
    assert all(r["where"] == "shipped" for r in rows[:-1])


def test_list_bundles_without_user_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("DGSEG_MODEL_DIR", str(tmp_path / "does-not-exist"))
    assert [r["where"] for r in list_bundles()] == ["shipped"] * len(list_bundles())
    assert len(list_bundles()) >= 1


# ----------------------------------------------------------------------------- conversion
@pytest.mark.parametrize("layout", ["top", "state_dict", "model", "model_state_dict"])
def test_convert_checkpoint_layouts_and_provenance(tmp_path, layout):
    from napari_dgseg.core.bundle import sha256_file

    model = get_family("unet").build_model({"widths": [8, 16]})
    state = model.state_dict()
    ckpt = tmp_path / "net.pt"
    torch.save(state if layout == "top" else {layout: state, "step": 1}, ckpt)
    b = convert_checkpoint(ckpt, "unet", config={"widths": [8, 16]}, class_names=["bg", "n", "m"],
                           task="t")
    assert b.name == "net" and b.class_names == ("bg", "n", "m") and b.manifest["task"] == "t"
    assert b.provenance["converted_from"] == str(ckpt)
    assert b.provenance["converted_sha256"] == sha256_file(ckpt)
    assert b.provenance["date"].endswith("+00:00")
    assert all(torch.equal(b.state_dict()[k], state[k]) for k in state)
    named = convert_checkpoint(ckpt, "unet", config={"widths": [8, 16]}, name="given")
    assert named.name == "given" and named.class_names == ("background", "foreground")


def test_convert_checkpoint_refusals(tmp_path):
    model = get_family("unet").build_model({"widths": [8, 16]})
    with pytest.raises(InputError, match="does not exist"):
        convert_checkpoint(tmp_path / "missing.pt", "unet")
    notdict = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], notdict)
    with pytest.raises(BundleError, match="does not hold a state dict"):
        convert_checkpoint(notdict, "unet")
    mixed = tmp_path / "mixed.pt"
    torch.save({"a": torch.zeros(1), "b": 3}, mixed)
    with pytest.raises(BundleError, match="does not hold a state dict"):
        convert_checkpoint(mixed, "unet")
    ok = tmp_path / "ok.pt"
    torch.save(model.state_dict(), ok)
    with pytest.raises(BundleError, match="Pass the matching --config") as info:
        convert_checkpoint(ok, "unet")  # default widths differ from [8, 16]
    assert "\n" not in str(info.value)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(BundleError, match="weights_only=True"):
        convert_checkpoint(garbage, "unet")
    with pytest.raises(InputError, match="valid families"):
        convert_checkpoint(ok, "resnet-9000")


def test_user_dir_on_windows_uses_appdata(monkeypatch, tmp_path):
    """The Windows branch, with the module's ``os`` replaced by a stand-in (only ``name`` and
    ``environ`` are read there)."""
    import types

    import napari_dgseg.core.bundle_index as bundle_mod

    env = {"APPDATA": str(tmp_path / "roaming")}
    monkeypatch.setattr(bundle_mod, "os", types.SimpleNamespace(name="nt", environ=env))
    assert bundle_mod.user_dir() == tmp_path / "roaming" / "napari-dgseg" / "models"
    env.clear()  # no APPDATA: falls back to the XDG-style default under the home folder
    monkeypatch.setenv("HOME", str(tmp_path))
    assert bundle_mod.user_dir() == tmp_path / ".local" / "share" / "napari-dgseg" / "models"


def test_unreadable_bundle_file_is_one_line(tiny_bundle, tmp_path, monkeypatch):
    from pathlib import Path

    def deny(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", deny)
    with pytest.raises(BundleError, match="cannot read .*tiny.dgseg: Permission denied"):
        load_bundle(tmp_path / "tiny.dgseg")


def test_list_bundles_marks_files_without_a_readable_manifest(tiny_bundle):
    from napari_dgseg.core.bundle import user_dir

    user_dir().mkdir(parents=True, exist_ok=True)
    for name, member, data in [("nomanifest", "weights.safetensors", b"x"),
                               ("badjson", MANIFEST, b"{not json"),
                               ("latin", MANIFEST, b"\xff\xfe")]:
        with zipfile.ZipFile(user_dir() / f"{name}.dgseg", "w") as zf:
            zf.writestr(member, data)
    tiny_bundle.save(user_dir() / "good.dgseg")
    rows = [r for r in list_bundles() if r["where"] == "user"]
    assert [r["name"] for r in rows if not r.get("broken")] == ["good"]
    reasons = {r["name"]: r["broken"] for r in rows if r.get("broken")}
    assert sorted(reasons) == ["badjson", "latin", "nomanifest"]
    assert "no bundle.json" in reasons["nomanifest"] and "not valid JSON" in reasons["badjson"]
    assert all("\n" not in why for why in reasons.values())


def test_list_bundles_defaults_for_a_minimal_manifest():
    """A manifest with only the required fields is listed with defaults for the rest; one
    without a schema (an old or foreign file) is listed as broken, with the reason."""
    from napari_dgseg.core.bundle import SCHEMA, SCHEMA_VERSION, user_dir

    user_dir().mkdir(parents=True, exist_ok=True)
    path = user_dir() / "bare.dgseg"

    def write(manifest):
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr(MANIFEST, json.dumps(manifest))
            zf.writestr(WEIGHTS, b"")

    required = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "family": "unet",
                "config": {}, "files": {WEIGHTS: "0" * 64}}
    write(required)
    row = next(r for r in list_bundles() if r["name"] == "bare")
    assert row == {"name": "bare", "family": "unet", "task": "", "classes": [], "where": "user",
                   "path": str(path), "description": "", "val_metrics": {},
                   "heldout_metrics": {}, "default": False}
    write({**required, "provenance": {"seed": 1}})
    row = next(r for r in list_bundles() if r["name"] == "bare")
    assert row["val_metrics"] == {} and "broken" not in row
    write({"family": "unet", "files": {WEIGHTS: "0" * 64}})
    row = next(r for r in list_bundles() if r["name"] == "bare")
    assert row == {"name": "bare", "family": None, "task": "", "classes": [], "where": "user",
                   "path": str(path), "description": "", "val_metrics": {},
                   "broken": f"{path}: unknown bundle schema None; expected {SCHEMA!r}",
                   "default": False}


def test_predict_delegates_with_its_arguments(tiny_bundle):
    from napari_dgseg.core.inference import predict_bundle

    img = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    got = tiny_bundle.predict(img, tile=32, overlap=8)
    ref = predict_bundle(tiny_bundle, img, tile=32, overlap=8)
    np.testing.assert_array_equal(got.labels, ref.labels)
    np.testing.assert_array_equal(got.probabilities, ref.probabilities)
    assert got.labels.shape == (40, 56)
    assert got.provenance["tile"] == 32 and got.provenance["overlap"] == 8


def test_convert_reads_weights_only_on_cpu_and_strictly(tmp_path, monkeypatch):
    """The security and fit properties of conversion, checked where they are decided."""
    model = get_family("unet").build_model({"widths": [8, 16]})
    ckpt = tmp_path / "net.pt"
    torch.save(model.state_dict(), ckpt)
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    b = convert_checkpoint(ckpt, "unet", config={"widths": [8, 16]})
    assert calls == [{"map_location": "cpu", "weights_only": True}]
    assert b.manifest["task"] == ""
    # an extra or a missing tensor is refused (strict loading), with torch's first line
    for edit in ("extra", "missing"):
        state = dict(model.state_dict())
        if edit == "extra":
            state["extra.weight"] = torch.zeros(1)
        else:
            state.pop(next(iter(state)))
        torch.save(state, ckpt)
        with pytest.raises(BundleError) as info:
            convert_checkpoint(ckpt, "unet", config={"widths": [8, 16]})
        msg = str(info.value)
        assert "Error(s) in loading state_dict for UNet" in msg and "Pass the matching --config" in msg
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(BundleError) as info:
        convert_checkpoint(garbage, "unet")
    msg = str(info.value)
    assert "(Weights only load failed." in msg and "\n" not in msg
    assert msg.endswith("only checkpoints holding plain tensors can be converted")


def test_read_bundle_bytes_default_source_name(tiny_bundle):
    with pytest.raises(BundleError, match=r"^<bytes> is not a bundle"):
        read_bundle_bytes(b"plain text")


def test_list_bundles_without_shipped_folder(tiny_bundle, monkeypatch, tmp_path):
    import napari_dgseg.core.bundle_index as bundle_mod

    monkeypatch.setattr(bundle_mod, "shipped_dir", lambda: tmp_path / "no-shipped-models")
    tiny_bundle.save(bundle_mod.user_dir() / "mine.dgseg")
    assert [(r["name"], r["where"]) for r in list_bundles()] == [("mine", "user")]


def test_save_writes_a_hidden_temporary_file_next_to_the_target(tiny_bundle, tmp_path, monkeypatch):
    """Atomic save: the data go to ``.dgseg-tmp-<pid>-NAME.dgseg.<random>.tmp`` in the target's
    folder (same file system). A new file is then hard-linked into place (``os.link`` fails if
    the target appeared meanwhile, so nothing is ever replaced without ``overwrite``); with
    ``overwrite=True`` the temporary file replaces the target (``os.replace``, atomic)."""
    import os

    import napari_dgseg.core.atomic as atomic_mod

    seen = []
    real_replace, real_link = os.replace, os.link

    def spy(real, kind):
        def call(src, dst):
            seen.append((kind, str(src), str(dst), open(src, "rb").read()))
            return real(src, dst)
        return call

    monkeypatch.setattr(atomic_mod.os, "replace", spy(real_replace, "replace"))
    monkeypatch.setattr(atomic_mod.os, "link", spy(real_link, "link"))
    target = tmp_path / "sub" / "m.dgseg"
    prefix = f".dgseg-tmp-{os.getpid()}-m.dgseg."
    for kind, overwrite in (("link", False), ("replace", True)):
        seen.clear()
        tiny_bundle.save(target, overwrite=overwrite)
        (how, src, dst, data), = seen
        assert how == kind
        assert dst == str(target) and os.path.dirname(src) == str(target.parent)
        name = os.path.basename(src)
        assert name.startswith(prefix) and name.endswith(".tmp") and len(name) > len(prefix + ".tmp")
        assert data == target.read_bytes() and not os.path.exists(src)
    assert not [p for p in os.listdir(target.parent) if p.startswith(".dgseg-tmp-")]


def test_archive_format_details(tiny_bundle):
    """What other tools see: an indented manifest in schema order, safetensors tagged as torch
    tensors ("format": "pt"), members deflated at level 6."""
    import struct
    import zlib

    tiny_bundle.set_extra("bank", {"h": torch.ones(3)})
    data = tiny_bundle.to_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        text = zf.read(MANIFEST).decode()
        assert text == json.dumps(tiny_bundle.manifest, indent=2)
        assert list(json.loads(text))[:3] == ["schema", "schema_version", "name"]
        for info in zf.infolist():
            raw = zf.read(info.filename)
            comp = zlib.compressobj(6, zlib.DEFLATED, -15)
            assert info.compress_size == len(comp.compress(raw) + comp.flush()), info.filename
            if info.filename.endswith(".safetensors"):
                (n,) = struct.unpack("<Q", raw[:8])
                assert json.loads(raw[8 : 8 + n])["__metadata__"] == {"format": "pt"}
