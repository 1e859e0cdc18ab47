"""Issue 18, writing side: nothing of the user's is lost when napari-dgseg writes.

Existing outputs are kept without ``--overwrite``; two inputs with one stem get two outputs; a
batch goes on past a bad file and reports it; files follow the umask; a bundle name being written
is locked; temporary files of dead runs are removed; NaN network outputs are an error; disk full,
permission denied and ``--out`` naming a file are one line each. Through the real entry point
(``napari_dgseg.cli.main``, or a subprocess where the process umask matters).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from skimage.io import imsave

from conftest import disks_image
from napari_dgseg.cli import main
from napari_dgseg.core.errors import LockedError, NonFiniteOutputError, OutputExistsError
from napari_dgseg.core.labels_io import read_labels, read_provenance, write_labels
from napari_dgseg.core.outputs import (
    bundle_lock,
    clean_stale_temps,
    describe_os_error,
    lock_path,
    unique_stems,
)

SRC = Path(__file__).resolve().parents[1] / "src"


def _image(path: Path, seed: int = 0, size: int = 64) -> Path:
    img, _ = disks_image(size, seed=seed)
    if path.suffix == ".tif":
        import tifffile

        tifffile.imwrite(path, img, photometric="rgb")
    else:
        imsave(path, img, check_contrast=False)
    return path


def _predict(model: Path, out: Path, *inputs: Path, extra: tuple[str, ...] = ()) -> list[str]:
    return ["predict", "--model", str(model), "--out", str(out), "--tile", "64", "--overlap",
            "16", "--quiet", *extra, *map(str, inputs)]


def _debris(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".dgseg-"))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --------------------------------------------------------------------------- overwrite
def test_existing_output_is_kept_without_overwrite(tiny_bundle, tmp_path, capsys):
    model, out = tmp_path / "tiny.dgseg", tmp_path / "out"
    img = _image(tmp_path / "a.png")
    assert main(_predict(model, out, img)) == 0
    capsys.readouterr()
    target = out / "a_labels.tif"
    target.write_bytes(b"the user's own file")
    assert main(_predict(model, out, img)) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(target) in err and "--overwrite" in err
    assert target.read_bytes() == b"the user's own file"
    assert main(_predict(model, out, img, extra=("--overwrite",))) == 0
    assert read_labels(target)[1]["model"] == "tiny"
    assert _debris(out) == []


def test_python_api_refuses_to_overwrite_by_default(tiny_bundle, tmp_path):
    path = tmp_path / "tiny.dgseg"
    before = path.read_bytes()
    with pytest.raises(OutputExistsError, match="already exists"):
        tiny_bundle.save(path)
    assert path.read_bytes() == before
    labels = np.eye(8, dtype=np.uint8)
    write_labels(tmp_path / "m.tif", labels)
    with pytest.raises(OutputExistsError, match="m.tif already exists"):
        write_labels(tmp_path / "m.tif", labels + 1)
    np.testing.assert_array_equal(read_labels(tmp_path / "m.tif")[0], labels)


def test_train_and_synth_refuse_before_any_work(tiny_bundle, tmp_path, capsys):
    existing = tmp_path / "tiny.dgseg"
    before = existing.read_bytes()
    # the sources do not even exist: the refusal comes first, so no training time is lost
    assert main(["train", "unet", "--source", str(tmp_path / "nowhere"), "--out", str(existing),
                 "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err and existing.read_bytes() == before
    synth = ["synth", "nuclei", "--n", "1", "--size", "64", "--out", str(tmp_path / "s")]
    assert main(synth) == 0
    capsys.readouterr()
    assert main(synth) == 2
    assert "synth.json already exists" in capsys.readouterr().err
    assert main([*synth, "--overwrite"]) == 0


def test_zarr_folder_not_written_by_us_is_never_deleted(tmp_path):
    labels = np.arange(16, dtype=np.uint8).reshape(4, 4)
    foreign = tmp_path / "user.zarr"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("precious")
    for overwrite in (False, True):
        with pytest.raises(OutputExistsError):
            write_labels(foreign, labels, overwrite=overwrite)
    assert (foreign / "notes.txt").read_text() == "precious"
    ours = write_labels(tmp_path / "ours.zarr", labels, {"v": 1})
    with pytest.raises(OutputExistsError):
        write_labels(ours, labels + 1, {"v": 2})
    write_labels(ours, labels + 1, {"v": 2}, overwrite=True)  # our own labels store: replaced
    assert read_provenance(ours) == {"v": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours.zarr", "user.zarr"]


# --------------------------------------------------------------------------- batches
def test_unique_stems_rule():
    paths = [Path("a/x.png"), Path("b/x.tif"), Path("c/x.png"), Path("X.jpg"), Path("y.png")]
    assert unique_stems(paths, lambda p: p.stem) == ["x", "x.tif", "x.png", "X.jpg", "y"]


def test_stem_collision_gives_two_outputs_and_reports_them(tiny_bundle, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    png, tif = _image(folder / "x.png", 0), _image(folder / "x.tif", 1)
    assert main(_predict(tmp_path / "tiny.dgseg", tmp_path / "out", folder)) == 0
    summary = json.loads(capsys.readouterr().out)
    written = {row["input"]: Path(row["labels"]).name for row in summary["outputs"]}
    assert written == {str(png): "x_labels.tif", str(tif): "x.tif_labels.tif"}
    assert summary["renamed"] == {str(tif): "x.tif"} and summary["failed"] == []
    assert read_labels(tmp_path / "out" / "x.tif_labels.tif")[1]["source_image"] == str(tif.resolve())


def test_batch_goes_on_past_a_corrupt_file(tiny_bundle, tmp_path, capsys):
    good = _image(tmp_path / "good.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # a PNG signature, then nothing
    out = tmp_path / "out"
    rc = main(_predict(tmp_path / "tiny.dgseg", out, bad, good))
    captured = capsys.readouterr()
    assert rc == 1
    summary = json.loads(captured.out)
    assert [row["input"] for row in summary["outputs"]] == [str(good)]
    assert (out / "good_labels.tif").is_file() and not (out / "bad_labels.tif").exists()
    (failure,) = summary["failed"]
    assert failure["input"] == str(bad) and "\n" not in failure["error"] and failure["error"]
    assert "Traceback" not in captured.err and captured.err.count("\n") == 1
    assert str(bad) in captured.err


def test_disk_full_is_one_line_stops_the_batch_and_leaves_no_debris(
    tiny_bundle, tmp_path, capsys, monkeypatch
):
    import tifffile

    a, b = _image(tmp_path / "a.png", 0), _image(tmp_path / "b.png", 1)
    out = tmp_path / "out"

    def full(path, *args, **kwargs):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(tifffile, "imwrite", full)
    rc = main(_predict(tmp_path / "tiny.dgseg", out, a, b))
    captured = capsys.readouterr()
    assert rc == 1 and "Traceback" not in captured.err
    (line,) = captured.err.strip().splitlines()
    assert str(out / "a_labels.tif") in line and "disk is full" in line
    summary = json.loads(captured.out)
    assert summary["outputs"] == [] and summary["skipped"] == [str(b)]
    assert not out.exists() or sorted(p.name for p in out.iterdir()) == []  # no debris


def test_normalize_disk_full_and_out_is_a_folder(tmp_path, capsys, monkeypatch):
    import skimage.io

    img, ref = _image(tmp_path / "img.png", 0), _image(tmp_path / "ref.png", 1)
    args = ["normalize", str(img), "--reference", str(ref), "--out"]
    assert main([*args, str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    monkeypatch.setattr(skimage.io, "imsave",
                        lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space")))
    assert main([*args, str(tmp_path / "n.png")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "n.png: No space (the disk is full" in line
    assert not (tmp_path / "n.png").exists() and _debris(tmp_path) == []


def test_out_pointing_at_a_file_is_one_line(tiny_bundle, tmp_path, capsys):
    img = _image(tmp_path / "a.png")
    not_a_folder = tmp_path / "file.txt"
    not_a_folder.write_text("keep me")
    for out in (not_a_folder, not_a_folder / "sub"):
        assert main(_predict(tmp_path / "tiny.dgseg", out, img)) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "not a folder" in err and "Traceback" not in err
    assert not_a_folder.read_text() == "keep me"


def test_permission_error_names_the_output_not_a_temporary(tiny_bundle, tmp_path, capsys,
                                                           monkeypatch):
    import tempfile

    img = _image(tmp_path / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    if os.geteuid() != 0:  # root ignores modes; then the refusal is simulated below
        out.chmod(0o555)
    else:
        def denied(*args, dir=None, prefix="", **kwargs):
            raise PermissionError(errno.EACCES, "Permission denied", f"{dir}/{prefix}xyz.tmp")

        monkeypatch.setattr(tempfile, "mkstemp", denied)
    try:
        rc = main(_predict(tmp_path / "tiny.dgseg", out, img))
    finally:
        out.chmod(0o755)
    captured = capsys.readouterr()
    assert rc == 1
    (line,) = captured.err.strip().splitlines()
    assert f"cannot write {out / 'a_labels.tif'}: Permission denied" in line
    assert ".dgseg-tmp" not in line and "no permission" in line


def test_describe_os_error_formats():
    exc = OSError(errno.EROFS, "Read-only file system", "/mnt/x")
    assert describe_os_error(exc) == (
        "cannot write /mnt/x: Read-only file system (the disk is read-only; write to another disk)"
    )
    assert describe_os_error(OSError("odd"), "/a/b.tif") == "cannot write /a/b.tif: odd"


# --------------------------------------------------------------------------- permissions
def _umask_run(mask: int, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(SRC))
    return subprocess.run([sys.executable, "-m", "napari_dgseg.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300,
                          preexec_fn=lambda: os.umask(mask))


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o027, 0o640)])
def test_outputs_follow_the_umask_through_the_cli(tiny_bundle, tmp_path, mask, mode):
    img = _image(tmp_path / "a.png")
    out = tmp_path / f"out{mask:o}"
    res = _umask_run(mask, _predict(tmp_path / "tiny.dgseg", out, img,
                                    extra=("--probabilities",)), tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    for name in ("a_labels.tif", "a_probabilities.tif"):
        assert (out / name).stat().st_mode & 0o777 == mode, name
    assert _debris(out) == []


# --------------------------------------------------------------------------- bundle lock
def test_lock_refuses_a_second_writer_and_takes_over_a_dead_one(tiny_bundle, tmp_path, capsys):
    out = tmp_path / "models" / "new.dgseg"
    out.parent.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock_path(out).write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(),
                                              "started": "earlier", "what": "train"}))
        assert main(["train", "unet", "--source", str(tmp_path / "nowhere"), "--out", str(out),
                     "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"pid {holder.pid}" in err and "new.dgseg" in err
        with pytest.raises(LockedError, match="another run"):
            tiny_bundle.save(out)
        assert not out.exists() and lock_path(out).exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder died without cleaning up: its lock is stale and taken over
    assert tiny_bundle.save(out) == out and not lock_path(out).exists()


def test_lock_is_reentrant_and_removed_on_exception(tmp_path):
    target = tmp_path / "m.dgseg"
    with pytest.raises(RuntimeError), bundle_lock(target, "train"):
        with bundle_lock(target, "save"):
            assert json.loads(lock_path(target).read_text())["pid"] == os.getpid()
        assert lock_path(target).exists()
        raise RuntimeError("boom")
    assert not lock_path(target).exists()


# --------------------------------------------------------------------------- temporaries
def test_stale_temporaries_of_dead_runs_are_removed_on_start(tiny_bundle, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    dead = _dead_pid()
    stale = out / f".dgseg-tmp-{dead}-a_labels.tif.abc123.tmp"
    stale.write_bytes(b"half")
    stale_zarr = out / f".dgseg-tmp-{dead}-big.zarr.1234abcd.tmp"
    (stale_zarr / "c").mkdir(parents=True)
    moved_aside = out / f".dgseg-old-{dead}-kept.zarr.1234abcd.old"  # died mid-swap: restore
    write_labels(tmp_path / "kept.zarr", np.eye(4, dtype=np.uint8), {"v": 1})
    os.replace(tmp_path / "kept.zarr", moved_aside)
    alive = out / f".dgseg-tmp-{os.getppid()}-other.tif.x.tmp"  # a live process: kept
    alive.write_bytes(b"busy")
    user = out / ".my-notes.tmp"
    user.write_text("not ours")
    assert main(_predict(tmp_path / "tiny.dgseg", out, _image(tmp_path / "a.png"))) == 0
    assert not stale.exists() and not stale_zarr.exists() and not moved_aside.exists()
    assert read_provenance(out / "kept.zarr") == {"v": 1}
    assert alive.exists() and user.read_text() == "not ours"
    assert clean_stale_temps(tmp_path / "missing") == []


@pytest.mark.parametrize("how", ["keyboard", "sigterm"])
def test_interrupt_while_writing_leaves_no_temporary(tiny_bundle, tmp_path, capsys, monkeypatch,
                                                     how):
    import tifffile

    real = tifffile.imwrite

    def interrupted(path, *args, **kwargs):
        real(path, *args, **kwargs)  # the temporary file exists now
        if how == "keyboard":
            raise KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGTERM)  # handled like Ctrl+C by the CLI

    monkeypatch.setattr(tifffile, "imwrite", interrupted)
    out = tmp_path / "out"
    assert main(_predict(tmp_path / "tiny.dgseg", out, _image(tmp_path / "a.png"))) == 130
    assert "interrupted" in capsys.readouterr().err
    assert not out.exists()  # no temporary file, and the folder the run created is gone again
    assert signal.getsignal(signal.SIGTERM) is not None


# --------------------------------------------------------------------------- non-finite
def test_non_finite_network_output_is_an_error(tiny_bundle, tmp_path, capsys, monkeypatch):
    img, _ = disks_image(64, seed=0)
    # the input overflows the network at run time (weights themselves stay finite)
    monkeypatch.setattr("napari_dgseg.core.predict.normalise_input",
                        lambda x, spec, stats=None: x * float("inf"))
    with pytest.raises(NonFiniteOutputError, match="model 'tiny'.*NaN or inf.*weights"):
        tiny_bundle.predict(img, tile=64, overlap=16)
    out = tmp_path / "out"
    rc = main(_predict(tmp_path / "tiny.dgseg", out, _image(tmp_path / "a.png")))
    captured = capsys.readouterr()
    assert rc == 1 and "Traceback" not in captured.err
    (failure,) = json.loads(captured.out)["failed"]
    assert "model 'tiny'" in failure["error"] and "non-finite" in failure["error"]
    assert not out.exists()  # nothing written: the folder the run created is gone again


def test_any_other_system_error_is_one_line(tmp_path, capsys, monkeypatch):
    def broken(name):
        raise OSError(errno.EIO, "Input/output error", str(tmp_path / "m.dgseg"))

    monkeypatch.setattr("napari_dgseg.core.bundle.load_bundle", broken)
    assert main(_predict(tmp_path / "m.dgseg", tmp_path / "out", tmp_path)) == 2
    err = capsys.readouterr().err
    assert err == f"dgseg predict: error: {tmp_path / 'm.dgseg'}: Input/output error\n"
