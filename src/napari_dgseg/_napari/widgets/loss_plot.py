"""The live loss plot of the Adapt widget (QPainter; no extra dependency)."""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtCore import QPointF
from qtpy.QtGui import QColor, QPainter, QPen
from qtpy.QtWidgets import QWidget

__all__ = ["LossPlot"]


class LossPlot(QWidget):
    """A small line plot of the segmentation and MI losses (QPainter; no extra dependency)."""

    SERIES = (("seg", QColor(66, 135, 245)), ("mi", QColor(245, 130, 48)))

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMinimumHeight(140)
        self.data: dict[str, list[tuple[int, float]]] = {k: [] for k, _ in self.SERIES}

    def clear(self) -> None:
        """Remove every point."""
        self.data = {k: [] for k, _ in self.SERIES}
        self.update()

    def add(self, iteration: int, logs: dict[str, float]) -> None:
        """Append the losses of one iteration (MI points only once the warm-up is over)."""
        self.data["seg"].append((iteration, float(logs.get("seg", np.nan))))
        if not logs.get("warmup"):
            self.data["mi"].append((iteration, float(logs.get("mi", np.nan))))
        self.update()

    def paintEvent(self, event: Any) -> None:  # noqa: N802 (Qt name)
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        w, h = self.width(), self.height()
        left, right, top, bottom = 36, 8, 8, 18
        p.fillRect(self.rect(), QColor(38, 41, 48))
        p.setPen(QPen(QColor(140, 140, 140), 1))
        p.drawRect(left, top, w - left - right, h - top - bottom)
        pts = [v for s in self.data.values() for _, v in s if np.isfinite(v)]
        its = [i for s in self.data.values() for i, _ in s]
        if not pts:
            p.drawText(left + 6, top + 16, "losses appear here during Run")
            p.end()
            return
        lo, hi = min(0.0, min(pts)), max(pts) * 1.05 + 1e-9
        n = max(its) if its else 1
        pw, ph = w - left - right, h - top - bottom

        def xy(i: int, v: float) -> QPointF:
            return QPointF(
                left + pw * (i - 1) / max(1, n - 1), top + ph * (1 - (v - lo) / (hi - lo))
            )

        p.drawText(2, top + 10, f"{hi:.2g}")
        p.drawText(2, h - bottom, f"{lo:.2g}")
        p.drawText(left, h - 4, "1")
        p.drawText(w - right - 40, h - 4, f"{n}")
        for k, (name, color) in enumerate(self.SERIES):
            series = [(i, v) for i, v in self.data[name] if np.isfinite(v)]
            p.setPen(QPen(color, 2))
            for a, b in zip(series, series[1:], strict=False):
                p.drawLine(xy(*a), xy(*b))
            p.drawText(left + 8 + 70 * k, top + 14, f"— {name}")
        p.end()
