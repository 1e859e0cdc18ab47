"""The shared atomic writer (umask-following permissions, no debris) and the cancel helper."""

from __future__ import annotations

import os
import threading

import pytest

from napari_dgseg.core.atomic import atomic_write, atomic_write_bytes, current_umask
from napari_dgseg.core.cancel import check_cancel, is_cancelled
from napari_dgseg.core.errors import CancelledError


@pytest.fixture
def umask():
    """Set a umask for one test and restore the old one."""
    old = os.umask(0o022)
    os.umask(old)

    def set_(mask: int) -> None:
        os.umask(mask)

    yield set_
    os.umask(old)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_mode_follows_umask(tmp_path, umask, mask):
    umask(mask)
    assert current_umask() == mask
    out = atomic_write_bytes(tmp_path / "a.bin", b"hello")
    assert out.read_bytes() == b"hello"
    assert (out.stat().st_mode & 0o777) == (0o666 & ~mask)


def test_exception_mid_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "model.dgseg"
    target.write_bytes(b"old")

    def broken(tmp):
        tmp.write_bytes(b"half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(target, broken)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.dgseg"]


def test_cancel_before_rename_keeps_old_file(tmp_path):
    target = tmp_path / "x.tif"
    target.write_bytes(b"old")
    ev = threading.Event()
    ev.set()
    with pytest.raises(CancelledError, match="nothing was written"):
        atomic_write_bytes(target, b"new", cancel=ev)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.tif"]


def test_temp_file_carries_the_suffix_writers_need(tmp_path):
    seen = []
    atomic_write(tmp_path / "img.png", lambda tmp: (seen.append(tmp.suffix), tmp.write_bytes(b"")))
    assert seen == [".png"]
    seen.clear()
    atomic_write(tmp_path / "p.tif", lambda tmp: (seen.append(tmp.suffix), tmp.write_bytes(b"")),
                 suffix=".tmp")
    assert seen == [".tmp"]


def test_is_cancelled_accepts_event_callable_and_none():
    ev = threading.Event()
    assert not is_cancelled(None)
    assert not is_cancelled(ev)
    ev.set()
    assert is_cancelled(ev)
    assert is_cancelled(lambda: 1)
    assert not is_cancelled(lambda: 0)
    with pytest.raises(TypeError):
        is_cancelled(3)


def test_check_cancel_raises_with_message():
    check_cancel(None)
    check_cancel(lambda: False)
    with pytest.raises(CancelledError, match="training cancelled"):
        check_cancel(lambda: True, "training cancelled")
