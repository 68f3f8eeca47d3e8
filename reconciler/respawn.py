"""Keep one child process running until told to stop: started again, with exponential
backoff, whenever it exits.

Why a module of its own: the daemon runs two kinds of long-lived children — a
``litestream replicate`` per shard (``replicators``) and a ``litestream restore -f``
follower per other region (``follow``) — and both need the same loop: start, wait, say
how it ended, back off, start again, stop on request. What differs (the command, its
limits, what to do once it runs or when it ends, the words logged) is handed in.

Invariants:
* one child at a time, from one thread; once a stop is requested no child is started
  and an exit that follows is neither counted nor logged;
* each exit counts as a restart (``restarts``) and is logged as an error with its exit
  code, the restarts so far, the seconds before the next start (``backoff_s``) and —
  when the child writes to a pipe — its last lines; a child that cannot start
  (``spawn`` raises ``ReconcileError`` or ``OSError``) is logged and tried again after
  the same backoff, uncounted;
* the delay starts at ``Backoff.first`` seconds, doubles up to ``Backoff.most``, and is
  back at ``first`` after a child that ran longer than ``Backoff.stable_after``;
* ``on_exit`` may take an exit over (it returns True): the child is then started again
  at once, with no backoff and no error logged (the follower's unresumable copy);
* a piped child's output is read as it comes, so it never blocks on a full pipe.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Self

from reconciler.context import Logger
from reconciler.errors import ReconcileError
from reconciler.litestream import terminate


@dataclass(frozen=True)
class Backoff:
    """Seconds between a child's exit and its next start: ``first``, doubling up to
    ``most``; back at ``first`` after a run longer than ``stable_after`` seconds."""

    first: float
    most: float
    stable_after: float


@dataclass(frozen=True)
class Words:
    """The log messages of one kind of child (its own words, kept stable for operators'
    searches), and the log field that carries its last lines of output."""

    started: str
    exited: str
    cannot_start: str
    output: str = "output"


@dataclass(frozen=True)
class Exit:
    """How a child ended: its exit code (negative: killed by that signal) and its last
    lines of piped output (empty when its output is not piped to us)."""

    code: int
    tail: tuple[str, ...]

    @property
    def said(self) -> str:
        return " | ".join(self.tail)


class Respawner:
    """Runs ``spawn()``'s child again and again in a thread of its own (see module doc).

    ``spawn`` starts one child (``stdout=PIPE`` to have its output read and its last
    ``keep`` lines reported, lines containing any of ``ignore`` left out); it raises
    ``ReconcileError`` or ``OSError`` when it cannot. ``on_start(proc)`` runs once a
    child started, before its output is read (keep it short for a piped child);
    ``on_exit(exit)`` after each counted exit, True to start again at once."""

    def __init__(self, name: str, spawn: Callable[[], subprocess.Popen[bytes]], log: Logger,
                 backoff: Backoff, words: Words, *,
                 on_start: Callable[[subprocess.Popen[bytes]], None] | None = None,
                 on_exit: Callable[[Exit], bool] | None = None,
                 keep: int = 3, ignore: tuple[str, ...] = ()) -> None:
        self.name = name
        self.log = log
        self.backoff = backoff
        self.words = words
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._spawn = spawn
        self._on_start = on_start or (lambda _proc: None)
        self._on_exit = on_exit or (lambda _exit: False)
        self._keep, self._ignore = keep, ignore
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def start(self) -> Respawner:
        self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def run(self) -> None:
        """The loop itself (``start`` runs it in a thread); returns once stopped."""
        delay = self.backoff.first
        while not self._stop.is_set():
            began = time.monotonic()
            ended = self._once()
            if self._stop.is_set():
                return
            if time.monotonic() - began > self.backoff.stable_after:
                delay = self.backoff.first
            if ended is not None:
                self.restarts += 1
                if self._on_exit(ended):
                    continue  # taken over: there is nothing to wait for
                said = {self.words.output: ended.said} if ended.tail else {}
                self.log.error(self.words.exited, exit_code=ended.code,
                               restarts=self.restarts, backoff_s=delay, **said)
            if self._stop.wait(delay):
                return
            delay = min(self.backoff.most, delay * 2)

    def _once(self) -> Exit | None:
        """One child from start to end; None when it could not start."""
        try:
            proc = self._spawn()
        except (ReconcileError, OSError) as exc:
            self.log.error(self.words.cannot_start, error=str(exc))
            self.proc = None
            return None
        self.proc = proc
        if self._stop.is_set():  # a stop that came while it started saw no child
            proc.terminate()
        else:
            self.log.info(self.words.started, pid=proc.pid, restarts=self.restarts)
            self._on_start(proc)
        tail: deque[str] = deque(maxlen=self._keep)
        if proc.stdout is not None:
            with proc.stdout:
                for raw in proc.stdout:
                    line = raw.decode(errors="replace").strip()
                    if line and not any(word in line for word in self._ignore):
                        tail.append(line)
        return Exit(proc.wait(), tuple(tail))

    def signal_stop(self) -> None:
        """No start after this; SIGTERM to the running child."""
        self._stop.set()
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)

    def stop(self, kill_after: float, join: float) -> None:
        """No start after this; the running child stopped (SIGTERM, SIGKILL after
        ``kill_after`` seconds), then the loop's thread joined (up to ``join``)."""
        self._stop.set()
        if self.proc is not None:
            terminate(self.proc, kill_after)
        if self._thread is not None:
            self._thread.join(join)


class Respawned:
    """Base of a class that keeps one child running through its ``Respawner``
    (``_respawn``, set by its ``__init__``): the current child and the restarts so far
    read as its own attributes."""

    _respawn: Respawner

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        """The current (or last) child; None before the first start or after one that
        could not start."""
        return self._respawn.proc

    @property
    def restarts(self) -> int:
        return self._respawn.restarts

    def start(self) -> Self:
        self._respawn.start()
        return self
