"""Soak: a fleet of 1000+ tenants replicated by one Litestream (its directory watcher
once crashed around 400 databases, Litestream #1051; we register files explicitly),
written to, Litestream killed and restarted, every tenant caught up. Slow: run with
``pytest -m slow tests/e2e/test_backups_soak.py -s`` (prints what it measured)."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import Fleet
from tests.e2e.backupkit import Daemon, declare, status, titles, wait_for, write

SOAK_TENANTS = int(os.environ.get("SOAK_TENANTS", "1000"))


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.mark.slow
def test_a_thousand_tenants_stay_replicated_through_writes_and_a_litestream_crash(
        fleet: Fleet, tmp_path: Path) -> None:
    names = [f"t{i:05d}" for i in range(SOAK_TENANTS)]
    declare(fleet, {n: {"region": ("eu", "us")[i % 2]} for i, n in enumerate(names)},
            (tmp_path / "backups").as_uri())
    started = time.monotonic()
    daemon = Daemon(fleet)
    try:
        daemon.replicated(SOAK_TENANTS, 900)  # created by the first pass, registered
        first = time.monotonic() - started
        pid = daemon.litestream_pid()
        assert pid is not None
        rss = _rss_mb(pid)
        sample = random.Random(14).sample(names, 20)
        for n in sample:
            write(fleet, f"{n}.yoursaas.com", f"soak-{n}")
        region = {n: ("eu", "us")[i % 2] for i, n in enumerate(names)}
        for n in sample:
            daemon.caught_up(fleet.path(n, region[n]), time.time() - 2)

        os.kill(pid, signal.SIGKILL)
        crashed = time.monotonic()
        for n in sample[:5]:
            write(fleet, f"{n}.yoursaas.com", f"after-crash-{n}")  # the fleet serves on
        wait_for(lambda: daemon.litestream_pid() not in (None, pid), 120, "restart")
        daemon.replicated(SOAK_TENANTS, 600)
        recovered = time.monotonic() - crashed
        data = wait_for(lambda: (s := status(fleet))["backups"]["replicated"] == SOAK_TENANTS
                        and s, timeout=120, what="every tenant replicated")
        assert data["backups"]["lagging"] == 0 and data["backups"]["without"] == 0
        n = sample[0]
        copy = fleet.root / "soak-check.db"
        daemon.caught_up(fleet.path(n, region[n]), time.time())
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 2))
        wait_for(lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) > at)
        out = fleet.run("restore", n, "--at", at, "--to", str(copy))
        assert out.returncode == 0, out.stderr
        assert titles(copy) == [f"soak-{n}", f"after-crash-{n}"]
        print(f"\nsoak: {SOAK_TENANTS} tenants created and replicated in {first:.0f} s; "
              f"litestream RSS {rss:.0f} MB; after SIGKILL all re-replicated in "
              f"{recovered:.0f} s")
    finally:
        assert daemon.stop() == 0
