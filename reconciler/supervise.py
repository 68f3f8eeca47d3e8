"""Run work that executes migrations in a child process, so an exit no ``except`` can
catch cannot pass for success.

Why: a ``.py`` migration runs in-process, and ``os._exit(0)`` (or ``os.abort()``, a
signal to itself, a crash in an extension) ends the process at once — no ``finally``,
no exit code of ours. Run in-process, ``reconcile apply`` would then exit 0 having
done half a pass, and ``validate`` would report a catalog "ok" that never finished
its dry run. Here the parent waits for the child and knows the child's own answer
only when the child delivered it through a pipe before exiting.

Invariants:
* the parent's exit code is the child's own return value, or — when the child ended
  without delivering one — ``EXIT_UNEXPECTED`` (1) with a message on stderr; a child
  killed by a signal makes the parent die by the same signal (so ``SIGKILL`` in a
  crash test still reads as ``-9`` to whoever started the command);
* the child never outlives the parent (``PR_SET_PDEATHSIG`` on Linux): killing the
  ``reconcile`` process stops the work, as it did in-process;
* ``SIGTERM``/``SIGHUP`` sent to the parent are forwarded to the child; ``SIGINT``
  from a terminal reaches both (same process group) and only the child acts on it;
* messages name the parent's pid (``started_pid``: the process the user started).
Linux and other POSIX systems only (``os.fork``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

EXIT_UNEXPECTED = 1
SUPERVISOR_ENV = "RECONCILE_SUPERVISOR_PID"  # set in a child: the pid the user started
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Ended:
    """How a child ended without delivering its answer."""

    status: int  # the raw wait status

    def describe(self) -> str:
        if os.WIFSIGNALED(self.status):
            sig = os.WTERMSIG(self.status)
            return f"was killed by signal {sig} ({signal.Signals(sig).name})"
        return f"exited with status {os.waitstatus_to_exitcode(self.status)}"

    @property
    def signal(self) -> int | None:
        return os.WTERMSIG(self.status) if os.WIFSIGNALED(self.status) else None


def in_child(work: Callable[[Callable[[str], None]], str]
             ) -> tuple[str | None, Ended | None, list[str]]:
    """Run ``work(note)`` in a forked child. Returns (its answer, None, notes) when it
    delivered one, else (None, how it ended, the notes it sent before ending).

    ``work`` answers with one line of text; ``note(text)`` sends a line to the parent at
    once (e.g. which migration is running, to name it when the child dies). Call only
    while the process has a single thread."""
    read_fd, write_fd = os.pipe()
    parent = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller's code
        os.close(read_fd)
        _die_with(parent)
        os.environ[SUPERVISOR_ENV] = str(parent)
        code = 0
        with os.fdopen(write_fd, "w", buffering=1) as pipe:
            def note(text: str) -> None:
                pipe.write("n" + text.replace("\n", " ") + "\n")
                pipe.flush()
            try:
                answer = work(note)
                pipe.write("r" + answer.replace("\n", " ") + "\n")
            except SystemExit as exc:  # no answer: the parent reports how it ended
                code = exc.code if isinstance(exc.code, int) else EXIT_UNEXPECTED
            except BaseException:
                traceback.print_exc()
                code = EXIT_UNEXPECTED
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
        os._exit(code)
    os.close(write_fd)
    forwarded = _forward_signals(pid)
    try:
        with os.fdopen(read_fd, "r") as pipe:
            lines = pipe.read().splitlines()
        _pid, status = _wait(pid)
    finally:
        for sig, previous in forwarded.items():
            signal.signal(sig, previous)
    notes = [line[1:] for line in lines if line.startswith("n")]
    results = [line[1:] for line in lines if line.startswith("r")]
    if results:
        return results[-1], None, notes
    return None, Ended(status), notes


def started_pid() -> int:
    """The pid of the ``reconcile`` process the user started: the supervising parent
    when this process is its child, else this process (named in the fleet lock)."""
    parent = os.environ.get(SUPERVISOR_ENV, "")
    return int(parent) if parent.isdigit() and int(parent) == os.getppid() else os.getpid()


def _wait(pid: int) -> tuple[int, int]:
    while True:
        try:
            return os.waitpid(pid, 0)
        except InterruptedError:  # pragma: no cover — PEP 475 retries, kept for clarity
            continue


def _die_with(parent: int) -> None:
    """Ask the kernel to SIGKILL this child when its parent dies (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the parent's death goes unnoticed
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(EXIT_UNEXPECTED)


def _forward_signals(child: int) -> dict[int, signal.Handlers | Callable[..., object] | int |
                                          None]:
    def forward(sig: int, _frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, sig)

    previous: dict[int, signal.Handlers | Callable[..., object] | int | None] = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        previous[sig] = signal.signal(sig, forward)
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.SIG_IGN)
    return previous


def die_like(ended: Ended) -> None:
    """End this process by the signal that killed the child, if one did (returns
    otherwise)."""
    sig = ended.signal
    if sig is None:
        return
    with contextlib.suppress(OSError, ValueError):  # SIGKILL's handler cannot be set
        signal.signal(sig, signal.SIG_DFL)
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), sig)


def command(run: Callable[[], int]) -> int:
    """The exit code of ``run()`` executed in a child; ``EXIT_UNEXPECTED`` with a
    message when the child ended without returning one (this process dies by the
    child's signal if one killed it)."""
    answer, ended, _notes = in_child(lambda _note: str(run()))
    if answer is not None:
        return int(answer)
    assert ended is not None
    die_like(ended)
    print(f"error: the pass ended unexpectedly: its process {ended.describe()} before it "
          "finished — most likely a migration ended it (os._exit, os.abort, a signal). "
          "Tenants it was migrating stay `migrating`; the next `reconcile` re-checks them as "
          "after a crash. Find the step with `reconcile history` and fix it.",
          file=sys.stderr)
    return EXIT_UNEXPECTED
