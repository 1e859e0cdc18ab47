"""Bundle integrity: every member is checked, every archive oddity is refused with a clear line.

A bundle with three tensor files (``weights``, ``bank``, ``replay``) is tampered with one member
at a time. Members are rewritten into a fresh, *valid* zip (correct CRCs), so the manifest's
sha256 is the only thing that can notice; separately, bytes are flipped inside the archive file
itself (the zip CRC notices). Refusals are :class:`BundleError` with a one-line message naming the
member.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

from napari_dgseg.core.bundle import MANIFEST, WEIGHTS, load_bundle, read_bundle_bytes
from napari_dgseg.core.errors import BundleError

TENSOR_MEMBERS = (WEIGHTS, "bank.safetensors", "replay.safetensors")


@pytest.fixture
def three_file_bundle(tiny_bundle, tmp_path) -> Path:
    """``full.dgseg``: the tiny U-Net plus a bank and a replay tensor file."""
    tiny_bundle.set_extra("bank", {"hist": torch.arange(12.0).reshape(3, 4)})
    tiny_bundle.set_extra("replay", {"images": torch.linspace(0, 1, 48).reshape(1, 3, 4, 4)})
    return tiny_bundle.save(tmp_path / "full.dgseg")


def members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def write_zip(path: Path, files: list[tuple[str, bytes]]) -> Path:
    """A valid zip with ``files`` in order (duplicates allowed)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns on duplicate names
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, data in files:
                zf.writestr(name, data)
    return path


def refused(path: Path, *patterns: str) -> str:
    """Load ``path``, expect a one-line BundleError containing every pattern; return it."""
    with pytest.raises(BundleError) as info:
        load_bundle(path)
    msg = str(info.value)
    assert "\n" not in msg
    for p in patterns:
        assert p in msg, (p, msg)
    return msg


def test_untampered_three_file_bundle_loads(three_file_bundle):
    b = load_bundle(three_file_bundle)
    assert b.tensor_files == sorted(TENSOR_MEMBERS)
    assert torch.equal(b.extra("bank")["hist"], torch.arange(12.0).reshape(3, 4))
    files = members(three_file_bundle)
    manifest = json.loads(files[MANIFEST])
    assert set(manifest["files"]) == set(TENSOR_MEMBERS)
    for name in TENSOR_MEMBERS:
        assert manifest["files"][name] == hashlib.sha256(files[name]).hexdigest()


@pytest.mark.parametrize("member", TENSOR_MEMBERS)
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_flipped_byte_in_each_tensor_member_refused(three_file_bundle, tmp_path, member, where):
    files = members(three_file_bundle)
    data = bytearray(files[member])
    pos = {"first": 0, "middle": len(data) // 2, "last": len(data) - 1}[where]
    data[pos] ^= 0x01
    files[member] = bytes(data)
    bad = write_zip(tmp_path / "bad.dgseg", list(files.items()))
    msg = refused(bad, f"{member} does not match its sha256 in the manifest",
                  "modified or damaged. Re-download or re-train the model")
    assert msg.startswith(f"{bad}: ")


@pytest.mark.parametrize("member", (MANIFEST, *TENSOR_MEMBERS))
def test_corrupted_archive_bytes_in_each_member_refused(three_file_bundle, tmp_path, member):
    """A byte flipped inside the archive file (not re-zipped): the zip CRC catches it, and the
    error is still a BundleError naming the member, not a zipfile traceback."""
    data = bytearray(three_file_bundle.read_bytes())
    with zipfile.ZipFile(three_file_bundle) as zf:
        info = zf.getinfo(member)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + info.compress_size // 2] ^= 0x01
    bad = tmp_path / "raw.dgseg"
    bad.write_bytes(bytes(data))
    msg = refused(bad, f"{member} is damaged inside the archive")
    assert msg.startswith(f"{bad}: ")


def test_manifest_tampering_refused(three_file_bundle, tmp_path):
    files = members(three_file_bundle)
    text = files[MANIFEST].decode()
    # a flipped structural byte: not JSON any more
    broken = dict(files)
    broken[MANIFEST] = text.replace("{", "[", 1).encode()
    refused(write_zip(tmp_path / "json.dgseg", list(broken.items())), MANIFEST, "not valid JSON")
    # one hex digit of each listed digest flipped: refused naming that file
    manifest = json.loads(text)
    for name in TENSOR_MEMBERS:
        m = json.loads(text)
        digest = m["files"][name]
        m["files"][name] = digest[:-1] + ("0" if digest[-1] != "0" else "1")
        bad = dict(files)
        bad[MANIFEST] = json.dumps(m).encode()
        refused(write_zip(tmp_path / "digest.dgseg", list(bad.items())), name, "sha256")
    # unknown schema name
    m = dict(manifest, schema="someone-else.bundle")
    bad = dict(files, **{MANIFEST: json.dumps(m).encode()})
    refused(write_zip(tmp_path / "schema.dgseg", list(bad.items())),
            "unknown bundle schema 'someone-else.bundle'; expected 'napari-dgseg.bundle'")
    # manifest that lists no weights
    m = dict(manifest, files={k: v for k, v in manifest["files"].items() if k != WEIGHTS})
    bad = {k: v for k, v in files.items() if k != WEIGHTS}
    bad[MANIFEST] = json.dumps(m).encode()
    refused(write_zip(tmp_path / "noweights.dgseg", list(bad.items())), "lists no", WEIGHTS)
    # a JSON list instead of an object
    bad = dict(files, **{MANIFEST: b"[1, 2]"})
    refused(write_zip(tmp_path / "list.dgseg", list(bad.items())), "unknown bundle schema 'list'")
    # not UTF-8
    bad = dict(files, **{MANIFEST: b"\xff\xfe" + files[MANIFEST]})
    refused(write_zip(tmp_path / "utf.dgseg", list(bad.items())), MANIFEST, "not valid JSON")


@pytest.mark.parametrize(("extra", "why"), [("extra.safetensors", "not in the manifest"),
                                           ("notes.txt", "not in the manifest"),
                                           ("sub/weights.safetensors", "path separator")])
def test_unlisted_member_refused(three_file_bundle, tmp_path, extra, why):
    files = members(three_file_bundle)
    files[extra] = files["bank.safetensors"]
    refused(write_zip(tmp_path / "more.dgseg", list(files.items())), why, extra)


@pytest.mark.parametrize("member", TENSOR_MEMBERS)
def test_removed_listed_member_refused(three_file_bundle, tmp_path, member):
    files = {k: v for k, v in members(three_file_bundle).items() if k != member}
    refused(write_zip(tmp_path / "less.dgseg", list(files.items())), "missing", member)


def test_removed_manifest_refused(three_file_bundle, tmp_path):
    files = {k: v for k, v in members(three_file_bundle).items() if k != MANIFEST}
    refused(write_zip(tmp_path / "nomanifest.dgseg", list(files.items())), "no bundle.json")


@pytest.mark.parametrize("member", (MANIFEST, *TENSOR_MEMBERS))
def test_duplicate_zip_entry_refused(three_file_bundle, tmp_path, member):
    """Two entries with one name are ambiguous (zip readers differ on which one wins): refused,
    even when the second copy is byte-identical, and whichever copy comes first."""
    files = members(three_file_bundle)
    other = bytearray(files[member])
    other[len(other) // 2] ^= 0x01
    for copy in (files[member], bytes(other)):
        for first in (True, False):
            entries = list(files.items())
            entries.insert(0 if first else len(entries), (member, copy))
            refused(write_zip(tmp_path / "dup.dgseg", entries), "duplicate", member)


def test_listed_member_that_is_not_safetensors_refused(three_file_bundle, tmp_path):
    files = members(three_file_bundle)
    note = b"just text"
    m = json.loads(files[MANIFEST])
    m["files"]["notes.txt"] = hashlib.sha256(note).hexdigest()
    files["notes.txt"] = note
    files[MANIFEST] = json.dumps(m).encode()
    refused(write_zip(tmp_path / "txt.dgseg", list(files.items())), "notes.txt", "not a .safetensors")


def test_listed_member_with_right_hash_but_broken_safetensors_refused(three_file_bundle, tmp_path):
    files = members(three_file_bundle)
    junk = b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}"
    m = json.loads(files[MANIFEST])
    m["files"]["bank.safetensors"] = hashlib.sha256(junk).hexdigest()
    files["bank.safetensors"] = junk
    files[MANIFEST] = json.dumps(m).encode()
    refused(write_zip(tmp_path / "st.dgseg", list(files.items())), "bank.safetensors",
            "not valid safetensors")


class _Payload:
    """Pickling this would run ``open(marker, "w")`` on load."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("name", ["model.pt", "weights.pth", "x.pkl", "state.ckpt", "arr.npy", "BIG.PT"])
def test_pickle_type_member_refused_by_name(three_file_bundle, tmp_path, name):
    marker = tmp_path / "ran"
    files = members(three_file_bundle)
    files[name] = pickle.dumps(_Payload(str(marker)))
    msg = refused(write_zip(tmp_path / "p.dgseg", list(files.items())))
    # a member ending in .pkl makes the whole archive look like a torch.save zip (data.pkl), and
    # the message says so; every other pickle-type member is named
    if name.endswith(".pkl"):
        assert " is a pickle (torch.save checkpoint); " in msg
    else:
        assert f"holds {name!r}, a pickle-type file; refused" in msg
    assert not marker.exists()


@pytest.mark.parametrize("member", TENSOR_MEMBERS)
@pytest.mark.parametrize("kind", ["raw-pickle", "torch-zip"])
def test_pickle_disguised_as_listed_member_refused(three_file_bundle, tmp_path, member, kind):
    """A pickle under a .safetensors name with a matching hash: refused before anything parses it."""
    marker = tmp_path / "ran"
    if kind == "raw-pickle":
        blob = pickle.dumps(_Payload(str(marker)), protocol=2)
    else:
        buf = io.BytesIO()
        torch.save({"w": torch.zeros(2)}, buf)
        blob = buf.getvalue()
    files = members(three_file_bundle)
    m = json.loads(files[MANIFEST])
    m["files"][member] = hashlib.sha256(blob).hexdigest()
    files[member] = blob
    files[MANIFEST] = json.dumps(m).encode()
    refused(write_zip(tmp_path / "d.dgseg", list(files.items())), member, "pickle")
    assert not marker.exists()


@pytest.mark.parametrize("zip_format", [True, False])
def test_pickled_checkpoint_given_as_bundle_refused(tmp_path, zip_format):
    """A torch.save checkpoint (new zip format or legacy pickle) named like a bundle."""
    ckpt = tmp_path / "model.dgseg"
    torch.save({"w": torch.zeros(2)}, ckpt, _use_new_zipfile_serialization=zip_format)
    msg = refused(ckpt, " is a pickle (torch.save checkpoint); ",
                  "`dgseg convert CHECKPOINT --family NAME --out MODEL.dgseg`")
    assert msg.startswith(str(ckpt))


def test_non_zip_and_truncated_refused(three_file_bundle, tmp_path):
    text = tmp_path / "text.dgseg"
    text.write_text("hello")
    msg = refused(text, " is not a bundle; ", "`dgseg convert CHECKPOINT --family NAME --out MODEL.dgseg`")
    assert msg.startswith(str(text))
    cut = tmp_path / "cut.dgseg"
    data = three_file_bundle.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    refused(cut, "not a valid bundle")


def test_refusal_through_cli_is_one_line(three_file_bundle, tmp_path, capsys):
    from napari_dgseg.cli import main

    files = members(three_file_bundle)
    data = bytearray(files["replay.safetensors"])
    data[-1] ^= 0x01
    files["replay.safetensors"] = bytes(data)
    bad = write_zip(tmp_path / "bad.dgseg", list(files.items()))
    assert main(["info", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "replay.safetensors" in err and "sha256" in err


def test_read_bundle_bytes_names_source(three_file_bundle):
    data = three_file_bundle.read_bytes()
    manifest, tensors = read_bundle_bytes(data, source="here.dgseg")
    assert set(tensors) == set(TENSOR_MEMBERS) and manifest["name"] == "tiny"
    with pytest.raises(BundleError, match="^here.dgseg"):
        read_bundle_bytes(data[:100], source="here.dgseg")
