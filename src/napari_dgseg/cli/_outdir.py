"""Output folders of CLI runs: created on demand, removed again when a failed run left them empty.

A run that fails before writing anything must not leave an empty folder behind (the user would
take it for a run that produced nothing). :func:`output_dir` creates the folder and any missing
parents, and when the run ends (an exception, or a batch in which every input failed) removes the
ones it created that are still empty, deepest first;
folders that existed before, or that hold anything, are never touched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

__all__ = ["output_dir"]


@contextlib.contextmanager
def output_dir(path: str | Path) -> Iterator[Path]:
    """Create ``path`` (with parents) for the run inside the ``with`` block.

    Parameters
    ----------
    path : str or Path
        The output folder.

    Yields
    ------
    Path
        The folder, existing.

    Notes
    -----
    When the block ends (normally or by an exception, which then propagates unchanged), the
    folders this call created and that are still empty are removed.
    """
    out = Path(path)
    created: list[Path] = []
    probe = out
    while not probe.exists() and probe != probe.parent:
        created.append(probe)
        probe = probe.parent
    if not out.exists():  # a file there is for the caller to refuse with its own message
        out.mkdir(parents=True, exist_ok=True)
    try:
        yield out
    finally:  # a run that wrote nothing (failed, or every input of a batch failed)
        for folder in created:  # deepest first
            try:
                folder.rmdir()  # only succeeds when empty
            except OSError:
                break
