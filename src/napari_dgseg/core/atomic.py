"""Atomic file writing shared by every writer (bundles, labels, images, datasets).

A file is written to a temporary file in the destination folder, flushed to disk (``fsync``),
given the permissions a plain ``open(path, "w")`` would have had (``0o666`` minus the umask;
:func:`tempfile.mkstemp` alone creates ``0o600``), and only then renamed over the destination with
:func:`os.replace`, which is atomic on POSIX and Windows within one file system. A crash, an
exception or a cancel before the rename leaves any old file untouched and removes the temporary
file.

Temporary names start with ``.dgseg-tmp-<pid>-`` (see :mod:`napari_dgseg.core.outputs`), so a
run killed before it could clean up leaves debris that the next writing run recognises and
removes. With ``overwrite=False`` the final step is a hard link, which fails when the destination
appeared meanwhile, so an existing file is never replaced. An ``OSError`` (disk full, permission
denied) becomes one :class:`~napari_dgseg.core.errors.OutputWriteError` naming the destination.
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
from napari_dgseg.core.errors import DgsegError, OutputExistsError, OutputWriteError
from napari_dgseg.core.outputs import describe_os_error, refuse_existing, temp_prefix

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
    overwrite: bool = True,
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
    overwrite : bool
        Replace an existing ``path`` (default, the low-level behaviour); when False an existing
        file is kept and :class:`~napari_dgseg.core.errors.OutputExistsError` is raised.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    CancelledError
        When ``cancel`` is set; nothing was written and an old file is untouched.
    OutputExistsError
        When ``overwrite`` is False and ``path`` exists.
    OutputWriteError
        When the system refuses (disk full, no permission, read-only disk); also an ``OSError``.
    """
    path = Path(path)
    refuse_existing([path], overwrite=overwrite)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(
            prefix=temp_prefix(path.name),
            suffix=path.suffix if suffix is None else suffix,
            dir=path.parent,
        )
        os.close(fd)
        write(Path(tmp))
        _fsync_file(tmp)
        os.chmod(tmp, default_file_mode())
        check_cancel(
            cancel, cancel_message or f"writing {path.name} cancelled; nothing was written"
        )
        if overwrite:
            os.replace(tmp, path)
        else:
            _link_new(tmp, path)
    except (DgsegError, KeyboardInterrupt, SystemExit):
        _remove(tmp)
        raise
    except OSError as exc:
        _remove(tmp)
        error = OutputWriteError(describe_os_error(exc, path))
        error.errno = exc.errno  # (no .filename: OSError.__str__ would then drop the message)
        raise error from exc
    except BaseException:
        _remove(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def _remove(tmp: str | None) -> None:
    if tmp is not None:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _link_new(tmp: str, path: Path) -> None:
    """Move ``tmp`` to ``path`` only if ``path`` does not exist (hard link, then unlink)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise OutputExistsError(
            f"{path} appeared while it was being written (another run?); it was kept. Pass "
            "--overwrite (Python: overwrite=True) to replace it."
        ) from None
    except OSError:  # no hard links on this file system: check, then rename
        refuse_existing([path])
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def atomic_write_bytes(
    path: str | os.PathLike,
    data: bytes,
    *,
    cancel: Any = None,
    cancel_message: str | None = None,
    overwrite: bool = True,
) -> Path:
    """:func:`atomic_write` of a bytes object (temporary file suffix ``.tmp``)."""
    return atomic_write(
        path,
        lambda tmp: tmp.write_bytes(data),
        suffix=".tmp",
        cancel=cancel,
        cancel_message=cancel_message,
        overwrite=overwrite,
    )
