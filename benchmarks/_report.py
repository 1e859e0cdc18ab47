"""What every benchmark script does with its result: one JSON object on stdout, optionally kept.

Benchmarks run as scripts (``python benchmarks/NAME.py``), so this module is imported as
``_report`` from the scripts' own folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def emit(result: dict[str, Any], out: str | Path | None = None) -> None:
    """Print ``result`` as indented JSON on stdout and, with ``out``, write the same text there.

    Progress and notes belong on stderr, so that stdout parses as one JSON object.
    """
    text = json.dumps(result, indent=2)
    if out:
        Path(out).write_text(text + "\n", encoding="utf-8")
    print(text)


def load_average() -> list[float]:
    """The machine's 1, 5 and 15 minute load averages, rounded (timings depend on them)."""
    return [round(v, 2) for v in os.getloadavg()]


def machine_state(load_before: list[float]) -> dict[str, Any]:
    """CPU count and load averages before and after a run, kept beside every timing."""
    return {
        "cpu_count": os.cpu_count(),
        "loadavg_1_5_15_before": load_before,
        "loadavg_1_5_15_after": load_average(),
    }
