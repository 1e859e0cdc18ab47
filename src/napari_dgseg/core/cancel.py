"""One way to ask "has the user cancelled?" for every long-running loop.

Long work (tiled inference, training, adaptation, saving a bundle) accepts a ``cancel`` argument:
``None`` (never cancelled), a :class:`threading.Event` (or anything with ``is_set()``), or a
callable returning a truth value. :func:`is_cancelled` reads any of them; :func:`check_cancel`
raises :class:`~napari_dgseg.core.errors.CancelledError` with a message for the user.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from napari_dgseg.core.errors import CancelledError

__all__ = ["Cancel", "CancelLike", "check_cancel", "is_cancelled"]


@runtime_checkable
class CancelLike(Protocol):
    """Anything with an ``is_set()`` method, such as :class:`threading.Event`."""

    def is_set(self) -> bool:
        """True once cancellation was requested."""
        ...


#: What a ``cancel`` argument may be.
Cancel = CancelLike | Callable[[], Any] | None


def is_cancelled(cancel: Any) -> bool:
    """True when ``cancel`` (``None``, an object with ``is_set()``, or a callable) says stop.

    Parameters
    ----------
    cancel : threading.Event, callable or None

    Returns
    -------
    bool
    """
    if cancel is None:
        return False
    if hasattr(cancel, "is_set"):
        return bool(cancel.is_set())
    if callable(cancel):
        return bool(cancel())
    raise TypeError(f"cancel must be None, an Event-like object or a callable, not {type(cancel)}")


def check_cancel(cancel: Any, message: str = "cancelled by the user") -> None:
    """Raise :class:`CancelledError` with ``message`` when :func:`is_cancelled` says so.

    Parameters
    ----------
    cancel : threading.Event, callable or None
    message : str
        What the user reads (say what was and was not kept).

    Raises
    ------
    CancelledError
    """
    if is_cancelled(cancel):
        raise CancelledError(message)
