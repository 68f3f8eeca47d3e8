"""The restart-with-backoff loop shared by the daemon's Litestream processes and its
registry followers (``reconciler.respawn``), driven with real short-lived Python
children; log lines captured with structlog's own ``capture_logs``."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

import structlog
from structlog.testing import capture_logs

from reconciler.respawn import Backoff, Exit, Respawner, Words

WORDS = Words(started="child started", exited="child exited; restarting",
              cannot_start="cannot start child", output="said")
QUICK = Backoff(first=0.02, most=0.08, stable_after=60.0)


def child(code: str, piped: bool = True) -> Callable[[], subprocess.Popen[bytes]]:
    """A spawn that starts ``python -c code`` (its stdout and stderr piped to us)."""
    def spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE if piped else None,
                                stderr=subprocess.STDOUT if piped else None)
    return spawn


def until(exits: int, spawn: Callable[[], subprocess.Popen[bytes]],
          backoff: Backoff = QUICK, take_over: bool = False, **options: Any
          ) -> tuple[Respawner, list[Exit]]:
    """A Respawner of ``spawn`` run in this thread until ``exits`` children ended; it
    and the exits seen (``take_over``: what its ``on_exit`` answers)."""
    seen: list[Exit] = []
    runners: list[Respawner] = []

    def count(ended: Exit) -> bool:
        seen.append(ended)
        if len(seen) >= exits:
            runners[0].signal_stop()
        return take_over
    runner = Respawner("t", spawn, structlog.get_logger(), backoff, WORDS, on_exit=count,
                       **options)
    runners.append(runner)
    worker = threading.Thread(target=runner.run)
    worker.start()
    worker.join(30)
    assert not worker.is_alive(), "the loop did not stop"
    return runner, seen


def events(logs: list[MutableMapping[str, Any]], name: str
           ) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["event"] == name]


def test_an_exiting_child_is_restarted_with_doubling_backoff_up_to_the_limit() -> None:
    with capture_logs() as logs:
        runner, seen = until(5, child("import sys; sys.exit(3)"))
    assert [e.code for e in seen] == [3] * 5
    exited = events(logs, "child exited; restarting")
    assert [e["backoff_s"] for e in exited] == [0.02, 0.04, 0.08, 0.08, 0.08]
    assert [e["restarts"] for e in exited] == [1, 2, 3, 4, 5]
    assert all(e["exit_code"] == 3 and e["log_level"] == "error" for e in exited)
    started = events(logs, "child started")
    assert [e["restarts"] for e in started] == [0, 1, 2, 3, 4]
    assert len({e["pid"] for e in started}) == 5
    assert runner.restarts == 5


def test_the_exit_is_logged_with_the_last_lines_the_child_wrote_to_its_pipe() -> None:
    code = ("import sys\n"
            "for i in range(20000): print('applied updates', i)\n"  # > a pipe's 64 KiB
            "for w in ('one', 'two', 'three', 'four'): print(w, file=sys.stderr)\n"
            "sys.exit(2)")
    with capture_logs() as logs:
        _, [ended] = until(1, child(code), ignore=("applied updates",))
    assert ended == Exit(2, ("two", "three", "four"))
    [exited] = events(logs, "child exited; restarting")
    assert exited["said"] == "two | three | four" and exited["exit_code"] == 2


def test_a_child_whose_output_is_not_piped_is_logged_without_lines() -> None:
    with capture_logs() as logs:
        _, seen = until(1, child("import sys; sys.exit(1)", piped=False))
    assert seen == [Exit(1, ())]
    [exited] = events(logs, "child exited; restarting")
    assert "said" not in exited


def test_a_run_longer_than_stable_after_starts_the_backoff_over(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.write_text("0")
    # runs 1-3 exit at once, run 4 stays up past stable_after, run 5 exits at once
    code = (f"import pathlib, time; p = pathlib.Path({str(runs)!r}); n = int(p.read_text()) + 1\n"
            "p.write_text(str(n))\n"
            "if n == 4: time.sleep(0.5)\n")
    backoff = Backoff(first=0.02, most=1.0, stable_after=0.3)
    with capture_logs() as logs:
        until(5, child(code), backoff)
    delays = [e["backoff_s"] for e in events(logs, "child exited; restarting")]
    assert delays == [0.02, 0.04, 0.08, 0.02, 0.04]


def test_a_child_that_cannot_start_is_retried_and_not_counted_as_a_restart(
        tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-binary")
    tries: list[float] = []

    def spawn() -> subprocess.Popen[bytes]:
        tries.append(time.monotonic())
        if len(tries) < 3:
            return subprocess.Popen([missing])  # FileNotFoundError, a real exec failure
        return child("import sys; sys.exit(0)")()
    with capture_logs() as logs:
        runner, _ = until(1, spawn)
    failed = events(logs, "cannot start child")
    assert len(failed) == 2 and missing in failed[0]["error"]
    assert runner.restarts == 1 and len(events(logs, "child started")) == 1
    assert tries[2] - tries[1] >= 0.04 - 0.005  # the backoff doubled meanwhile


def test_an_exit_taken_over_restarts_at_once_without_backoff_or_error() -> None:
    began = time.monotonic()
    with capture_logs() as logs:
        _, seen = until(3, child("import sys; sys.exit(4)"),
                        Backoff(first=30.0, most=30.0, stable_after=60.0), take_over=True)
    assert len(seen) == 3 and time.monotonic() - began < 20  # never waited 30 s
    assert events(logs, "child exited; restarting") == []


def test_stop_ends_the_running_child_and_nothing_is_counted_or_started_after(
        tmp_path: Path) -> None:
    started = tmp_path / "started"
    code = (f"import pathlib, time; pathlib.Path({str(started)!r}).touch(); "
            "time.sleep(60)")
    runner = Respawner("respawn-stop", child(code), structlog.get_logger(), QUICK, WORDS)
    with capture_logs() as logs:
        runner.start()
        deadline = time.monotonic() + 20
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        proc = runner.proc
        assert proc is not None and proc.poll() is None
        runner.stop(kill_after=5.0, join=10.0)
        assert proc.poll() is not None and proc.returncode < 0  # SIGTERM ended it
        assert "respawn-stop" not in {t.name for t in threading.enumerate()}
    assert runner.restarts == 0 and runner.stopping
    assert [e["event"] for e in logs] == ["child started"]
