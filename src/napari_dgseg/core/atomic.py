"""Atomic file writing shared by every writer (bundles, labels, images, datasets).

A file is written to a temporary file in the destination folder, flushed to disk (``fsync``),
given the permissions a plain ``open(path, "w")`` would have had (``0o666`` minus the umask;
:func:`tempfile.mkstemp` alone creates ``0o600``), and only then renamed over the destination with
:func:`os.replace`, which is atomic on POSIX and Windows within one file system. A crash, an
exception or a cancel before the rename leaves any old file untouched and removes the temporary
file.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from napari_dgseg.core.cancel import check_cancel

__all__ = ["atomic_write", "atomic_write_bytes", "current_umask", "default_file_mode"]


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux ``/proc``).

    Elsewhere it falls back to setting and restoring it, which is not thread-safe for the
    instant in between.
    """
    with contextlib.suppress(OSError):
        text = Path("/proc/self/status").read_text()
        match = re.search(r"^Umask:\s*([0-7]+)", text, re.MULTILINE)
        if match:
            return int(match.group(1), 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """Permissions of a newly created regular file: ``0o666 & ~umask``."""
    return 0o666 & ~current_umask()


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (POSIX); silently skipped where folders cannot be opened."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(
    path: str | os.PathLike,
    write: Callable[[Path], Any],
    *,
    suffix: str | None = None,
    cancel: Any = None,
    cancel_message: str | None = None,
) -> Path:
    """Create or replace ``path`` atomically with whatever ``write(tmp_path)`` writes.

    Parameters
    ----------
    path : str or os.PathLike
        Destination; its folder must exist.
    write : callable
        Called once with the temporary file's path (a :class:`~pathlib.Path` in the same folder,
        ending in ``suffix`` so that writers that pick the format from the extension work).
    suffix : str, optional
        Suffix of the temporary file; default: the suffix of ``path``.
    cancel : threading.Event, callable or None
        Checked after writing, before the rename (see :mod:`napari_dgseg.core.cancel`).
    cancel_message : str, optional
        Message of the :class:`~napari_dgseg.core.errors.CancelledError` raised on cancel.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    CancelledError
        When ``cancel`` is set; nothing was written and an old file is untouched.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=path.suffix if suffix is None else suffix, dir=path.parent
    )
    os.close(fd)
    try:
        write(Path(tmp))
        _fsync_file(tmp)
        os.chmod(tmp, default_file_mode())
        check_cancel(
            cancel, cancel_message or f"writing {path.name} cancelled; nothing was written"
        )
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(
    path: str | os.PathLike, data: bytes, *, cancel: Any = None, cancel_message: str | None = None
) -> Path:
    """:func:`atomic_write` of a bytes object (temporary file suffix ``.tmp``)."""
    return atomic_write(
        path,
        lambda tmp: tmp.write_bytes(data),
        suffix=".tmp",
        cancel=cancel,
        cancel_message=cancel_message,
    )
