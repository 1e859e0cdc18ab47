"""Long jobs show in napari's activity panel from their start (Xvfb).

An adaptation reads its targets and predicts the "before" mask before its first step reports
progress; the runner therefore opens the napari progress bar (indeterminate) when a threaded job
starts, and gives it a total at the first report.
"""

from __future__ import annotations

import threading

import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

pytestmark = pytest.mark.gui


def test_threaded_job_is_in_the_activity_panel_from_its_start(qtbot, make_napari_viewer):
    from napari.utils import progress

    from napari_dgseg._napari.runner import TaskRunner

    make_napari_viewer()  # the activity panel lives in a viewer window
    runner = TaskRunner("Adapting")
    go, reported = threading.Event(), threading.Event()

    def job(report, cancel):
        go.wait(20)
        report(1, 4)
        reported.set()
        go2.wait(20)
        return "done"

    go2 = threading.Event()
    runner.start(job, description="Adapting tiny")
    bar = runner.progress_bar
    assert bar is not None and bar in progress._all_instances
    assert bar.desc.startswith("Adapting tiny") and bar.total == 0  # indeterminate
    go.set()
    qtbot.waitUntil(lambda: bar.total == 4 and bar.n == 1, timeout=20000)
    go2.set()
    qtbot.waitUntil(lambda: not runner.running, timeout=20000)
    assert bar not in progress._all_instances
    assert runner.last_outcome.value == "done"

