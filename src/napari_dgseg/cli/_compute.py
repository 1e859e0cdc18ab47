"""Where a batch command computes: precision, CPU threads, and in-process or on a dask cluster.

``--workers N`` starts a local cluster of N worker processes on 127.0.0.1; ``--scheduler ADDRESS``
uses an existing one (:mod:`napari_dgseg.core.distributed`). Each input is one task that writes
exactly the files the in-process run writes; the JSON summary is the same, rows in input order.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def add_compute_args(p: argparse.ArgumentParser) -> None:
    """``--precision``, ``--threads``, ``--workers``, ``--scheduler``."""
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="network precision: fp32 (default), bf16 (CUDA, or CPU autocast) or fp16 "
                        "(CUDA only); accuracy against fp32 in docs/distributed.md")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads torch uses (per worker with --workers/--scheduler)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, default=None, metavar="N",
                       help="segment the inputs on a local dask cluster of N worker processes "
                            "(bound to 127.0.0.1); needs the 'distributed' extra")
    where.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="segment the inputs on an existing dask cluster (tls://HOST:PORT with "
                            "certificates from the dask config, or tcp://HOST:PORT); inputs and "
                            "--out must be visible to its workers at the same paths")


def check_compute_args(args: argparse.Namespace) -> None:
    """Refuse bad values in one line before any work; set this process's torch threads."""
    from napari_dgseg.core.device import select_device
    from napari_dgseg.core.precision import check_precision, set_threads

    check_precision(args.precision, select_device(args.device))
    set_threads(args.threads)
    if args.workers is not None and args.workers < 1:
        from napari_dgseg.core.errors import InputError

        raise InputError(f"--workers {args.workers} must be >= 1")
    if args.workers is not None or args.scheduler is not None:
        from napari_dgseg.core.distributed import parse_address, require_distributed

        require_distributed()
        if args.scheduler is not None:
            parse_address(args.scheduler)


def refuse_for_streaming(args: argparse.Namespace) -> None:
    """One line when ``--out X.zarr`` (one slide streamed in this process) meets flags it ignores.

    The streaming engine runs its blocks in this process at fp32; the Python API runs them on a
    cluster (:class:`napari_dgseg.core.distributed.DaskBlockExecutor`, docs/distributed.md).
    """
    from napari_dgseg.core.errors import InputError

    if on_cluster(args):
        raise InputError(
            f"--out {args.out} streams one slide in this process; --workers/--scheduler spread "
            "many files (give a folder as --out) - for one slide on a cluster use "
            "DaskBlockExecutor from Python (docs/distributed.md)"
        )
    if args.precision != "fp32":
        raise InputError(f"--out {args.out} streams the slide at fp32; --precision "
                         f"{args.precision} applies to images segmented in memory (give a "
                         "folder as --out)")


def on_cluster(args: argparse.Namespace) -> bool:
    """True when ``--workers`` or ``--scheduler`` was given."""
    return getattr(args, "workers", None) is not None or getattr(args, "scheduler", None) is not None


def run_jobs(
    command: str,
    args: argparse.Namespace,
    bundle: Any,
    out: Path,
    jobs: Sequence[tuple[Path, str]],
    fn: Callable[..., dict],
    label: Callable[[Any], str] = str,
) -> tuple[list[dict], list[dict], list[str]]:
    """Run ``fn(bundle, args, out, path, stem)`` for every ``(path, stem)`` job.

    In process this is :func:`napari_dgseg.cli._common.run_batch`; on a cluster each job is one
    task (absolute paths; the rows are given back the paths as the user wrote them) and failures
    are reported the same way: one line each on stderr, ``failed`` and ``skipped`` lists.

    Returns
    -------
    rows, failed, skipped
    """
    from napari_dgseg.cli._common import FATAL_ERRNOS, one_line, run_batch

    if not on_cluster(args):
        return run_batch(command, jobs, lambda job: fn(bundle, args, out, *job), label=label)

    from napari_dgseg.cli._progress import ProgressBar
    from napari_dgseg.core.distributed import cluster_client, map_with_bundle

    worker_args = copy.copy(args)
    worker_args.quiet = True  # a worker has no terminal; the client shows one bar for the batch
    out_abs = out.resolve()
    items = [(worker_args, out_abs, Path(path).resolve(), stem) for path, stem in jobs]

    def fatal(exc: BaseException) -> bool:
        return isinstance(exc, OSError) and exc.errno in FATAL_ERRNOS

    with cluster_client(workers=args.workers, scheduler=args.scheduler) as client:
        where = f"{args.workers} workers" if args.workers is not None else args.scheduler
        bar = None if args.quiet else ProgressBar(f"{command} on {where}")
        outcomes = map_with_bundle(client, bundle, fn, items, threads=args.threads,
                                   progress=bar, stop_on=fatal)
    rows: list[dict] = []
    failed: list[dict] = []
    skipped: list[str] = []
    for job, outcome in zip(jobs, outcomes, strict=True):
        if outcome.status == "done":
            row = _given_paths(outcome.value, str(out_abs), str(out))
            if isinstance(row, dict) and "input" in row:
                row["input"] = str(job[0])
            rows.append(row)
        elif outcome.status == "error":
            message = one_line(outcome.value)
            print(f"dgseg {command}: error: {label(job)}: {message}", file=sys.stderr)
            failed.append({"input": label(job), "error": message})
        else:
            skipped.append(label(job))
    return rows, failed, skipped


def _given_paths(row: Any, out_abs: str, out: str) -> Any:
    """A worker's row with the output folder as the user wrote it."""
    if isinstance(row, dict):
        return {k: _given_paths(v, out_abs, out) for k, v in row.items()}
    if isinstance(row, list):
        return [_given_paths(v, out_abs, out) for v in row]
    if isinstance(row, str) and out_abs != out and row.startswith(out_abs + os.sep):
        return out + row[len(out_abs):]
    return row


def tta_arg(args: Any) -> bool | None:
    """``--tta``: None (the model's recorded default), True (``on``) or False (``off``)."""
    from napari_dgseg.core.inference import TTA_MODES

    return TTA_MODES[getattr(args, "tta", "auto")]
