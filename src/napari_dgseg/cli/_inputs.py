"""Inputs and outputs shared by ``dgseg predict`` and ``dgseg codebook``.

Lives below both command modules so that neither imports the other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from napari_dgseg.cli._common import print_json
from napari_dgseg.core.errors import InputError

__all__ = ["expand_inputs", "output_stem", "write_codebook"]


def output_stem(path: Path) -> str:
    """File stem without image suffixes (``a.ome.tif`` -> ``a``, ``b.zarr`` -> ``b``)."""
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", ".ome.zarr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem if path.suffix else name


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files as given; folders expanded to the supported images inside (sorted, not recursive)."""
    from napari_dgseg.core.slide import is_zarr_dir, supported_suffix  # lazy: --help stays fast

    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if not p.exists():
            raise InputError(f"input {p} does not exist")
        if p.is_dir() and not is_zarr_dir(p):
            found = sorted(c for c in p.iterdir() if supported_suffix(c) or is_zarr_dir(c))
            if not found:
                raise InputError(f"folder {p} holds no supported images (.tif, .svs, .png, .jpg, .zarr)")
            paths.extend(found)
        else:
            paths.append(p)
    return paths


def write_codebook(
    path: Path, prediction: Any, provenance: dict, *, overwrite: bool = False,
    placement: Any = None,
) -> Path:
    """Write ``prediction.codebook_indices`` as a TIFF with provenance (atomic; the smallest
    integer type holding the indices; ``placement`` as in
    :func:`~napari_dgseg.core.labels_io.write_labels`; an existing file is kept unless
    ``overwrite``)."""
    from napari_dgseg.core.labels_io import write_labels

    if prediction.codebook_indices is None:
        raise InputError("this model returns no codebook indices; use a model with a codebook")
    return write_labels(
        path,
        prediction.codebook_indices,
        {**provenance, "content": "codebook indices"},
        overwrite=overwrite,
        placement=placement,
    )


def report_batch(
    summary: dict[str, Any],
    jobs: list[tuple[Path, str]],
    failed: list[dict],
    skipped: list[str] | None = None,
) -> int:
    """Print a batch command's JSON summary and return its exit status.

    ``summary`` holds the command's own keys (model, ``outputs``, ...); this adds ``failed``, and
    where there are any, ``skipped`` (inputs not tried after a system refusal) and ``renamed``
    (inputs whose output stem differs from their own, after a name collision). The status is 1
    when any input failed, else 0.
    """
    summary["failed"] = failed
    if skipped:
        summary["skipped"] = skipped
    renamed = {str(p): s for p, s in jobs if s != output_stem(p)}
    if renamed:
        summary["renamed"] = renamed
    print_json(summary)
    return 1 if failed else 0
