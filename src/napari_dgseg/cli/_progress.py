"""A dependency-free progress bar on stderr for long CLI commands."""

from __future__ import annotations

import sys
import time


class ProgressBar:
    """Prints ``label [#####.....] done/total extra`` in place (only on a terminal or if forced)."""

    def __init__(self, label: str, *, stream=None, width: int = 30, min_interval: float = 0.2):
        self.label = label
        self.stream = stream or sys.stderr
        self.width = width
        self.min_interval = min_interval
        self._last = 0.0
        self._t0 = time.perf_counter()

    def __call__(self, done: int, total: int, logs: dict | None = None) -> None:
        now = time.perf_counter()
        if done < total and now - self._last < self.min_interval:
            return
        self._last = now
        frac = done / max(1, total)
        bar = "#" * int(frac * self.width) + "." * (self.width - int(frac * self.width))
        extra = ""
        if logs:
            extra = " " + " ".join(
                f"{k}={v:.4g}" for k, v in logs.items() if isinstance(v, float) and k != "lr"
            )
        end = "\n" if done >= total else "\r"
        self.stream.write(f"{self.label} [{bar}] {done}/{total} {now - self._t0:.0f}s{extra}{end}")
        self.stream.flush()
