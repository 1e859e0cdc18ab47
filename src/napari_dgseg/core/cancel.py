"""One way to ask "has the user cancelled?" for every long-running loop.

Long work (tiled inference, training, adaptation, saving a bundle) accepts a ``cancel`` argument:
``None`` (never cancelled), a :class:`threading.Event` (or anything with ``is_set()``), or a
callable returning a truth value. :func:`is_cancelled` reads any of them; :func:`check_cancel`
raises :class:`~napari_dgseg.core.errors.CancelledError` with a message for the user.

A single forward pass of a large tile can take seconds on a CPU, longer than a user waits for
*Cancel*; :func:`cancel_hooks` makes a network check the token before each of its layers, so a
cancel lands within one layer's time instead of one batch's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol, runtime_checkable

from napari_dgseg.core.errors import CancelledError

__all__ = ["Cancel", "CancelLike", "cancel_hooks", "check_cancel", "is_cancelled"]


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


@contextmanager
def cancel_hooks(model: Any, cancel: Any) -> Iterator[None]:
    """Within the block, every layer of ``model`` checks ``cancel`` before it runs.

    A forward pre-hook on each submodule calls :func:`check_cancel`, so a forward pass stops
    (raising :class:`CancelledError`) at the next layer after the request. Only forward passes
    in the thread that entered the block are checked: a model shared with another job's thread
    is not stopped by this job's token. Nothing is registered when ``cancel`` is None.

    Parameters
    ----------
    model : torch.nn.Module
    cancel : threading.Event, callable or None
    """
    if cancel is None or not hasattr(model, "modules"):
        yield
        return
    owner = threading.get_ident()

    def hook(_module: Any, _inputs: Any) -> None:
        if threading.get_ident() == owner:
            check_cancel(cancel)

    handles = [m.register_forward_pre_hook(hook) for m in model.modules()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
