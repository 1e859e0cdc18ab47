"""Driving a step generator to its end: the blocking form of every ``*_steps`` API.

Long computations (adaptation, style training, domain-gap maps) are written as generators that
yield one step at a time and *return* their result, so the viewer's workers can interleave
progress and cancel between steps. Their blocking forms only need to run the generator out.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, TypeVar

R = TypeVar("R")


def run_steps(steps: Generator[Any, None, R], on_step: Callable[[Any], Any] | None = None) -> R:
    """Exhaust ``steps``, calling ``on_step(step)`` for each yielded step; its return value."""
    while True:
        try:
            step = next(steps)
        except StopIteration as stop:
            return stop.value
        if on_step is not None:
            on_step(step)
