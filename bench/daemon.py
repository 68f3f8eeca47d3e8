"""The daemon at rest: peak memory on a converged fleet, and CPU time while idle.

Why: the daemon runs for months on a machine that also serves the tenants; what it
costs while nothing changes is what it costs. We start the real ``reconcile daemon``
(JSON logs), wait for its first pass to finish, then read its peak RSS (``VmHWM``)
and its CPU time (user + system, from ``/proc``) at the start and end of 30 idle
seconds (the resync interval is the default 60 s, so no pass falls inside them).
The baselines are the budgets the issue sets (RSS ≤ 60 MB at 10k tenants, idle CPU
< 0.1 s per 30 s); the note gives a bare interpreter's RSS for scale.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench import fleets
from bench.noop import RECONCILE
from bench.timing import Row

IDLE_SECONDS = 30.0
RSS_BUDGET_MB = 60.0
CPU_BUDGET_S = 0.1


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc status")


def bare_interpreter_rss_mb() -> float:
    out = subprocess.run([sys.executable, "-c", "import sqlite3, sys\n"
                          "print(open('/proc/self/status').read())"],
                         capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def run(size: int, root: Path, idle: float = IDLE_SECONDS) -> list[Row]:
    fleet = fleets.get(fleets.FleetSpec(size), root)
    proc = subprocess.Popen([RECONCILE, "daemon", "-c", str(fleet.config), "--log-format",
                             "json"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stderr is not None
    try:
        started = time.monotonic()
        for line in proc.stderr:
            try:
                event = json.loads(line).get("event")
            except ValueError:
                continue
            if event == "pass finished":
                break
        else:
            raise SystemExit(f"the daemon exited ({proc.wait()}) before finishing a pass")
        first_pass = time.monotonic() - started
        cpu0 = cpu_seconds(proc.pid)
        time.sleep(idle)
        idle_cpu = (cpu_seconds(proc.pid) - cpu0) * (IDLE_SECONDS / idle)
        rss = peak_rss_mb(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    per = f"{size // 1000}k"
    bare = bare_interpreter_rss_mb()
    at_10k = size == 10_000  # the budget is for 10k tenants
    return [
        Row(f"daemon peak RSS, {per} tenants", "`reconcile daemon` VmHWM", rss,
            f"budget {RSS_BUDGET_MB:.0f} MB (set for 10k)", RSS_BUDGET_MB,
            "≤ 1× budget" if at_10k else "", 1.0 if at_10k else None,
            unit="MB", note=f"bare python + sqlite3: {bare:.1f} MB; first pass took "
            f"{first_pass:.1f} s including start-up"),
        Row(f"daemon idle CPU, {per} tenants, per 30 s", "`reconcile daemon` user+sys",
            idle_cpu, f"budget {CPU_BUDGET_S} s", CPU_BUDGET_S, "≤ 1× budget", 1.0,
            unit="s (CPU)"),
    ]
