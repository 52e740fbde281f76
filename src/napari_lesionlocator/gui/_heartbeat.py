"""Measure how long the Qt event loop stalls (GUI responsiveness) with a QTimer heartbeat.

A timer ticks every ``interval_ms``; the longest gap between two ticks, minus the interval, is
the longest time the GUI thread could not process events (a click or a repaint would have waited
that long). Used by the GUI tests and by ``benchmarks/ui_responsiveness.py``.
"""

from __future__ import annotations

import time

from qtpy.QtCore import QObject, QTimer

__all__ = ["StallMonitor"]


class StallMonitor(QObject):
    """Context manager recording the longest event-loop stall (ms) while it is active.

    Examples
    --------
    >>> with StallMonitor() as monitor:        # doctest: +SKIP
    ...     run_something_and_process_events()
    >>> monitor.max_stall_ms                     # doctest: +SKIP
    """

    def __init__(self, interval_ms: int = 10, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.interval_ms = int(interval_ms)
        self._timer = QTimer(self)
        self._timer.setInterval(self.interval_ms)
        self._timer.timeout.connect(self._tick)
        self._last: float | None = None
        self.max_gap_ms = 0.0
        self.ticks = 0
        self.gaps: list[tuple[float, float]] = []  # (perf_counter at the end of the gap, gap in ms)

    def _tick(self) -> None:
        now = time.perf_counter()
        if self._last is not None:
            gap = (now - self._last) * 1000.0
            self.max_gap_ms = max(self.max_gap_ms, gap)
            if gap > 2 * self.interval_ms:
                self.gaps.append((now, gap))
        self._last = now
        self.ticks += 1

    @property
    def max_stall_ms(self) -> float:
        """Longest time beyond the timer interval that the loop did not run (ms)."""
        return max(0.0, self.max_gap_ms - self.interval_ms)

    def stall_between(self, t0: float, t1: float) -> float:
        """Longest stall (ms, interval subtracted) among gaps that ended within [t0, t1] (perf_counter)."""
        inside = [gap for end, gap in self.gaps if t0 <= end <= t1]
        return max(0.0, max(inside, default=0.0) - self.interval_ms)

    def start(self) -> StallMonitor:
        self._last = None
        self.max_gap_ms = 0.0
        self.ticks = 0
        self.gaps = []
        self._timer.start()
        return self

    def stop(self) -> None:
        self._timer.stop()

    def __enter__(self) -> StallMonitor:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
