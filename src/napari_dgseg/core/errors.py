"""User-facing error types.

Every error a user can provoke with bad input is a :class:`DgsegError` whose message says what
went wrong *and what to do*. The CLI prints the message (no traceback, exit code 2) and the napari
widgets turn it into a notification.
"""

from __future__ import annotations


class DgsegError(Exception):
    """Base class of errors caused by the user's input; the message is meant for the user."""


class InputError(DgsegError, ValueError):
    """An argument, image or array that cannot be used as given."""


class ImageReadError(DgsegError, OSError):
    """A file of a supported type that cannot be read (empty, truncated, corrupt)."""


class BundleError(DgsegError):
    """A model bundle that is refused (bad hashes, unknown schema, pickle inside, missing)."""


class CancelledError(DgsegError):
    """Long work stopped because the user asked to cancel."""


class OutputExistsError(DgsegError, FileExistsError):
    """An output file or folder exists and replacing it was not asked for (``--overwrite``)."""


class OutputWriteError(DgsegError, OSError):
    """Writing an output failed (disk full, no permission, read-only disk); names the path."""


class LockedError(DgsegError):
    """Another running process holds the lock of the bundle being written."""


class NonFiniteOutputError(DgsegError):
    """The network returned NaN or infinite values: the result would look plausible but be wrong."""
