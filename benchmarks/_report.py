"""What every benchmark script does with its result: one JSON object on stdout, optionally kept.

Benchmarks run as scripts (``python benchmarks/NAME.py``), so this module is imported as
``_report`` from the scripts' own folder.
"""

from __future__ import annotations

import json
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
