"""Backups (issue 14): what continuous replication costs applications and the daemon.

Two measurements, on a scratch copy of a generated WAL fleet (Litestream adds tables
and state to every file it replicates, so the cached fleets are never used directly):

* **write throughput** — an application writing small transactions (one ``INSERT``
  each, through ``Router.connect`` per transaction) round-robin over 50 tenants for a
  fixed time, with the daemon running and ``settings.backup`` on (Litestream
  replicating every tenant to a ``file://`` replica) against the same loop with the
  daemon running without backups; the two alternate, so both see the same noise.
  Ratio = transactions per second with backups / without (≥ 1 is free).
* **daemon memory** — peak RSS of ``reconcile daemon`` plus the RSS of its Litestream
  child once every tenant is registered and synced, against the daemon without
  backups on the same fleet: the memory backups add, at 1k and 10k tenants.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from bench import fleets
from bench.daemon import peak_rss_mb
from bench.noop import RECONCILE
from bench.timing import Row, median
from reconciler import litestream
from reconciler.routing import Router

WRITERS_TENANTS = 50
WRITE_SECONDS = 5.0


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def scratch(size: int, root: Path) -> Path:
    """A private converged WAL fleet of ``size`` tenants, generated under its own root
    (never a copy of the shared cached fleets: their registry names their own files,
    and Litestream would write to those)."""
    private = root / "backups-scratch"
    if private.exists():
        shutil.rmtree(private)
    return fleets.get(fleets.FleetSpec(size, mode="wal"), private).root


def write_config(base: Path, size: int, backup: bool) -> None:
    text = fleets.tenants_yaml(size)
    if backup:
        text = text.replace("settings:\n", "settings:\n  backup: {replica: replica, "
                            "sync_interval: 1s, lag_threshold: 10s}\n", 1)
    (base / "tenants.yaml").write_text(text)


class Daemon:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.started = time.monotonic()  # Litestream starts before the first pass
        self.proc = subprocess.Popen([RECONCILE, "daemon", "-c", str(base / "tenants.yaml"),
                                      "--log-format", "json"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                if json.loads(line).get("event") == "pass finished":
                    break
            except ValueError:
                continue
        else:
            raise SystemExit(f"the daemon exited ({self.proc.wait()}) before a pass")
        # keep draining its log so it never blocks on a full pipe
        self._drain = subprocess.Popen(["cat"], stdin=self.proc.stderr,
                                       stdout=subprocess.DEVNULL)

    def replicated(self, n: int, timeout: float = 1800.0) -> float:
        """Seconds from the daemon's start until Litestream (all its processes) reports
        ``n`` databases synced: the fleet's first full replication."""
        central = self.base / "data" / "central.db"
        started = self.started
        while time.monotonic() - started < timeout:
            synced = 0
            for ctl in self.controls(central):
                with contextlib.suppress(Exception):
                    synced += sum(1 for d in ctl.databases().values()
                                  if d.synced_at is not None)
            if synced >= n:
                return time.monotonic() - started
            time.sleep(1.0)
        raise SystemExit(f"Litestream did not replicate {n} tenants in {timeout:.0f} s")

    @staticmethod
    def controls(central: Path) -> list[litestream.Control]:
        try:
            count = int((central.parent / ".litestream-processes").read_text())
        except (OSError, ValueError):
            count = 1
        return [litestream.Control(litestream.socket_path(central, k), timeout=60)
                for k in range(count)]

    def processes(self) -> int:
        return len(_children(self.proc.pid))

    def memory_mb(self) -> float:
        return peak_rss_mb(self.proc.pid) + sum(_rss_mb(c) for c in _children(self.proc.pid))

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._drain.wait()


def writes_per_second(base: Path, seconds: float, hold_open: bool = False) -> float:
    """Transactions per second; ``hold_open``: another connection keeps each written
    file open meanwhile (as Litestream does), so closing the application's connection
    never checkpoints and removes the WAL — the baseline that isolates Litestream's own
    work from that side effect."""
    hosts = [f"{fleets.tenant_name(i)}.bench.example" for i in range(WRITERS_TENANTS)]
    held = []
    if hold_open:
        import sqlite3

        with Router(base / "data" / "central.db") as router:
            for h in hosts:
                path = router.resolve(h).path
                conn = sqlite3.connect(path)
                conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()
                held.append(conn)
    n, end = 0, time.monotonic() + seconds
    try:
        with Router(base / "data" / "central.db") as router:
            while time.monotonic() < end:
                with router.connect(hosts[n % len(hosts)]) as db:
                    db.execute("INSERT INTO documents (title, body, created_at) VALUES "
                               "('bench', 'small transaction', '2026-01-01T00:00:00Z')")
                n += 1
    finally:
        for conn in held:
            conn.close()
    return n / seconds


def run(size: int, repeats: int, root: Path) -> list[Row]:
    base = scratch(size, root)
    per = f"{size // 1000}k"
    # memory: the daemon without backups, then with (every tenant registered and synced)
    write_config(base, size, backup=False)
    plain = Daemon(base)
    try:
        without_tps = [writes_per_second(base, WRITE_SECONDS)]
        held_tps = [writes_per_second(base, WRITE_SECONDS, hold_open=True)]
        without_mb = plain.memory_mb()
    finally:
        plain.stop()
    write_config(base, size, backup=True)
    backed = Daemon(base)
    try:
        first_sync = backed.replicated(size)
        with_mb, processes = backed.memory_mb(), backed.processes()
        with_tps = [writes_per_second(base, WRITE_SECONDS)]
    finally:
        backed.stop()
    for _ in range(max(0, repeats - 1)):  # alternate, so both see the same noise
        write_config(base, size, backup=False)
        d = Daemon(base)
        try:
            without_tps.append(writes_per_second(base, WRITE_SECONDS))
            held_tps.append(writes_per_second(base, WRITE_SECONDS, hold_open=True))
        finally:
            d.stop()
        write_config(base, size, backup=True)
        d = Daemon(base)
        try:
            d.replicated(size)
            with_tps.append(writes_per_second(base, WRITE_SECONDS))
        finally:
            d.stop()
    replica_mb = sum(f.stat().st_size for f in (base / "replica").rglob("*") if f.is_file()
                     ) / 2**20
    shutil.rmtree(base.parent, ignore_errors=True)
    return [
        Row(f"app writes/s with backups, 1-row txns over {WRITERS_TENANTS} of {per} tenants",
            "daemon + Litestream (file://, sync 1s)", 1.0 / median(with_tps),
            "daemon without backups", 1.0 / median(without_tps), unit="s per txn",
            note=f"{median(with_tps):.0f} vs {median(without_tps):.0f} txn/s "
            f"(ratio of seconds per transaction: > 1 = slower with backups)"),
        Row(f"app writes/s with backups vs files held open, {per} tenants",
            "daemon + Litestream (file://, sync 1s)", 1.0 / median(with_tps),
            "daemon without backups, each file held open", 1.0 / median(held_tps),
            unit="s per txn", note=f"{median(with_tps):.0f} vs {median(held_tps):.0f} "
            "txn/s: Litestream's own cost (its syncs take the write lock, its checkpoints)"),
        Row(f"daemon + Litestream memory, {per} tenants", "daemon VmHWM + litestream VmRSS",
            with_mb, "daemon VmHWM without backups", without_mb, unit="MB",
            note=f"added {with_mb - without_mb:.0f} MB; {processes} Litestream "
            f"process(es); every tenant synced {first_sync:.0f} s after the daemon started; "
            f"replica {replica_mb:.0f} MB"),
    ]


if __name__ == "__main__":  # pragma: no cover
    import sys

    for s in sys.argv[1:] or ["1000"]:
        for row in run(int(s), 1, fleets.DEFAULT_ROOT):
            print(row)
    os._exit(0)
