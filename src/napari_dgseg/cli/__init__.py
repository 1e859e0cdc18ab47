"""The ``dgseg`` command line.

Each subcommand lives in a module ``cli/cmd_<name>.py`` that defines ``register(subparsers)``;
the module registers its parser and sets ``func`` (``args -> int``) as the default. Subcommands are
discovered, so adding one never touches this file. Machine-readable output is one JSON object on
stdout; user errors (:class:`~napari_dgseg.core.errors.DgsegError`) and system refusals (disk
full, permission denied: ``OSError``) print one line on stderr and exit with status 2, never a
traceback. A batch in which some inputs failed exits with status 1 (see ``_common.run_batch``).
SIGTERM is handled like Ctrl+C, so temporary files are removed before the process ends. A reader
that stops early (``dgseg models | head``) ends the command quietly with status 141 (128 +
SIGPIPE, what a shell reports for a killed writer).
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import signal
import sys
import threading
from collections.abc import Sequence

#: Exit status after the reader of stdout went away (128 + SIGPIPE).
EXIT_BROKEN_PIPE = 141


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every ``cmd_*`` module's subcommand."""
    parser = argparse.ArgumentParser(
        prog="dgseg",
        description="Domain-generalizing nuclei and vessel segmentation (napari-dgseg).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name.startswith("cmd_"))
    for name in names:
        module = importlib.import_module(f"{__name__}.{name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dgseg`` console script.

    Returns the exit status: 0 done, 2 user error (one line on stderr), 130 interrupted,
    :data:`EXIT_BROKEN_PIPE` when stdout was closed by its reader (silently).
    """
    from napari_dgseg.core.heap import bound_heap

    bound_heap()  # arrays reused instead of re-mapped: CPU inference about 2x faster (core/heap.py)
    try:
        try:
            status = _main(argv)
        except SystemExit:  # argparse's --help and usage errors: flush what they printed
            sys.stdout.flush()
            raise
        sys.stdout.flush()  # a closed pipe shows here at the latest, not at interpreter exit
        return status
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE


def _silence_stdout() -> None:
    """Point stdout at the null device, so Python's final flush cannot fail once more.

    The idiom of the Python documentation (signal module, "Note on SIGPIPE").
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout replaced or closed: nothing to flush
        pass


def _main(argv: Sequence[str] | None) -> int:
    from napari_dgseg.core.errors import DgsegError

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv  # the exact command, recorded in provenance (see _common.command_line)
    previous = _terminate_as_interrupt()
    try:
        return int(args.func(args) or 0)
    except DgsegError as exc:
        print(f"dgseg {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader of stdout went away: main() ends quietly
        raise
    except OSError as exc:
        from napari_dgseg.core.outputs import describe_os_error

        print(f"dgseg {args.command}: error: {describe_os_error(exc, verb=None)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dgseg {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _terminate_as_interrupt() -> object:
    """Turn SIGTERM into KeyboardInterrupt (clean-up runs); None outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        return signal.signal(signal.SIGTERM, _interrupt)
    except (ValueError, OSError):
        return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
