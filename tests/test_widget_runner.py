"""The one job runner of the widgets: progress, yields, cancel, errors, sync mode (under Xvfb).

xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/pytest tests/test_widget_runner.py -q
"""

from __future__ import annotations

import threading

import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

pytestmark = pytest.mark.gui


@pytest.fixture
def runner(qtbot, make_napari_viewer):
    make_napari_viewer()  # a QApplication with napari's notification machinery
    from napari_dgseg._napari.runner import TaskRunner

    r = TaskRunner("Testing")
    events: list[tuple] = []
    r.progressed.connect(lambda d, t: events.append(("progress", d, t)))
    r.yielded.connect(lambda item: events.append(("yielded", item)))
    r.succeeded.connect(lambda v: events.append(("succeeded", v)))
    r.failed.connect(lambda m: events.append(("failed", m)))
    r.cancelled.connect(lambda: events.append(("cancelled",)))
    r.finished.connect(lambda: events.append(("finished",)))
    r.events = events
    yield r
    r.cancel()
    r.wait(10)


def _count(progress, cancel):
    for i in range(1, 4):
        progress(i, 3)
    return "done"


def test_sync_mode_runs_here_and_returns_the_outcome(runner):
    caller = threading.get_ident()
    seen_thread = []

    def work(progress, cancel):
        seen_thread.append(threading.get_ident())
        return _count(progress, cancel)

    got = []
    outcome = runner.start(work, sync=True, on_result=got.append)
    assert seen_thread == [caller]
    assert outcome.kind == "ok" and outcome.value == "done" and outcome.ok
    assert got == ["done"] and runner.worker is None and not runner.running
    assert runner.events == [
        ("progress", 1, 3),
        ("progress", 2, 3),
        ("progress", 3, 3),
        ("succeeded", "done"),
        ("finished",),
    ]
    assert runner.last_outcome == outcome


def test_sync_mode_from_the_environment(runner, monkeypatch):
    monkeypatch.setenv("DGSEG_SYNC_WORKERS", "1")
    outcome = runner.start(_count)
    assert outcome is not None and outcome.value == "done"


def test_threaded_job_runs_in_a_worker_and_delivers_in_the_gui_thread(runner, qtbot):
    gui = threading.get_ident()
    threads = {}

    def work(progress, cancel):
        threads["work"] = threading.get_ident()
        return _count(progress, cancel)

    def on_result(value):
        threads["result"] = threading.get_ident()

    runner.progressed.connect(lambda *_: threads.setdefault("progress", threading.get_ident()))
    assert runner.start(work, on_result=on_result) is None
    assert runner.running and runner.worker is not None
    with pytest.raises(RuntimeError, match="already running"):
        runner.start(work)
    qtbot.waitUntil(lambda: not runner.running, timeout=10000)
    assert threads["work"] != gui
    assert threads["result"] == gui and threads["progress"] == gui
    assert [e for e in runner.events if e[0] != "progress"] == [
        ("succeeded", "done"),
        ("finished",),
    ]
    assert ("progress", 3, 3) in runner.events


@pytest.mark.parametrize("sync", [True, False])
def test_generator_job_yields_then_returns(runner, qtbot, sync):
    def work(progress, cancel):
        for i in range(3):
            progress(i + 1, 3)
            yield i * 10
        return "end"

    yielded = []
    runner.start(work, sync=sync, on_yield=yielded.append)
    qtbot.waitUntil(lambda: not runner.running, timeout=10000)
    assert yielded == [0, 10, 20]
    assert [e[1] for e in runner.events if e[0] == "yielded"] == [0, 10, 20]
    assert runner.events[-2:] == [("succeeded", "end"), ("finished",)]


def test_cancel_stops_the_job_and_drops_its_result(runner, qtbot):
    started = threading.Event()
    checks = []

    def work(progress, cancel):
        from napari_dgseg.core.errors import CancelledError

        started.set()
        for i in range(2000):
            if cancel.is_set():  # what the core's tile and iteration loops do
                checks.append(i)
                raise CancelledError("cancelled")
            cancel.wait(0.005)
        return "finished anyway"

    runner.start(work)
    assert started.wait(10)
    runner.cancel()
    qtbot.waitUntil(lambda: not runner.running, timeout=10000)
    assert checks and checks[0] < 2000
    assert runner.events[-2:] == [("cancelled",), ("finished",)]
    assert runner.last_outcome.kind == "cancelled"


def test_a_result_returned_after_cancel_is_dropped_unless_kept(runner):
    def stops_early(progress, cancel):
        cancel.set()  # the user pressed Cancel while the job finished its step
        return "partial"

    assert runner.start(stops_early, sync=True).kind == "cancelled"
    outcome = runner.start(stops_early, sync=True, keep_result_on_cancel=True)
    assert outcome.kind == "ok" and outcome.value == "partial"


def test_external_cancel_token(runner):
    token = threading.Event()
    token.set()
    seen = []
    runner.start(lambda progress, cancel: seen.append(cancel is token), sync=True, cancel=token)
    assert seen == [True]


@pytest.mark.parametrize("sync", [True, False])
def test_errors_are_one_line_notifications_without_traceback(runner, qtbot, notes, sync):
    from napari_dgseg.core.errors import InputError

    def bad_input(progress, cancel):
        raise InputError("the image is 1 x 1 pixels;\nuse an image of at least 8 x 8")

    runner.error_prefix = "could not run: "
    runner.start(bad_input, sync=sync)
    qtbot.waitUntil(lambda: not runner.running, timeout=10000)
    assert runner.events[-2:] == [
        ("failed", "the image is 1 x 1 pixels; use an image of at least 8 x 8"),
        ("finished",),
    ]
    assert "could not run: the image is 1 x 1 pixels; use an image of at least 8 x 8" in notes

    def bug(progress, cancel):
        return {}["missing"]

    runner.start(bug, sync=sync)
    qtbot.waitUntil(lambda: not runner.running, timeout=10000)
    message = runner.last_outcome.value
    assert runner.last_outcome.kind == "error"
    assert message.startswith("unexpected error (KeyError") and "\n" not in message
    assert not any("Traceback" in n for n in notes)


def test_errors_can_be_left_to_the_caller(runner, notes):
    runner.notify_errors = False
    outcome = runner.start(lambda p, c: 1 / 0, sync=True)
    assert outcome.kind == "error" and "ZeroDivisionError" in outcome.value
    assert not any("ZeroDivisionError" in n for n in notes)


def test_a_result_handler_may_start_the_next_job(runner):
    second = []

    def chain(value):
        second.append(runner.start(lambda p, c: value + 1, sync=True))

    runner.start(lambda p, c: 1, sync=True, on_result=chain)
    assert second and second[0].value == 2 and not runner.running
