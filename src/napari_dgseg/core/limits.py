"""Limits on what is read from files other people made (see ``docs/security.md``).

Every reader of an untrusted file checks sizes *before* it allocates: bundle archives (member
count, declared and actual member sizes), JSON documents (bytes and nesting depth), model configs
(integer and sequence sizes) and images (the memory inference would need, against a budget).
A file beyond a limit is refused with one line naming the file and the fix.

The memory budget of inference is ``DGSEG_MEMORY_BUDGET`` (bytes, or a number with a ``K``,
``M``, ``G`` or ``T`` suffix; ``0`` or ``off`` disables the check) or else
:data:`MEMORY_FRACTION` of the memory the operating system reports as available.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from napari_dgseg.core.errors import InputError

#: Largest ``.dgseg`` file read at all (bytes on disk).
MAX_BUNDLE_FILE_BYTES = 2 << 30
#: Most members a bundle archive may hold (a real one has 2 to 6).
MAX_BUNDLE_MEMBERS = 64
#: Largest uncompressed size of one member (a paper-size HoVer-Net is about 150 MB).
MAX_MEMBER_BYTES = 1 << 30
#: Largest uncompressed size of all members together.
MAX_BUNDLE_TOTAL_BYTES = 2 << 30
#: Largest JSON document read (a bundle manifest is a few kB).
MAX_JSON_BYTES = 4 << 20
#: Deepest nesting of JSON arrays and objects (a manifest needs 4).
MAX_JSON_DEPTH = 64
#: Largest integer in a model config (widths, codebook sizes, channels).
MAX_CONFIG_INT = 65536
#: Longest list in a model config (e.g. the stage widths).
MAX_CONFIG_SEQUENCE = 32
#: Most parameters and buffers a model built from a bundle config may have (elements).
MAX_MODEL_ELEMENTS = 400_000_000
#: Share of the available memory that inference may plan to use.
MEMORY_FRACTION = 0.8
#: Environment variable overriding the inference memory budget.
MEMORY_BUDGET_ENV = "DGSEG_MEMORY_BUDGET"

_MEMBER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")
_UNSAFE_STEM = re.compile(r"[^A-Za-z0-9_.\-]+")


# ---------------------------------------------------------------------------- JSON
def json_depth(text: str) -> int:
    """Deepest nesting of arrays/objects in a JSON text, without parsing it (strings skipped)."""
    stripped = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)
    raw = np.frombuffer(stripped.encode("utf-8", "replace"), dtype=np.uint8)
    step = np.zeros(raw.shape, dtype=np.int32)
    step[(raw == ord("[")) | (raw == ord("{"))] = 1
    step[(raw == ord("]")) | (raw == ord("}"))] = -1
    return int(np.cumsum(step).max(initial=0))


def load_json_bounded(data: bytes, source: str, *, max_bytes: int = MAX_JSON_BYTES,
                      max_depth: int = MAX_JSON_DEPTH, error: type[Exception] = InputError) -> Any:
    """Parse a JSON document after checking its size and nesting depth.

    Parameters
    ----------
    data : bytes
        The document.
    source : str
        What to name in messages (e.g. ``"model.dgseg: bundle.json"``).
    max_bytes, max_depth : int
        Limits; beyond them ``error`` is raised before parsing.
    error : exception type
        The :class:`~napari_dgseg.core.errors.DgsegError` subclass to raise.
    """
    if len(data) > max_bytes:
        raise error(f"{source} is {len(data):,} bytes, more than the {max_bytes:,} allowed; "
                    "the file is not a real one or was damaged")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{source} is not valid JSON (not UTF-8 text: {exc.reason})") from None
    depth = json_depth(text)
    if depth > max_depth:
        raise error(f"{source} nests {depth} levels deep, more than the {max_depth} allowed; refused")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise error(f"{source} is not valid JSON ({first})") from None


# ---------------------------------------------------------------------------- names
def unsafe_member_reason(name: str) -> str | None:
    """Why an archive member name is unsafe (path parts, ``..``, drive letters), or None."""
    if "\\" in name or "/" in name:
        return "holds a path separator"
    if ".." in name:
        return "holds '..'"
    if ":" in name:
        return "holds a drive letter or ':'"
    if not _MEMBER_NAME.fullmatch(name):
        return "is not a plain file name (letters, digits, '_', '.', '-', at most 128)"
    return None


def safe_file_stem(name: str, fallback: str = "model") -> str:
    """``name`` made safe as a file name: no folders, no ``..``, only ``[A-Za-z0-9_.-]``.

    Other characters become ``_``; leading dots and dashes are dropped; at most 100 characters.
    """
    stem = _UNSAFE_STEM.sub("_", str(name)).replace("..", "_").lstrip(".-_")[:100]
    return stem or fallback


# ---------------------------------------------------------------------------- configs
def check_config_values(config: Mapping[str, Any], source: str,
                        error: type[Exception] = InputError) -> None:
    """Refuse config values beyond :data:`MAX_CONFIG_INT` / :data:`MAX_CONFIG_SEQUENCE`.

    Runs before a network is built, so that a config with absurd widths cannot allocate.
    """
    for key, value in config.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        if isinstance(value, (list, tuple)) and len(value) > MAX_CONFIG_SEQUENCE:
            raise error(f"{source}: config {key!r} has {len(value)} entries, more than the "
                        f"{MAX_CONFIG_SEQUENCE} allowed; the bundle was edited or is not genuine")
        for v in values:
            if isinstance(v, (list, tuple, dict)):
                raise error(f"{source}: config {key!r} holds a nested {type(v).__name__}; refused")
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if isinstance(v, float) and not math.isfinite(v):
                raise error(f"{source}: config {key!r} is {v}; expected a finite number")
            if abs(v) > MAX_CONFIG_INT and isinstance(v, int):
                raise error(f"{source}: config {key!r} is {v}, beyond the limit {MAX_CONFIG_INT}; "
                            "the bundle was edited or is not genuine")


# ---------------------------------------------------------------------------- memory
def _parse_bytes(text: str) -> int | None:
    text = text.strip().lower()
    if text in ("", "0", "off", "none", "inf"):
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?", text)
    if not m:
        raise InputError(f"{MEMORY_BUDGET_ENV}={text!r} is not a size; use e.g. 8G, 512M or 0 (off)")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2)]
    return int(float(m.group(1)) * scale)


def available_memory() -> int | None:
    """Bytes of memory the operating system reports as available now, or None if unknown."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # psutil missing or unsupported platform
        pass
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def memory_budget(budget: int | None = None) -> tuple[int | None, str]:
    """The inference memory budget in bytes and where it comes from (``None``: no check)."""
    if budget is not None:
        return (budget if budget > 0 else None), "the memory_budget argument"
    env = os.environ.get(MEMORY_BUDGET_ENV)
    if env is not None:
        return _parse_bytes(env), MEMORY_BUDGET_ENV
    avail = available_memory()
    if avail is None:
        return None, "unknown"
    return int(avail * MEMORY_FRACTION), f"{int(MEMORY_FRACTION * 100)}% of the available memory"


def human_bytes(n: float) -> str:
    """``n`` bytes as a short string (``1.5 GB``)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} TB"  # pragma: no cover


def check_memory(needed: int, what: str, *, budget: int | None = None,
                 hint: str = "segment a region of it (crop, or a shapes layer in napari) or use a "
                             "lower-resolution level") -> None:
    """Refuse work needing more than the memory budget, with one line saying what to do.

    Parameters
    ----------
    needed : int
        Estimated bytes.
    what : str
        The work, e.g. ``"segmenting a 100000 x 100000 image"``.
    hint : str
        What the user can do instead (the start of the advice).
    budget : int, optional
        Bytes allowed; default :func:`memory_budget` (``DGSEG_MEMORY_BUDGET`` or a share of the
        available memory). ``0`` disables the check.
    """
    limit, origin = memory_budget(budget)
    if limit is None or needed <= limit:
        return
    raise InputError(
        f"{what} needs about {human_bytes(needed)} of memory but the budget is "
        f"{human_bytes(limit)} ({origin}); {hint}, or use a machine with more memory "
        f"(set {MEMORY_BUDGET_ENV}, e.g. 64G, to change the budget)"
    )
