"""One-line napari notifications, the way every napari-dgseg message reaches the user."""

from __future__ import annotations

from typing import Literal

__all__ = ["notify", "one_line"]

Level = Literal["error", "warning", "info"]


def one_line(message: object, max_chars: int = 400) -> str:
    """Collapse ``message`` to one line of at most ``max_chars`` characters."""
    text = " ".join(str(message).split())
    return text if len(text) <= max_chars else text[: max_chars - 3] + "..."


def notify(message: object, level: Level = "error") -> str:
    """Show ``message`` as a one-line napari notification.

    Parameters
    ----------
    message : object
        The text (an exception is shown by its message). Newlines are collapsed.
    level : {"error", "warning", "info"}
        Severity; errors and warnings appear as pop-ups, info in the notification list.

    Returns
    -------
    str
        The line that was shown (handy for logs and tests).
    """
    from napari.utils.notifications import show_error, show_info, show_warning

    line = one_line(message)
    {"error": show_error, "warning": show_warning, "info": show_info}[level](line)
    return line
