"""Writing outputs without losing anything of the user's.

Shared by the CLI commands and the Python API that write files:

* :func:`refuse_existing` - an existing output is kept unless replacing it was asked for
  (``--overwrite`` / ``overwrite=True``); the message names the file.
* :func:`unique_stems` - one output name per input even when two inputs share a stem
  (``x.png`` and ``x.tif``): the first keeps ``x``, a later one is named after its whole file name
  (``x.tif``), and ``-2``, ``-3`` ... are appended while that is still taken.
* :func:`prepare_out_dir` - ``--out`` as a folder, with one clear line when it is a file.
* :func:`bundle_lock` - an advisory ``<name>.dgseg.lock`` (created with ``O_EXCL``, holding the
  pid) so that two runs saving one bundle name do not silently overwrite each other; a lock
  whose process is gone is taken over.
* :func:`clean_stale_temps` - temporary files of the atomic writer (``.dgseg-tmp-<pid>-...``)
  left by a killed run are removed when the next writing run starts.
* :func:`describe_os_error` - one line for disk full, permission denied, read-only disk, naming
  the path that failed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from napari_dgseg.core.errors import InputError, LockedError, OutputExistsError

__all__ = [
    "TEMP_PREFIX",
    "bundle_lock",
    "clean_stale_temps",
    "describe_os_error",
    "lock_path",
    "pid_alive",
    "prepare_out_dir",
    "refuse_existing",
    "temp_prefix",
    "unique_stems",
]

#: Every temporary file or folder napari-dgseg writes starts with this (then ``<pid>-``).
TEMP_PREFIX = ".dgseg-tmp-"
#: A replaced Zarr folder moved aside for the instant of the swap: ``.dgseg-old-<pid>-<name>...``.
OLD_PREFIX = ".dgseg-old-"
_TEMP_RE = re.compile(r"^\.dgseg-(tmp|old)-(\d+)-(.*)$")

_HINTS = {
    errno.ENOSPC: "the disk is full; free some space or write to another disk",
    errno.EDQUOT: "the disk quota is exceeded; free some space or write to another disk",
    errno.EACCES: "no permission; choose another place or fix the permissions",
    errno.EPERM: "operation not permitted; choose another place or fix the permissions",
    errno.EROFS: "the disk is read-only; write to another disk",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another path",
    errno.EISDIR: "it is a folder; give a file name",
    errno.ENAMETOOLONG: "the name is too long; choose a shorter one",
}


def temp_prefix(name: str) -> str:
    """Prefix of a temporary file for the output ``name`` written by this process."""
    return f"{TEMP_PREFIX}{os.getpid()}-{name}."


def describe_os_error(
    exc: OSError, path: str | os.PathLike | None = None, verb: str | None = "write"
) -> str:
    """One line for ``exc``: what failed, on which path, and what to do.

    Parameters
    ----------
    exc : OSError
    path : path, optional
        The output that was being written; the default is the error's own ``filename``.
    verb : str or None
        ``"cannot <verb> <path>: <reason>"``; None for ``"<path>: <reason>"`` (the operation is
        not known, e.g. an error caught by the CLI's last resort).
    """
    where = os.fspath(path) if path is not None else exc.filename
    reason = exc.strerror or str(exc) or type(exc).__name__
    hint = _HINTS.get(exc.errno or -1)
    if verb is None:
        text = f"{where}: {reason}" if where is not None else reason
    else:
        text = f"cannot {verb} {where}: {reason}" if where is not None else f"cannot {verb}: {reason}"
    return f"{text} ({hint})" if hint else text


def refuse_existing(paths: Iterable[str | os.PathLike], *, overwrite: bool = False) -> None:
    """Raise :class:`OutputExistsError` when one of ``paths`` exists and ``overwrite`` is false.

    The message names the first existing path and how many more there are.
    """
    if overwrite:
        return
    existing = [Path(p) for p in paths if os.path.lexists(p)]
    if existing:
        more = f" (and {len(existing) - 1} more output(s))" if len(existing) > 1 else ""
        raise OutputExistsError(
            f"{existing[0]} already exists{more}; it was kept. Pass --overwrite (Python: "
            "overwrite=True) to replace it, or choose another output."
        )


def unique_stems(paths: Sequence[Path], stem_of: callable) -> list[str]:
    """One output stem per input, distinct even when stems collide (case-insensitively).

    The rule (deterministic, in input order): an input keeps ``stem_of(path)`` when no earlier
    input took it; otherwise it is named after its whole file name (``x.tif``); when that is taken
    too, ``-2``, ``-3`` ... are appended to it.
    """
    taken: set[str] = set()
    stems: list[str] = []
    for path in paths:
        stem = stem_of(path)
        if stem.lower() in taken:
            stem = path.name
            base, k = stem, 2
            while stem.lower() in taken:
                stem, k = f"{base}-{k}", k + 1
        taken.add(stem.lower())
        stems.append(stem)
    return stems


def prepare_out_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Create the output folder ``path`` (and parents); one clear line when it cannot be one."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise InputError(
            f"{flag} {out} is a file, not a folder; give a folder (it is created when missing)."
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise InputError(
            f"{flag} {out}: a part of the path is a file, not a folder; choose another folder."
        ) from None
    except OSError as exc:
        message = describe_os_error(exc, verb="create")
        raise InputError(f"{flag}: {message}") from None
    return out


def pid_alive(pid: int) -> bool:
    """True when a process ``pid`` exists on this machine (conservatively True when unsure)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def clean_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove temporary files/folders of dead napari-dgseg processes in ``folder``.

    Only names starting with ``.dgseg-tmp-<pid>-`` (or ``.dgseg-old-<pid>-``) whose ``<pid>`` is
    not running are touched. A ``.dgseg-old-`` folder is a Zarr store moved aside during a
    replace; when its target is missing (the run died in between) it is moved back instead.

    Returns
    -------
    list of Path
        What was removed or restored.
    """
    folder = Path(folder)
    done: list[Path] = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return done
    for entry in entries:
        match = _TEMP_RE.match(entry.name)
        if not match or int(match.group(2)) == os.getpid() or pid_alive(int(match.group(2))):
            continue
        with contextlib.suppress(OSError):
            if match.group(1) == "old":
                target = folder / match.group(3).rsplit(".", 2)[0]
                if not os.path.lexists(target):
                    os.replace(entry, target)
                    done.append(target)
                    continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            done.append(entry)
    return done


# --------------------------------------------------------------------------- bundle lock
_HELD: dict[Path, int] = {}


def lock_path(bundle_path: str | os.PathLike) -> Path:
    """The lock file of a bundle: ``<name>.dgseg.lock`` next to it."""
    p = Path(bundle_path)
    return p.with_name(p.name + ".lock")


def _read_lock(path: Path) -> dict:
    try:
        value = json.loads(path.read_text()[:4096])
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _stale(info: dict) -> bool:
    pid = info.get("pid")
    return (
        isinstance(pid, int)
        and info.get("host") == socket.gethostname()
        and not pid_alive(pid)
    )


@contextlib.contextmanager
def bundle_lock(bundle_path: str | os.PathLike, what: str = "write") -> Iterator[Path]:
    """Hold the advisory lock of ``bundle_path`` for the duration of the ``with`` block.

    Re-entrant within one process (``train`` holds it and ``Bundle.save`` takes it again). A lock
    left by a process that no longer runs on this machine is taken over.

    Raises
    ------
    LockedError
        When another live process holds it; the message names its pid, host and start time.
    """
    lock = lock_path(Path(bundle_path).absolute())
    if lock in _HELD:
        _HELD[lock] += 1
        try:
            yield lock
        finally:
            _HELD[lock] -= 1
        return
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "what": what,
    }
    for attempt in range(2):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = _read_lock(lock)
            if attempt == 0 and (_stale(holder) or not holder and _older_than(lock, 60.0)):
                with contextlib.suppress(OSError):
                    os.unlink(lock)
                continue
            raise LockedError(
                f"{Path(bundle_path).name} is being written by another run (pid "
                f"{holder.get('pid', '?')} on {holder.get('host', '?')}, {holder.get('what', '?')} "
                f"since {holder.get('started', '?')}); wait for it to finish or choose another "
                f"name. If that run no longer exists, delete {lock}."
            ) from None
        except OSError as exc:
            from napari_dgseg.core.errors import OutputWriteError

            raise OutputWriteError(describe_os_error(exc, lock)) from None
        with os.fdopen(fd, "w") as fh:
            json.dump(info, fh)
        break
    _HELD[lock] = 1
    try:
        yield lock
    finally:
        del _HELD[lock]
        if _read_lock(lock).get("pid") == os.getpid():
            with contextlib.suppress(OSError):
                os.unlink(lock)


def _older_than(path: Path, seconds: float) -> bool:
    """An empty/unreadable lock is stale only once its writer had ample time to fill it."""
    try:
        return time.time() - path.stat().st_mtime > seconds
    except OSError:
        return True
