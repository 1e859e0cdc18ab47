"""The allocator setting of long CPU runs (``napari_dgseg.core.heap``).

Large arrays must come from the heap by default (so that they are reused when the same size is
allocated again, as every tile and block does) and be mapped on their own under
``DGSEG_LEAN_HEAP=1`` (returned to the system at once). glibc's own accounting tells which
(``mallinfo2``: bytes in mapped regions). Measured in fresh processes: the setting is
process-wide.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from napari_dgseg.core.heap import HEAP_THRESHOLD, LEAN_THRESHOLD, heap_threshold

PROBE = """
import ctypes, json
import numpy as np
from napari_dgseg.core.heap import _libc, bound_heap

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                               "usmblks", "fsmblks", "uordblks", "fordblks",
                                               "keepcost")]

import sys, threading
libc = _libc()
in_thread = sys.argv[1] == "thread"
ok = bound_heap(share_arena=in_thread) and hasattr(libc, "mallinfo2")
mapped = []

def allocate():
    before = libc.mallinfo2().hblkhd
    a = np.ones(64 << 17)  # 64 MB of float64
    mapped.append(libc.mallinfo2().hblkhd - before)  # bytes of it in a region of its own

if ok:
    libc.mallinfo2.restype = Info
    worker = threading.Thread(target=allocate) if in_thread else None
    worker.start() if worker else allocate()
    worker.join() if worker else None
print(json.dumps({"set": bool(ok), "mapped": mapped[0] if mapped else None}))
"""


def _probe(lean: bool, where: str = "main") -> dict:
    env = {k: v for k, v in os.environ.items() if k != "DGSEG_LEAN_HEAP"}
    if lean:
        env["DGSEG_LEAN_HEAP"] = "1"
    out = subprocess.run([sys.executable, "-c", PROBE, where], env=env, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_threshold_follows_the_environment(monkeypatch):
    monkeypatch.delenv("DGSEG_LEAN_HEAP", raising=False)
    assert heap_threshold() == HEAP_THRESHOLD
    monkeypatch.setenv("DGSEG_LEAN_HEAP", "1")
    assert heap_threshold() == LEAN_THRESHOLD


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator only")
def test_large_arrays_are_reused_by_default_and_remapped_when_lean():
    default, lean = _probe(lean=False), _probe(lean=True)
    if not (default["set"] and lean["set"]):
        pytest.skip("not glibc >= 2.33: mallopt or mallinfo2 unavailable")
    assert default["mapped"] == 0, default  # from the heap, reused after it is freed
    assert lean["mapped"] >= 64 << 20, lean  # a mapping of its own, unmapped when freed


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator only")
def test_a_worker_thread_shares_the_heap_when_asked():
    # what the widgets set: napari runs inference in worker threads
    default, lean = _probe(lean=False, where="thread"), _probe(lean=True, where="thread")
    if not (default["set"] and lean["set"]):
        pytest.skip("not glibc >= 2.33: mallopt or mallinfo2 unavailable")
    assert default["mapped"] == 0, default
    assert lean["mapped"] >= 64 << 20, lean
