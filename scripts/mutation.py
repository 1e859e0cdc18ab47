"""Mutation testing of the numerical core with mutmut, one module at a time.

How to use (from the repository root, with the project venv)::

    # one or more modules (keys of scripts/mutation_modules.toml), tests from the working tree
    .venv/bin/python scripts/mutation.py tiling metrics --label after

    # the "before" scores: same source (working tree), tests taken from an older commit
    .venv/bin/python scripts/mutation.py tiling --tests-from 86736be --label before

    # every module, then only regenerate the table in docs/testing.md
    .venv/bin/python scripts/mutation.py --all --label after
    .venv/bin/python scripts/mutation.py --table-only

    # list the modules and their test files
    .venv/bin/python scripts/mutation.py --list

If mutmut stops with "failed to collect stats", a selected test fails WITHOUT any mutant (for
example a test of an old commit against today's source): run that test file by hand in the copy
named in the message, and leave the failing test out with ``--deselect NODEID`` (recorded in the
JSON).

When you add tests for a core module: add the test file to that module's entry in
``scripts/mutation_modules.toml``, run ``scripts/mutation.py <module> --label after``, read the
surviving mutants in ``benchmarks/results/mutation/<module>_after.json`` (each with its diff),
and either kill them with a test or, if a survivor is equivalent to the original code, add it to
``scripts/mutation_accepted.toml`` with a one-line reason. Then commit the JSON, the TOML and
``docs/testing.md`` (the script regenerates its table).

What it does, per module:

1. Builds a throw-away copy in ``/tmp/dgseg-mutation/<label>/<module>-XXXX/`` (never mutates
   the checkout; kept afterwards for ``mutmut browse``; delete it when done): ``src/`` and
   ``pyproject.toml`` from the working tree, ``tests/`` from the working tree or, with
   ``--tests-from COMMIT``, from that commit (``git archive``). The mutated source is therefore
   always the same; only the tests differ between "before" and "after".
2. Appends a ``[tool.mutmut]`` table to the copy's pyproject: mutate only this module, run only
   its test files, ``-m "not slow and not gui"``, and ``process_isolation = "forkserver"``
   (mutant workers forked from a fresh process that has not run torch; forking the process
   that already ran the torch tests left workers hanging until they timed out).
3. Runs ``mutmut run`` with ``PYTHONPATH=<copy>/mutants/src`` (the editable install of the
   checkout would otherwise shadow the mutated copy; the folder is created before the
   interpreter starts so that Python does not cache it as missing) and one BLAS/OpenMP thread.
4. Reads mutmut's per-mutant exit codes, writes
   ``benchmarks/results/mutation/<module>_<label>.json`` (counts, score, runtime, and every
   mutant that was not killed with its diff) and regenerates the table in docs/testing.md.

Score = killed / (total - accepted), where "accepted" counts this module's mutants listed in
``scripts/mutation_accepted.toml``. Timeouts, "no tests" (no selected test reaches the
mutated function) and suspicious mutants count as not killed.

Progress goes to stderr; stdout carries only the JSON of each finished module (one per line).
Runtime: about 2-3 s per mutant on 2 busy cores, i.e. 5-15 minutes per module.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import datetime, timezone
from io import BytesIO
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
MODULES_TOML = ROOT / "scripts" / "mutation_modules.toml"
ACCEPTED_TOML = ROOT / "scripts" / "mutation_accepted.toml"
RESULTS = ROOT / "benchmarks" / "results" / "mutation"
DOC = ROOT / "docs" / "testing.md"
WORK = Path(os.environ.get("DGSEG_MUTATION_WORK", "/tmp/dgseg-mutation"))
TABLE_START = "<!-- mutation-table:start -->"
TABLE_END = "<!-- mutation-table:end -->"
ACCEPTED_START = "<!-- mutation-accepted:start -->"
ACCEPTED_END = "<!-- mutation-accepted:end -->"

# mutmut 3.8.1 exit codes -> status (mutmut.stats.status_by_exit_code); unknown -> suspicious.
STATUS_BY_EXIT = {
    1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped",
    35: "suspicious", 36: "timeout", 37: "caught by type check", -24: "timeout", 24: "timeout",
    152: "timeout", 255: "timeout", -11: "segfault", -9: "segfault", 2: "interrupted",
    None: "not checked",
}


def log(msg: str) -> None:
    """Print one progress line on stderr (stdout is reserved for JSON)."""
    print(f"[mutation {datetime.now(timezone.utc):%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def load_modules() -> dict[str, dict]:
    """Read the module -> source/test-files map from ``scripts/mutation_modules.toml``."""
    return tomllib.loads(MODULES_TOML.read_text())["modules"]


def load_settings() -> dict:
    """Settings shared by all modules (``[settings]`` in ``scripts/mutation_modules.toml``)."""
    return tomllib.loads(MODULES_TOML.read_text()).get("settings", {})


def load_accepted() -> dict[str, str]:
    """Read accepted (equivalent) mutants: mutant name -> one-line reason."""
    if not ACCEPTED_TOML.exists():
        return {}
    return dict(tomllib.loads(ACCEPTED_TOML.read_text()).get("accepted", {}))


def git(*args: str) -> bytes:
    """Run git in the repository root and return its stdout."""
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True).stdout


def make_copy(key: str, entry: dict, tests_from: str | None, label: str,
              extra_deselect: list[str] | None = None) -> tuple[Path, list[str]]:
    """Build the throw-away copy for one module and return it with the test files used."""
    # A fresh folder per run: several people may run the same module at the same time.
    (WORK / label).mkdir(parents=True, exist_ok=True)
    dest = Path(tempfile.mkdtemp(prefix=f"{key}-", dir=WORK / label))
    shutil.copytree(ROOT / "src", dest / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    if tests_from:
        data = git("archive", "--format=tar", tests_from, "tests")
        with tarfile.open(fileobj=BytesIO(data)) as tar:
            tar.extractall(dest, filter="data")
    else:
        shutil.copytree(ROOT / "tests", dest / "tests",
                        ignore=shutil.ignore_patterns("__pycache__"))
    tests = [t for t in entry["tests"] if (dest / t).exists()]
    for t in entry["tests"]:
        if t not in tests:
            log(f"{key}: {t} does not exist in this test tree; skipped")
    if not tests:
        log(f"{key}: none of its test files exist in this test tree; every mutant counts as "
            "'no tests' (mutmut is run with an empty selection only to generate the mutants)")
    deselect = deselected(entry, extra_deselect)
    extra = "".join(f', "--deselect", "{d}"' for d in deselect)
    cfg = (ROOT / "pyproject.toml").read_text()
    cfg += (
        "\n[tool.mutmut]\n"
        'source_paths = ["src"]\n'
        f'only_mutate = ["{entry["source"]}"]\n'
        'pytest_add_cli_args = ["-q", "-p", "no:cacheprovider", "-m", "not slow and not gui", '
        f'"-p", "{ORDER_PLUGIN}"'
        f"{extra}]\n"
        f"pytest_add_cli_args_test_selection = {json.dumps(tests or ['tests/conftest.py'])}\n"
        'process_isolation = "forkserver"\n'
        "timeout_constant = 2.0\n"
    )
    (dest / "pyproject.toml").write_text(cfg)
    (dest / "src" / f"{ORDER_PLUGIN}.py").write_text(_ORDER_PLUGIN_SOURCE)
    # Exists before the interpreter starts, so sys.path keeps it (see module docstring).
    (dest / "mutants" / "src").mkdir(parents=True)
    return dest, tests


# A pytest plugin written into the copy only: run a mutant's tests fastest first (durations from
# mutmut's clean run), so that with pytest -x a mutant a quick test kills does not first pay for
# a slow one. Outcomes do not change, only the time to reach them.
ORDER_PLUGIN = "_dgseg_mutation_order"
_ORDER_PLUGIN_SOURCE = '''"""Order tests by their duration in mutmut's clean run (written by scripts/mutation.py)."""
import json
from pathlib import Path


def pytest_collection_modifyitems(session, config, items):
    for stats in (Path.cwd() / "mutmut-stats.json", Path.cwd() / "mutants" / "mutmut-stats.json"):
        if stats.exists():
            try:
                dur = json.loads(stats.read_text()).get("duration_by_test", {})
            except ValueError:
                return
            items.sort(key=lambda item: dur.get(item.nodeid, 0.0))
            return
'''


def deselected(entry: dict, extra: list[str] | None = None) -> list[str]:
    """Node ids left out of a module's run: shared list, the module's own, then this run's."""
    return (list(load_settings().get("deselect", [])) + list(entry.get("deselect", []))
            + list(extra or []))


def mutmut_env(copy: Path) -> dict[str, str]:
    """Environment for mutmut: mutated copy first on sys.path, one compute thread."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(copy / "mutants" / "src")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = "1"
    env["QT_QPA_PLATFORM"] = "offscreen"
    # Third-party pytest plugins (napari's, pytest-qt) cost seconds of fixture set-up in every
    # mutant worker; the core tests need none of them.
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    return env


def mutmut_bin() -> str:
    """The mutmut executable next to the running interpreter."""
    cand = Path(sys.executable).with_name("mutmut")
    if cand.exists():
        return str(cand)
    found = shutil.which("mutmut")
    if not found:
        raise SystemExit("mutmut is not installed; run: pip install -e '.[dev]'")
    return found


_DIFF_HELPER = """
import json, sys
from mutmut.mutation.diff_apply import get_diff_for_mutant
out = {}
for name in json.load(sys.stdin):
    try:
        out[name] = get_diff_for_mutant(name)
    except Exception as exc:  # keep the other diffs
        out[name] = f"(diff unavailable: {exc})"
print(json.dumps(out))
"""


def read_results(copy: Path, source: str) -> dict[str, str]:
    """Mutant name -> status, read from mutmut's ``.meta`` file of the mutated module."""
    meta = copy / "mutants" / (source + ".meta")
    if not meta.exists():
        return {}
    codes = json.loads(meta.read_text()).get("exit_code_by_key", {})
    return {name: STATUS_BY_EXIT.get(code, "suspicious") for name, code in codes.items()}


def imported_from(copy: Path, source: str) -> str:
    """The file Python imports for ``source``'s module with the mutation environment."""
    proc = subprocess.run([sys.executable, "-c", f"import {_dotted(source)} as m; print(m.__file__)"],
                          cwd=copy, env=mutmut_env(copy), capture_output=True, text=True)
    return proc.stdout.strip() or proc.stderr.strip()[-300:]


def slowest_tests(copy: Path, n: int = 5) -> dict[str, float]:
    """The ``n`` slowest selected tests in mutmut's clean run (seconds): what each mutant pays."""
    stats = copy / "mutants" / "mutmut-stats.json"
    if not stats.exists():
        return {}
    dur = json.loads(stats.read_text()).get("duration_by_test", {})
    return {k: round(v, 2) for k, v in sorted(dur.items(), key=lambda kv: -kv[1])[:n]}


def diffs(copy: Path, names: list[str]) -> dict[str, str]:
    """Diffs of the given mutants, computed by mutmut inside the copy."""
    if not names:
        return {}
    proc = subprocess.run([sys.executable, "-c", _DIFF_HELPER], cwd=copy, env=mutmut_env(copy),
                          input=json.dumps(names), capture_output=True, text=True)
    if proc.returncode != 0:
        log(f"could not compute diffs: {proc.stderr.strip().splitlines()[-1:]}")
        return {}
    return json.loads(proc.stdout)


def run_module(key: str, entry: dict, tests_from: str | None, label: str,
               max_children: int, extra_deselect: list[str] | None = None) -> dict:
    """Run mutmut on one module and write its JSON result; return the result."""
    copy, tests = make_copy(key, entry, tests_from, label, extra_deselect)
    log(f"{key}: mutating {entry['source']} with {', '.join(tests)} in {copy}")
    t0 = time.perf_counter()
    with open(copy / "mutmut.log", "w") as fh:
        # Own process group: if this script is stopped, mutmut's fork server and its workers go
        # with it instead of running on, orphaned.
        proc = subprocess.Popen([mutmut_bin(), "run", "--max-children", str(max_children)],
                                cwd=copy, env=mutmut_env(copy), stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
    runtime = time.perf_counter() - t0
    status = read_results(copy, entry["source"])
    log_text = (copy / "mutmut.log").read_text(errors="replace")
    if not tests:
        status = {name: "no tests" for name in status}
    elif "could not find any test case for any mutant" in log_text:
        # Either no selected test reaches this module (a real result: every mutant "no tests"),
        # or the checkout's editable install shadowed the mutated copy (a broken run).
        imported = imported_from(copy, entry["source"])
        if not imported.startswith(str(copy / "mutants" / "src")):
            raise SystemExit(f"{key}: the tests imported {imported}, not the mutated copy; "
                             "check PYTHONPATH and the editable install")
        log(f"{key}: no selected test reaches {entry['source']}; every mutant counts as 'no tests'")
        status = {name: "no tests" for name in status}
    if not status or all(s == "not checked" for s in status.values()):
        tail = (copy / "mutmut.log").read_text(errors="replace").replace("\r", "\n")
        tail = "\n".join(line for line in tail.splitlines()[-15:] if line.strip())
        hint = ("\na selected test fails without any mutant: find it with pytest in the copy and "
                "leave it out with --deselect NODEID") if "failed to collect stats" in tail else ""
        raise SystemExit(f"{key}: mutmut produced no results (exit {proc.returncode}); "
                         f"see {copy}/mutmut.log:\n{tail}{hint}")
    counts: dict[str, int] = {}
    for s in status.values():
        counts[s] = counts.get(s, 0) + 1
    accepted_all = load_accepted()
    not_killed = sorted((n for n, s in status.items() if s != "killed"), key=_natural)
    diff_by_name = diffs(copy, not_killed)
    accepted = sorted(n for n in status if n in accepted_all)
    total = len(status)
    killed = counts.get("killed", 0)
    denom = total - len(accepted)
    result = {
        "module": key,
        "source": entry["source"],
        "label": label,
        "tests": tests,
        "deselected": deselected(entry, extra_deselect),
        "tests_from": tests_from or "working tree",
        "source_commit": git("rev-parse", "--short", "HEAD").decode().strip(),
        "source_sha1": git("hash-object", entry["source"]).decode().strip(),
        "tool": "mutmut 3.8.1",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "runtime_s": round(runtime, 1),
        "max_children": max_children,
        "total": total,
        "killed": killed,
        "survived": counts.get("survived", 0),
        "timeout": counts.get("timeout", 0),
        "no_tests": counts.get("no tests", 0),
        "suspicious": counts.get("suspicious", 0) + counts.get("segfault", 0),
        "not_checked": counts.get("not checked", 0) + counts.get("interrupted", 0),
        "slowest_tests_s": slowest_tests(copy),
        "accepted": accepted,
        "score": round(killed / denom, 4) if denom else None,
        "score_definition": "killed / (total - accepted)",
        "not_killed": [
            {"mutant": n, "status": status[n], "accepted": accepted_all.get(n),
             "diff": diff_by_name.get(n, "")}
            for n in not_killed
        ],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{key}_{label}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    log(f"{key}: {killed}/{total} killed, score {result['score']}, "
        f"{result['survived']} survived, {result['timeout']} timeout, "
        f"{result['no_tests']} no tests, {runtime:.0f} s -> {out.relative_to(ROOT)}")
    return result


def _natural(name: str) -> tuple[str, int]:
    """Sort key: function name, then mutant number as an integer."""
    base, _, num = name.rpartition("__mutmut_")
    return (base, int(num) if num.isdigit() else 0)


def _mins(res: dict | None) -> str:
    """Run time of a result in minutes (one decimal), or a dash."""
    return "–" if res is None else f"{res['runtime_s'] / 60:.1f} min"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f} %"


def render_table(modules: dict[str, dict]) -> tuple[str, str]:
    """Markdown of the per-module table and of the accepted-survivor list, from all JSONs."""
    accepted_all = load_accepted()
    rows = ["| module | mutants | killed before | score before | killed after | score after "
            "| survivors accepted | run time before / after |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    changed = False
    for key in modules:
        res = {lab: json.loads(p.read_text()) for lab in ("before", "after")
               if (p := RESULTS / f"{key}_{lab}.json").exists()}
        if not res:
            continue
        total = max(r["total"] for r in res.values())
        names = set()
        for r in res.values():
            names |= {m["mutant"] for m in r["not_killed"]}
        n_acc = sum(1 for n in accepted_all if n.startswith(_dotted(modules[key]["source"]) + "."))

        def cells(lab: str, res=res, total=total, n_acc=n_acc) -> tuple[str, str]:
            r = res.get(lab)
            if r is None:
                return "–", "–"
            denom = r["total"] - n_acc
            return str(r["killed"]), _pct(r["killed"] / denom if denom else None)

        kb, sb = cells("before")
        ka, sa = cells("after")
        shas = {r.get("source_sha1") for r in res.values()}
        mark = " †" if len(shas) > 1 else ""
        changed = changed or bool(mark)
        rows.append(f"| `{modules[key]['source'].removeprefix('src/napari_dgseg/')}`{mark} | {total} "
                    f"| {kb} | {sb} | {ka} | {sa} | {n_acc} | {_mins(res.get('before'))} / "
                    f"{_mins(res.get('after'))} |")
    acc = [f"- `{n}`: {reason}" for n, reason in sorted(accepted_all.items(), key=lambda kv:
                                                        _natural(kv[0]))]
    if changed:
        rows += ["", "† The source file changed between the before and the after run (different "
                 "`source_sha1`), so the two runs mutated different code; rerun the older one."]
    rows += ["", "Reproduce: `python scripts/mutation.py --all --label after` (\"before\": add "
             "`--tests-from 86736be --label before`)"]
    return "\n".join(rows), "\n".join(acc) if acc else "_None yet._"


def _dotted(source: str) -> str:
    """``src/napari_dgseg/core/tiling.py`` -> ``napari_dgseg.core.tiling``."""
    return source.removeprefix("src/").removesuffix(".py").replace("/", ".")


def update_doc(modules: dict[str, dict]) -> None:
    """Replace the generated blocks of docs/testing.md (left alone if the markers are absent)."""
    if not DOC.exists():
        log(f"{DOC.relative_to(ROOT)} does not exist; table not written")
        return
    text = DOC.read_text()
    table, acc = render_table(modules)
    for start, end, body in ((TABLE_START, TABLE_END, table), (ACCEPTED_START, ACCEPTED_END, acc)):
        if start in text and end in text:
            head, rest = text.split(start, 1)
            _, tail = rest.split(end, 1)
            text = f"{head}{start}\n{body}\n{end}{tail}"
        else:
            log(f"markers {start} ... {end} not found in docs/testing.md; block not written")
    DOC.write_text(text)
    log("docs/testing.md table regenerated")


def _stop(signum: int, frame: object) -> None:
    """Turn SIGTERM into an exception so the mutmut process group is cleaned up."""
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    signal.signal(signal.SIGTERM, _stop)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("modules", nargs="*", help="keys of scripts/mutation_modules.toml")
    ap.add_argument("--all", action="store_true", help="run every module in the map")
    ap.add_argument("--tests-from", metavar="COMMIT",
                    help="take tests/ from this git commit instead of the working tree")
    ap.add_argument("--label", default="after", choices=["before", "after"],
                    help="result label (file <module>_<label>.json); default: after")
    ap.add_argument("--max-children", type=int, default=2,
                    help="parallel mutant workers (default 2)")
    ap.add_argument("--deselect", action="append", metavar="NODEID",
                    help="leave this test out of this run too (repeatable; recorded in the JSON), "
                         "e.g. a test of an old commit that fails on the current source")
    ap.add_argument("--table-only", action="store_true",
                    help="only regenerate the table in docs/testing.md from the JSON files")
    ap.add_argument("--list", action="store_true", help="list modules and their test files")
    args = ap.parse_args(argv)
    modules = load_modules()
    if args.list:
        for key, entry in modules.items():
            print(f"{key:22s} {entry['source']}  <-  {' '.join(entry['tests'])}")
        return 0
    if args.table_only:
        update_doc(modules)
        return 0
    keys = list(modules) if args.all else args.modules
    if not keys:
        ap.error("name at least one module (see --list) or use --all / --table-only")
    unknown = [k for k in keys if k not in modules]
    if unknown:
        ap.error(f"unknown module(s) {', '.join(unknown)}; known: {', '.join(modules)}")
    if args.tests_from:
        try:
            git("rev-parse", "--verify", args.tests_from + "^{commit}")
        except subprocess.CalledProcessError:
            ap.error(f"--tests-from {args.tests_from}: not a commit of this repository")
    failed = []
    for key in keys:
        try:
            res = run_module(key, modules[key], args.tests_from, args.label, args.max_children,
                             args.deselect)
        except SystemExit as exc:
            log(str(exc))
            failed.append(key)
            continue
        print(json.dumps({k: v for k, v in res.items() if k != "not_killed"}), flush=True)
        update_doc(modules)
    if failed:
        log(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
