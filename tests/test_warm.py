"""The widgets' warm-up (napari_dgseg._napari.warm): one-time work of the first Labels layer."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("napari")

CHECK = """
import gc, json, sys
from napari_dgseg._napari.warm import warm_layer_imports
before = gc.get_freeze_count()
warm_layer_imports()
from vispy.visuals.line.dash_atlas import _make_pattern
print(json.dumps({"modules": [m for m in ("pandas", "skimage.color", "scipy.linalg", "torch")
                              if m in sys.modules],
                  "frozen_before": before, "frozen_after": gc.get_freeze_count(),
                  "dash_patterns_cached": _make_pattern.cache_info().currsize}))
"""


def test_warm_up_imports_what_a_first_labels_layer_needs_and_freezes_the_start_up():
    """In a fresh process (the freeze is process-wide): imports, vispy's cache, frozen objects."""
    run = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                         check=True, timeout=300)
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["modules"] == ["pandas", "skimage.color", "scipy.linalg", "torch"]
    assert got["frozen_before"] == 0 and got["frozen_after"] > 100_000
    assert got["dash_patterns_cached"] > 0
