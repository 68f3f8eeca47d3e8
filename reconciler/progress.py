"""A live progress line for long runs on a terminal: done/total, failed, elapsed, ETA.

Why: a rollout across thousands of tenants takes minutes; an operator at a terminal
wants to see it move and know when it will end, while the structured logs stay the
record. Nothing is drawn when the stream is not a terminal (journald, CI, pipes), so
logs and machine output are never polluted.

Invariants:
* the line is drawn and cleared only from the thread that runs the pass (the rollout
  reports progress from its main thread), so it never interleaves with itself;
* ``LineSafeLogger`` clears the line before each log line and redraws it after, so
  log lines are printed whole and the progress line is always the last one;
* redraws are throttled (``MIN_INTERVAL``) except the final one of a phase.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TextIO

MIN_INTERVAL = 0.1  # seconds between redraws: smooth enough, cheap on a slow terminal
_CLEAR = "\r\x1b[K"
_LEVELS = frozenset(("debug", "info", "warning", "warn", "error", "critical", "exception",
                     "msg", "fatal"))


def clock(seconds: float) -> str:
    """``m:ss`` (or ``h:mm:ss``) for a duration in seconds."""
    s = max(0, round(seconds))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def format_line(phase: str, done: int, total: int, failed: int, elapsed: float) -> str:
    """E.g. ``migrate 37/200 (18%) · 1 failed · 0:12 elapsed · ETA 0:52``."""
    pct = f" ({done * 100 // total}%)" if total else ""
    eta = "ETA --:--"
    if done >= total:
        eta = "done"
    elif done > 0:
        eta = f"ETA {clock(elapsed / done * (total - done))}"
    return f"{phase} {done}/{total}{pct} · {failed} failed · {clock(elapsed)} elapsed · {eta}"


class ProgressLine:
    """A callable ``(phase, done, total, failed)`` for ``engine.run_pass(progress=...)``."""

    def __init__(self, stream: TextIO, now: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.enabled = _isatty(stream)
        self._now = now
        self._started: dict[str, float] = {}
        self._text = ""
        self._shown = False
        self._last_draw = float("-inf")

    def __call__(self, phase: str, done: int, total: int, failed: int) -> None:
        if not self.enabled:
            return
        now = self._now()
        started = self._started.setdefault(phase, now)
        self._text = format_line(phase, done, total, failed, now - started)
        if done >= total or now - self._last_draw >= MIN_INTERVAL:
            self._last_draw = now
            self.redraw()

    def redraw(self) -> None:
        if self.enabled and self._text:
            self.stream.write(_CLEAR + self._text)
            self.stream.flush()
            self._shown = True

    def clear(self) -> None:
        if self._shown:
            self.stream.write(_CLEAR)
            self.stream.flush()
            self._shown = False

    def close(self) -> None:
        """Remove the line for good (the run's summary follows)."""
        self.clear()
        self._text = ""


class LineSafeLogger:
    """Wraps a structlog logger so each log line clears the progress line first."""

    def __init__(self, inner: Any, line: ProgressLine) -> None:
        self._inner = inner
        self._line = line

    def bind(self, **values: Any) -> LineSafeLogger:
        return LineSafeLogger(self._inner.bind(**values), self._line)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name not in _LEVELS:
            return attr

        def log(*args: Any, **kwargs: Any) -> Any:
            self._line.clear()
            try:
                return attr(*args, **kwargs)
            finally:
                self._line.redraw()
        return log


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
