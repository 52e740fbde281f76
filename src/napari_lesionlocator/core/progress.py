"""Progress reporting and cooperative cancellation, shared by engines, CLI and GUI (no Qt)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from .errors import Cancelled

__all__ = ["ProgressEvent", "ProgressCallback", "CancelToken", "report"]


@dataclass(frozen=True)
class ProgressEvent:
    """One step of a long job. ``total`` may be 0 when unknown."""

    step: int
    total: int
    message: str = ""


ProgressCallback = Callable[[ProgressEvent], None]


class CancelToken:
    """Thread-safe flag a GUI thread sets and worker code checks between (and inside) long steps."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled("cancelled by the user")


def report(callback: ProgressCallback | None, step: int, total: int, message: str = "") -> None:
    """Call ``callback`` if there is one (keeps engine code free of ``if callback`` noise)."""
    if callback is not None:
        callback(ProgressEvent(step, total, message))
