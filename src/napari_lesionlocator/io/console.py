"""Progress output that suits where it goes: a live tqdm bar on a terminal, whole lines in a log.

tqdm redraws its bar with carriage returns; in a file, a pipe or a CI log that becomes one
endless line of ``\\r``-separated frames. :func:`progress_bar` gives a tqdm bar whose output, when
the stream is not a terminal, goes through :class:`LineStream`: each frame becomes a line of its
own, at most one every ``interval`` seconds, and the last frame (the bar's final state) is always
written.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["LineStream", "is_terminal", "progress_bar"]

LOG_INTERVAL_S = 10.0


def is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class LineStream:
    """A text stream for tqdm that turns its ``\\r`` redraws into whole, rate-limited lines."""

    def __init__(self, stream: TextIO, interval: float = LOG_INTERVAL_S, clock=time.monotonic) -> None:
        self.stream = stream
        self.interval = float(interval)
        self.clock = clock
        self._pending = ""  # the latest frame not written yet
        self._last_line = ""
        self._last_time = -float("inf")

    def _emit(self, frame: str) -> None:
        frame = frame.rstrip()
        if frame and frame != self._last_line:
            self.stream.write(frame + "\n")
            self.stream.flush()
            self._last_line = frame
        self._last_time = self.clock()
        self._pending = ""

    def write(self, text: str) -> int:
        parts = text.replace("\x1b[A", "").split("\n")
        for k, part in enumerate(parts):
            frames = [f for f in part.split("\r") if f.strip()]
            if frames:
                self._pending = frames[-1]
            ended = k < len(parts) - 1  # a newline follows: tqdm closed the bar or wrote a message
            if self._pending and (ended or self.clock() - self._last_time >= self.interval):
                self._emit(self._pending)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False

    def close_line(self) -> None:
        """Write the frame still pending (the bar's last state)."""
        if self._pending:
            self._emit(self._pending)


def progress_bar(*, stream: TextIO | None = None, interval: float = LOG_INTERVAL_S, **kwargs):
    """A tqdm bar on ``stream`` (default stderr): live on a terminal, whole lines elsewhere."""
    from tqdm import tqdm

    stream = sys.stderr if stream is None else stream
    if is_terminal(stream) or kwargs.get("disable"):
        return tqdm(file=stream, **kwargs)
    kwargs.pop("dynamic_ncols", None)
    kwargs["leave"] = True  # a log keeps the bar's final line
    kwargs.setdefault("ascii", True)
    kwargs.setdefault("ncols", 100)
    bar = tqdm(file=LineStream(stream, interval), mininterval=interval, **kwargs)
    return bar
