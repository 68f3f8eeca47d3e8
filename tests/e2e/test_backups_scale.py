"""Soak beyond one Litestream process's reach (issue 14 at 10k tenants): one
``litestream replicate`` holds 5-6 file descriptors per database and, past its limit,
fails every open with EMFILE (seen: stalled at ~4,000 of 10,000 at a 20,000 limit).
The daemon splits the fleet across processes; this proves every tenant of a fleet
larger than one process can hold gets replicated, none of them runs out of
descriptors, and a crashed process is restarted alone and catches up.

Slow: ``SCALE_TENANTS=10000 pytest -m slow -s tests/e2e/test_backups_scale.py`` (default
4,000: already more than one process could hold here)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from reconciler import replicators
from reconciler.backup import process_count, shard_of
from tests.conftest import Fleet
from tests.e2e.backupkit import Daemon, declare, wait_for, write
from tests.e2e.processkit import litestream_children, synced

SCALE_TENANTS = int(os.environ.get("SCALE_TENANTS", "4000"))


@pytest.mark.slow
def test_a_fleet_larger_than_one_litestream_can_hold_is_fully_replicated_by_several(
        fleet: Fleet, tmp_path: Path) -> None:
    names = [f"t{i:05d}" for i in range(SCALE_TENANTS)]
    declare(fleet, {n: {"region": ("eu", "us")[i % 2]} for i, n in enumerate(names)},
            (tmp_path / "backups").as_uri())
    want = process_count(None, SCALE_TENANTS, replicators.nofile_limit())
    assert want > 1, "the fleet fits one process here: raise SCALE_TENANTS"
    started = time.monotonic()
    daemon = Daemon(fleet)
    try:
        wait_for(lambda: synced(fleet, want) == SCALE_TENANTS, 3600, "every tenant synced")
        first = time.monotonic() - started
        pids = litestream_children(daemon)
        assert sorted(pids) == list(range(want))
        fds = {k: len(os.listdir(f"/proc/{p}/fd")) for k, p in pids.items()}
        limit = replicators.nofile_limit()
        assert all(n < limit for n in fds.values()), fds
        assert "too many open files" not in (fleet.root / "daemon.log").read_text()

        victim = want - 1
        os.kill(pids[victim], signal.SIGKILL)
        crashed = time.monotonic()
        name = next(n for n in names if shard_of(n, want) == victim)
        write(fleet, f"{name}.yoursaas.com", "while-down")  # the fleet keeps serving
        wait_for(lambda: litestream_children(daemon).get(victim) not in (None, pids[victim]),
                 120, "restart")
        assert {k: p for k, p in litestream_children(daemon).items() if k != victim} == \
            {k: p for k, p in pids.items() if k != victim}
        wait_for(lambda: synced(fleet, want) == SCALE_TENANTS, 1800, "caught up")
        print(f"\nscale: {SCALE_TENANTS} tenants over {want} Litestream processes, all "
              f"created and replicated {first:.0f} s after the daemon started; "
              f"descriptors per process {sorted(fds.values())} (limit {limit}); process "
              f"{victim} SIGKILLed, restarted alone, all synced again after "
              f"{time.monotonic() - crashed:.0f} s")
    finally:
        assert daemon.stop() == 0
