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

libc = _libc()
ok = bound_heap() and hasattr(libc, "mallinfo2")
mapped = None
if ok:
    libc.mallinfo2.restype = Info
    before = libc.mallinfo2().hblkhd
    a = np.ones(64 << 17)  # 64 MB of float64
    mapped = libc.mallinfo2().hblkhd - before  # bytes of it in a region of its own
print(json.dumps({"set": bool(ok), "mapped": mapped}))
"""


def _probe(lean: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "DGSEG_LEAN_HEAP"}
    if lean:
        env["DGSEG_LEAN_HEAP"] = "1"
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
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
