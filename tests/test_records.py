"""Every published figure has a record: result JSON that parses, tables that name their command.

Rules checked here (see ``result_tables_without_command`` for the table rule in code):

1. Every ``*.json`` under ``benchmarks/results/`` (recursively) loads with ``json.load``: one
   JSON document, no progress lines around it.
2. Every Markdown table in ``docs/*.md`` is a *result table* unless it is exempted. A table is a
   maximal run of consecutive lines that start with ``|`` (outside fenced code blocks) whose second
   line is a separator row (``|---|...``). It is exempted when the marker comment
   ``<!-- not-a-result -->`` is the last non-blank line above it (for option lists, file layouts,
   error messages: tables that report no measurement).
3. A result table needs, within ``WINDOW`` lines above its first line or below its last line, a
   line with ``Reproduce:`` followed by a command in backticks that names an existing script
   (``benchmarks/<name>.py`` or ``docs/make_<name>.py``, relative to the repository root) or is a
   ``dgseg`` command (``dgseg ...``, optionally after ``VAR=value`` settings).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- not-a-result -->"
WINDOW = 4
_SEPARATOR = re.compile(r"^\|\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")
_REPRODUCE = re.compile(r"Reproduce:\s*`([^`]+)`")
_SCRIPT = re.compile(r"(?:^|[\s/])((?:benchmarks/[\w-]+|docs/make_[\w-]+|scripts/mutation)\.py)\b")
_DGSEG = re.compile(r"^(?:[A-Z_][A-Z0-9_]*=\S+\s+)*dgseg\s+\S")


def find_tables(lines: list[str]) -> list[tuple[int, int]]:
    """``(first, last)`` 0-based line indices of the Markdown tables outside code fences."""
    tables, in_fence, i = [], False, 0
    while i < len(lines):
        if lines[i].lstrip().startswith("```"):
            in_fence = not in_fence
            i += 1
            continue
        if not in_fence and lines[i].startswith("|"):
            j = i
            while j + 1 < len(lines) and lines[j + 1].startswith("|"):
                j += 1
            if j > i and _SEPARATOR.match(lines[i + 1].strip()):
                tables.append((i, j))
            i = j + 1
            continue
        i += 1
    return tables


def command_is_valid(command: str, root: Path = ROOT) -> bool:
    """True if ``command`` names an existing benchmark/doc script or is a ``dgseg`` command."""
    if _DGSEG.match(command.strip()):
        return True
    return any((root / m.group(1)).is_file() for m in _SCRIPT.finditer(command))


def is_exempt(lines: list[str], first: int) -> bool:
    """The marker is the last non-blank line above the table."""
    k = first - 1
    while k >= 0 and not lines[k].strip():
        k -= 1
    return k >= 0 and lines[k].strip() == MARKER


def result_tables_without_command(text: str, root: Path = ROOT) -> list[int]:
    """1-based first lines of the result tables in ``text`` that lack a valid reproduce line."""
    lines = text.splitlines()
    missing = []
    for first, last in find_tables(lines):
        if is_exempt(lines, first):
            continue
        near = lines[max(0, first - WINDOW) : first] + lines[last + 1 : last + 1 + WINDOW]
        commands = [m.group(1) for line in near for m in _REPRODUCE.finditer(line)]
        if not any(command_is_valid(c, root) for c in commands):
            missing.append(first + 1)
    return missing


# ------------------------------------------------------------------------------ the checker


TABLE = "| a | b |\n|---|---|\n| 1 | 2 |\n"


def test_checker_flags_a_result_table_without_command():
    assert result_tables_without_command("Text.\n\n" + TABLE) == [3]


def test_checker_accepts_a_command_above_or_below():
    above = "Reproduce: `python benchmarks/metrics_speed.py --repeat 7`\n\n" + TABLE
    below = TABLE + "\nReproduce: `dgseg evaluate pred/ gt/`\n"
    env = TABLE + "Reproduce: `OMP_NUM_THREADS=1 dgseg train unet --source d --out m.dgseg`\n"
    make = "Reproduce: `xvfb-run -a python docs/make_screenshots.py`\n" + TABLE
    for text in (above, below, env, make):
        assert result_tables_without_command(text) == [], text


def test_checker_rejects_missing_scripts_far_commands_and_unmarked_text():
    missing = "Reproduce: `python benchmarks/no_such_benchmark.py`\n" + TABLE
    other = "Reproduce: `python scripts/anything.py`\n" + TABLE
    far = "Reproduce: `python benchmarks/metrics_speed.py`\n" + "\n" * WINDOW + TABLE
    bare = "`python benchmarks/metrics_speed.py`\n" + TABLE  # no "Reproduce:"
    for text in (missing, other, far, bare):
        assert result_tables_without_command(text) != [], text


def test_checker_exemption_marker_and_code_fences():
    assert result_tables_without_command(MARKER + "\n\n" + TABLE) == []
    # the marker must be right above: text in between voids it
    assert result_tables_without_command(MARKER + "\nA sentence.\n" + TABLE) == [3]
    assert result_tables_without_command("```\n" + TABLE + "```\n") == []
    # a lone line starting with "|" (no separator row) is not a table
    assert result_tables_without_command("| not a table\n") == []


def test_checker_counts_each_table():
    text = TABLE + "\n" + TABLE + "Reproduce: `python benchmarks/metrics_speed.py`\n"
    assert result_tables_without_command(text) == [1]


# ------------------------------------------------------------------------------ the records


RESULTS = sorted((ROOT / "benchmarks" / "results").rglob("*.json"))
DOCS = sorted((ROOT / "docs").glob("*.md"))


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_result_json_parses(path):
    with path.open(encoding="utf-8") as fh:
        json.load(fh)


def test_there_are_results_and_docs():
    assert RESULTS and DOCS


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_result_table_names_its_command(path):
    missing = result_tables_without_command(path.read_text(encoding="utf-8"))
    assert not missing, (
        f"{path.name}: result table(s) at line(s) {missing} have no 'Reproduce: `command`' line "
        f"within {WINDOW} lines (or mark a table that is not a result with {MARKER} above it)"
    )
