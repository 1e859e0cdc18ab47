"""Start-up cost of the ``dgseg`` command line: wall time and heavy imports per command.

Runs each command ``--repeat`` times in a fresh interpreter (``python -m napari_dgseg.cli``, the
code the ``dgseg`` console script runs), stdout to the null device, and records the median and
minimum wall time, plus whether ``torch`` / ``napari`` were imported (``-X importtime``, first
run) and the cumulative import time of ``napari_dgseg.cli``. A bare ``python -c pass`` is timed
too, as the floor. Prints one JSON object; ``--out`` also writes it. Usage::

    python benchmarks/cli_startup.py [--repeat 5] [--out benchmarks/results/cli_startup.json]

Timings depend on the machine and its load (record them with the machine's description); the
import facts do not.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

COMMANDS: dict[str, list[str]] = {
    "python -c pass": ["-c", "pass"],
    "dgseg --help": ["-m", "napari_dgseg.cli", "--help"],
    "dgseg models": ["-m", "napari_dgseg.cli", "models"],
    "dgseg predict --help": ["-m", "napari_dgseg.cli", "predict", "--help"],
}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _imports(args: list[str]) -> dict[str, object]:
    """Heavy modules imported by one run, from ``-X importtime`` (stderr)."""
    res = subprocess.run(
        [sys.executable, "-X", "importtime", *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env(), check=False,
    )  # fmt: skip
    names: dict[str, int] = {}
    for line in res.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = (part.strip() for part in line.split("|", 2))
        if cumulative.isdigit():
            names[name.strip()] = int(cumulative)
    return {
        "imports_torch": "torch" in names,
        "imports_napari": "napari" in names,
        "cli_import_ms": round(names.get("napari_dgseg.cli", 0) / 1000.0, 1),
        "torch_import_ms": round(names.get("torch", 0) / 1000.0, 1),
    }


def _time(args: list[str], repeat: int) -> dict[str, float]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(), check=False,
        )  # fmt: skip
        times.append(time.perf_counter() - t0)
    return {"median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3)}


def main(argv: list[str] | None = None) -> dict:
    """Measure every command; print (and optionally write) the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per command (default 5)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    result = {
        "benchmark": "cli_startup",
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared: timings are indicative)",
        "repeat": args.repeat,
        "commands": {
            name: {**_time(cmd, args.repeat), **_imports(cmd)} for name, cmd in COMMANDS.items()
        },
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
