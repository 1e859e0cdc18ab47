"""One job runner for every background job of the napari-dgseg widgets.

:class:`TaskRunner` runs ``func(progress, cancel)`` in a napari thread worker
(:func:`napari.qt.threading.create_worker`, the machinery behind ``thread_worker``):

* ``progress(done, total)`` may be called from the worker; it reaches the GUI thread as the
  ``progressed`` signal and a napari progress bar (napari's activity panel), which a threaded job
  gets from its start (indeterminate until the first report: reading inputs and the first
  iteration of an adaptation take a while);
* ``cancel`` is a :class:`threading.Event` the core checks between steps (tiles, iterations,
  files); :meth:`TaskRunner.cancel` sets it;
* ``func`` may be a generator function: what it yields reaches the GUI thread as ``yielded`` (and
  the ``on_yield`` callback), what it returns as the result;
* the outcome is exactly one of ``succeeded(result)``, ``failed(message)`` (also shown as a
  one-line napari notification, never a traceback) or ``cancelled()``, then ``finished()``;
  per-run ``on_result``/``on_yield`` callbacks run in the GUI thread before the signals.

Synchronous mode (``sync=True`` or ``$DGSEG_SYNC_WORKERS=1``) runs the job in the calling thread
with the same signals and callbacks, and returns its :class:`Outcome`: widget tests and scripts
are deterministic while the GUI path stays threaded.

The cancel token is a plain :class:`threading.Event` because that is what the core's long loops
accept (``cancel.is_set()``).
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Literal

from qtpy.QtCore import QObject, Signal, Slot

from napari_dgseg._napari.notify import notify, one_line
from napari_dgseg.core.errors import CancelledError, DgsegError

__all__ = ["SYNC_ENV", "Outcome", "ProgressFn", "TaskRunner", "WorkFn", "sync_workers"]

log = logging.getLogger("napari_dgseg")

#: Environment variable that makes every widget job run synchronously (tests, scripts).
SYNC_ENV = "DGSEG_SYNC_WORKERS"

#: ``progress(done, total)``, callable from the worker thread.
ProgressFn = Callable[[int, int], None]
#: A job: ``func(progress, cancel) -> result``, or a generator function yielding intermediate
#: items and returning the result.
WorkFn = Callable[[ProgressFn, threading.Event], Any]

Kind = Literal["ok", "cancelled", "error"]


def sync_workers() -> bool:
    """True when ``$DGSEG_SYNC_WORKERS`` asks for jobs to run in the calling thread."""
    return os.environ.get(SYNC_ENV, "").strip().lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class Outcome:
    """How a job ended.

    Attributes
    ----------
    kind : {"ok", "cancelled", "error"}
    value : object
        The job's result (``"ok"``), None (``"cancelled"``) or the one-line message (``"error"``).
    """

    kind: Kind
    value: Any = None

    @property
    def ok(self) -> bool:
        return self.kind == "ok"


class TaskRunner(QObject):
    """Run one job at a time off the GUI thread, with progress, cancel and one-line errors.

    Parameters
    ----------
    description : str
        Default text of the napari progress bar.
    parent : QObject, optional
        Qt parent (the widget), which keeps the runner alive.
    error_prefix : str
        Put before the message of a failure in its notification (e.g. ``"could not load the
        model: "``).
    notify_errors : bool
        Show a failure as a napari error notification (the ``failed`` signal is emitted anyway).

    Signals (all delivered in the GUI thread)
    -----------------------------------------
    progressed(int, int)
        ``done, total`` reported by the job.
    yielded(object)
        An item yielded by a generator job.
    succeeded(object)
        The job's result.
    failed(str)
        One-line message (from a :class:`DgsegError`, or an unexpected exception, which is also
        logged with its traceback).
    cancelled()
        The user cancelled; no result.
    finished()
        Always last, after one of the three above.
    """

    progressed = Signal(int, int)
    yielded = Signal(object)
    succeeded = Signal(object)
    failed = Signal(str)
    cancelled = Signal()
    finished = Signal()

    # emitted from the worker thread; queued to the GUI thread by Qt (the runner lives there)
    _progress_relay = Signal(int, int)

    def __init__(
        self,
        description: str = "Working",
        parent: QObject | None = None,
        *,
        error_prefix: str = "",
        notify_errors: bool = True,
    ) -> None:
        super().__init__(parent)
        self.description = description
        self.error_prefix = error_prefix
        self.notify_errors = notify_errors
        self._cancel = threading.Event()
        self._running = False
        self._keep_on_cancel = False
        self._worker: Any = None
        self._pbar: Any = None
        self._pbar_done = 0
        self._on_result: Callable[[Any], None] | None = None
        self._on_yield: Callable[[Any], None] | None = None
        self._last: Outcome | None = None
        self._progress_relay.connect(self._relay_progress)

    # -------------------------------------------------------------- state
    @property
    def running(self) -> bool:
        """True from :meth:`start` until the outcome has been delivered."""
        return self._running

    @property
    def worker(self) -> Any:
        """The napari worker of the current/last threaded job (None for synchronous jobs)."""
        return self._worker

    @property
    def last_outcome(self) -> Outcome | None:
        """How the last job ended (None before the first one ends)."""
        return self._last

    def cancel(self) -> None:
        """Ask the running job to stop (the core checks the token between steps)."""
        if self._running:
            self._cancel.set()

    def wait(self, timeout: float = 120.0) -> bool:
        """Process Qt events until the job has ended (scripts); False on timeout."""
        from qtpy.QtWidgets import QApplication

        end = time.monotonic() + timeout
        while self._running and time.monotonic() < end:
            QApplication.processEvents()
            time.sleep(0.01)
        return not self._running

    # -------------------------------------------------------------- running
    def start(
        self,
        func: WorkFn,
        *,
        sync: bool = False,
        description: str | None = None,
        on_result: Callable[[Any], None] | None = None,
        on_yield: Callable[[Any], None] | None = None,
        keep_result_on_cancel: bool = False,
        cancel: threading.Event | None = None,
    ) -> Outcome | None:
        """Run ``func(progress, cancel)`` in a worker (or here when ``sync``).

        Parameters
        ----------
        func : callable
            The job (a plain or a generator function); it must not touch Qt or the viewer.
        sync : bool
            Run in the calling thread (also when ``$DGSEG_SYNC_WORKERS=1``).
        description : str, optional
            Text of the napari progress bar for this job.
        on_result, on_yield : callable, optional
            Called in the GUI thread with the result / each yielded item, before the signals.
        keep_result_on_cancel : bool
            A job that returns normally after a cancel (one that stops early and keeps what it
            has, such as adaptation) still succeeds; by default such a result is dropped.
        cancel : threading.Event, optional
            Use this token instead of a fresh one (a caller that cancels from elsewhere).

        Returns
        -------
        Outcome or None
            The outcome of a synchronous job; None when the job runs in a worker.

        Raises
        ------
        RuntimeError
            If a job is already running (callers disable their buttons meanwhile).
        """
        if self._running:
            raise RuntimeError(f"{self.description}: a job is already running")
        if description:
            self.description = description
        self._cancel = cancel if cancel is not None else threading.Event()
        self._running = True
        self._keep_on_cancel = keep_result_on_cancel
        self._on_result, self._on_yield = on_result, on_yield
        self._pbar_done = 0
        token = self._cancel
        is_gen = inspect.isgeneratorfunction(func) or inspect.isgeneratorfunction(
            getattr(func, "__call__", None)  # noqa: B004 (a callable object's generator method)
        )

        if sync or sync_workers():
            self._worker = None
            progress: ProgressFn = self._relay_progress
            if is_gen:
                gen = _guarded_gen(func, progress, token)
                while True:
                    try:
                        self._deliver_yield(next(gen))
                    except StopIteration as stop:
                        outcome = stop.value
                        break
            else:
                outcome = _guarded(func, progress, token)
            self._on_outcome(outcome)
            return self._last

        from napari.qt.threading import create_worker

        def relay(done: int, total: int) -> None:
            self._progress_relay.emit(int(done), int(total))

        target = _guarded_gen if is_gen else _guarded
        worker = create_worker(target, func, relay, token, _start_thread=False)
        if is_gen:
            worker.yielded.connect(self._deliver_yield)
        worker.returned.connect(self._on_outcome)
        self._worker = worker
        self._open_pbar(0)
        worker.start()
        return None

    # -------------------------------------------------------------- GUI-thread side
    @Slot(int, int)
    def _relay_progress(self, done: int, total: int) -> None:
        self.progressed.emit(int(done), int(total))
        if total <= 0:
            return
        try:
            if self._pbar is None:
                self._open_pbar(total)
            elif self._pbar.total != total:
                self._pbar.total = total
            step = done - self._pbar_done
            if step > 0:
                self._pbar.update(step)
                self._pbar_done = done
        except Exception:  # a progress bar must never break the work it reports on
            log.debug("progress bar update failed", exc_info=True)

    def _open_pbar(self, total: int) -> None:
        """Show the job in napari's activity panel (``total`` 0: indeterminate)."""
        try:
            from napari.utils import progress as napari_progress

            self._close_pbar()
            self._pbar = napari_progress(total=total, desc=self.description)
            self._pbar_done = 0
        except Exception:  # a progress bar must never break the work it reports on
            log.debug("progress bar creation failed", exc_info=True)
            self._pbar = None

    @property
    def progress_bar(self) -> Any:
        """The napari progress object of the running job (in the activity panel), or None."""
        return self._pbar

    def _deliver_yield(self, item: Any) -> None:
        if self._on_yield is not None:
            self._on_yield(item)
        self.yielded.emit(item)

    def _close_pbar(self) -> None:
        if self._pbar is not None:
            try:
                self._pbar.close()
            except Exception:
                log.debug("closing the progress bar failed", exc_info=True)
            self._pbar = None

    def _on_outcome(self, outcome: Outcome) -> None:
        self._close_pbar()
        if outcome.kind == "ok" and self._cancel.is_set() and not self._keep_on_cancel:
            outcome = Outcome("cancelled")
        self._last = outcome
        # not running any more before results are delivered: a result handler may start a job
        self._running = False
        on_result, self._on_result, self._on_yield = self._on_result, None, None
        try:
            if outcome.kind == "ok":
                if on_result is not None:
                    on_result(outcome.value)
                self.succeeded.emit(outcome.value)
            elif outcome.kind == "cancelled":
                self.cancelled.emit()
            else:
                message = str(outcome.value)
                if self.notify_errors:
                    notify(f"{self.error_prefix}{message}")
                self.failed.emit(message)
        finally:
            self.finished.emit()


def _error_message(exc: BaseException) -> str:
    if isinstance(exc, DgsegError):
        return one_line(exc)
    if isinstance(exc, MemoryError):
        return (
            "not enough memory for this image; segment a drawn rectangle or the current view, "
            "or use a smaller tile size"
        )
    log.error("napari-dgseg: unexpected error", exc_info=exc)
    return one_line(
        f"unexpected error ({type(exc).__name__}: {exc}); the details are in the terminal log"
    )


def _guarded(func: WorkFn, progress: ProgressFn, cancel: threading.Event) -> Outcome:
    """Call ``func``; every exception becomes an outcome, so no traceback reaches the user."""
    try:
        return Outcome("ok", func(progress, cancel))
    except CancelledError:
        return Outcome("cancelled")
    except Exception as exc:  # the message, never the traceback, reaches the user
        return Outcome("error", _error_message(exc))


def _guarded_gen(
    func: WorkFn, progress: ProgressFn, cancel: threading.Event
) -> Generator[Any, None, Outcome]:
    """Run a generator job: re-yield its items; its return value or exception is the outcome."""
    try:
        value = yield from func(progress, cancel)
        return Outcome("ok", value)
    except CancelledError:
        return Outcome("cancelled")
    except Exception as exc:  # the message, never the traceback, reaches the user
        return Outcome("error", _error_message(exc))
