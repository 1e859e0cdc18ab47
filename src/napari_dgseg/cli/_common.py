"""Helpers shared by subcommands."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
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
