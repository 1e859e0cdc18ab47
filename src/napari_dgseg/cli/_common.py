"""Helpers shared by subcommands."""

from __future__ import annotations

import argparse
import errno
import json
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def print_json(obj: Any) -> None:
    """Print one JSON object on stdout (the CLI's machine-readable contract)."""
    json.dump(obj, sys.stdout, indent=2, sort_keys=False, default=_default)
    sys.stdout.write("\n")
    sys.stdout.flush()


def command_line(args: argparse.Namespace) -> str:
    """The command as the user typed it (``dgseg ...``), for provenance."""
    return "dgseg " + shlex.join(getattr(args, "argv", []))


def _default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def add_overwrite(parser: argparse.ArgumentParser) -> None:
    """Add ``--overwrite`` (existing outputs are kept unless it is given)."""
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing outputs (default: refuse and keep them)",
    )


def output_folder(path: str, flag: str = "--out") -> Path:
    """Create the output folder and remove temporary files that dead runs left in it."""
    from napari_dgseg.core.outputs import clean_stale_temps, prepare_out_dir

    out = prepare_out_dir(path, flag)
    clean_stale_temps(out)
    return out


def output_file(path: str | Path, flag: str = "--out", *, overwrite: bool = False) -> Path:
    """Check an output file path: not a folder, kept unless ``overwrite``; clean its folder."""
    from napari_dgseg.core.errors import InputError
    from napari_dgseg.core.outputs import clean_stale_temps, refuse_existing

    p = Path(path)
    if p.is_dir():
        raise InputError(f"{flag} {p} is a folder; give a file name.")
    if p.parent.exists() and not p.parent.is_dir():
        raise InputError(f"{flag} {p}: {p.parent} is a file, not a folder; choose another path.")
    refuse_existing([p], overwrite=overwrite)
    if p.parent.is_dir():
        clean_stale_temps(p.parent)
    return p


def one_line(exc: BaseException) -> str:
    """The first line of an error's message (the type name when it has none)."""
    from napari_dgseg.core.errors import DgsegError
    from napari_dgseg.core.outputs import describe_os_error

    if isinstance(exc, OSError) and not isinstance(exc, DgsegError):
        return describe_os_error(exc, verb=None)
    text = str(exc).strip().splitlines()
    if isinstance(exc, DgsegError):
        return text[0] if text else type(exc).__name__
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


#: Errors that will fail every following input too: a batch stops there.
FATAL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def run_batch(
    command: str,
    items: Sequence[Any],
    process: Callable[[Any], dict],
    label: Callable[[Any], str] = str,
) -> tuple[list[dict], list[dict], list[str]]:
    """Run ``process`` on every item; a failing item is reported and the batch goes on.

    Each failure prints one line on stderr (``dgseg COMMAND: error: INPUT: message``) and is
    returned as ``{"input": label(item), "error"}``. Disk full / read-only disk stop the batch: the items not
    tried are returned as ``skipped``. A cancel (Ctrl+C) stops everything.

    Returns
    -------
    rows, failed, skipped
    """
    from napari_dgseg.core.errors import CancelledError

    rows: list[dict] = []
    failed: list[dict] = []
    skipped: list[str] = []
    for i, item in enumerate(items):
        try:
            rows.append(process(item))
        except CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - one bad input must not lose the others
            message = one_line(exc)
            print(f"dgseg {command}: error: {label(item)}: {message}", file=sys.stderr)
            failed.append({"input": label(item), "error": message})
            if isinstance(exc, OSError) and exc.errno in FATAL_ERRNOS:
                skipped = [label(x) for x in items[i + 1 :]]
                break
    return rows, failed, skipped


def bundle_output(path: str, *, overwrite: bool, flag: str = "--out") -> Path:
    """The bundle file ``--out`` names (``.dgseg`` appended), checked before any long work.

    Its folder is created, stale temporary files in it removed, and an existing bundle refused
    unless ``overwrite`` - before training starts, not after an hour of it.
    """
    p = Path(path)
    if not p.name.endswith(".dgseg"):
        p = p.with_name(p.name + ".dgseg")
    output_file(p, flag, overwrite=overwrite)
    from napari_dgseg.core.outputs import prepare_out_dir

    prepare_out_dir(p.parent, flag)
    return p
