"""The code-usage bar plot of the Codebook widget (QPainter; no extra dependency)."""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

__all__ = ["UsagePlot"]


class UsagePlot(QWidget):
    """Bar plot of code usage: this image (bars in the code colours) vs training (black line).

    Codes are in index order, so each class group is a contiguous stretch of one hue family.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.usage: np.ndarray | None = None
        self.reference: np.ndarray | None = None
        self.colors: dict[int, tuple[float, float, float, float]] = {}
        self.groups: np.ndarray | None = None
        self.class_names: tuple[str, ...] = ()
        self.setMinimumHeight(140)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip(
            "Fraction of pixels using each code: bars = this image, black line = the training data"
        )

    def set_data(
        self,
        usage: np.ndarray,
        reference: np.ndarray | None,
        colors: dict[int, tuple[float, float, float, float]],
        groups: np.ndarray,
        class_names: tuple[str, ...],
    ) -> None:
        """Show ``usage`` ``(N,)`` and ``reference`` ``(N,)`` (or None)."""
        self.usage = np.asarray(usage, np.float64)
        self.reference = None if reference is None else np.asarray(reference, np.float64)
        self.colors = dict(colors)
        self.groups = np.asarray(groups)
        self.class_names = tuple(class_names)
        self.update()

    def clear(self) -> None:
        self.usage = self.reference = None
        self.update()

    def paintEvent(self, event: Any) -> None:  # noqa: N802 (Qt API)
        p = QPainter(self)
        try:
            p.setRenderHint(QPainter.RenderHint.Antialiasing, False)
            rect = QRectF(self.rect()).adjusted(4, 4, -4, -18)
            p.fillRect(self.rect(), self.palette().base())
            text_pen = QPen(self.palette().text().color())
            if self.usage is None:
                p.setPen(text_pen)
                p.drawText(rect, Qt.AlignmentFlag.AlignCenter, "Run to plot the code usage")
                return
            n = self.usage.size
            top = float(self.usage.max())
            if self.reference is not None:
                top = max(top, float(self.reference.max()))
            top = top if top > 0 else 1.0
            w = rect.width() / max(n, 1)
            for i, v in enumerate(self.usage):
                if v <= 0:
                    continue
                r, g, b, _ = self.colors.get(i, (0.5, 0.5, 0.5, 1.0))
                h = rect.height() * float(v) / top
                p.fillRect(
                    QRectF(rect.left() + i * w, rect.bottom() - h, max(w, 1.0), h),
                    QColor.fromRgbF(r, g, b, 1.0),
                )
            if self.reference is not None:
                pen = QPen(
                    QColor(0, 0, 0)
                    if self.palette().base().color().lightness() > 128
                    else QColor(255, 255, 255)
                )
                pen.setWidthF(1.5)
                p.setPen(pen)
                pts = [
                    QPointF(
                        rect.left() + (i + 0.5) * w, rect.bottom() - rect.height() * float(v) / top
                    )
                    for i, v in enumerate(self.reference)
                ]
                for a, b in zip(pts[:-1], pts[1:], strict=True):
                    p.drawLine(a, b)
            # class-group ticks under the axis
            p.setPen(text_pen)
            if self.groups is not None and self.groups.size == n:
                for g in np.unique(self.groups):
                    idx = np.flatnonzero(self.groups == g)
                    x0 = rect.left() + idx[0] * w
                    x1 = rect.left() + (idx[-1] + 1) * w
                    name = self.class_names[g] if g < len(self.class_names) else str(g)
                    p.drawLine(QPointF(x0, rect.bottom() + 2), QPointF(x1 - 1, rect.bottom() + 2))
                    p.drawText(
                        QRectF(x0, rect.bottom() + 3, x1 - x0, 14),
                        Qt.AlignmentFlag.AlignCenter,
                        f"{name} codes",
                    )
        finally:
            p.end()
