"""One agent per region (issue 15 item 1): a second agent for a region is refused.

A fresh user cloned the repository on a third "host" and started `reconcile daemon
--region eu` there while eu's agent ran: it created an empty copy of an eu tenant and
served it, and replicated its registry over eu's. Now it is refused before it writes
anything; the region's own agent restarts as before."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import tempfile
from pathlib import Path

from reconciler import litestream
from reconciler.backup import registry_url
from tests.conftest import RECONCILE
from tests.e2e.xmovekit import Host, Hosts, settle


def replica_has_fleet_id(url: str) -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.db"
        try:
            litestream.restore(url, out, None)
        except Exception:
            return False
        conn = sqlite3.connect(out)
        try:
            return bool(conn.execute("SELECT count(*) FROM fleet WHERE key = 'id'"
                                     ).fetchone()[0] == 1)
        except sqlite3.Error:
            return False
        finally:
            conn.close()


def test_a_second_agent_for_a_region_is_refused_and_writes_nothing(
        hosts: Hosts, tmp_path: Path) -> None:
    hosts.declare({"aaron": "eu", "acme": "us"})
    hosts.start()
    eu = hosts["eu"]
    settle(lambda: eu.status_of("aaron") == "active"
           and hosts["us"].status_of("acme") == "active", "both created")
    url = registry_url(hosts.replica, "eu")
    settle(lambda: replica_has_fleet_id(url), "eu's registry replicated")

    intruder = Host(tmp_path / "host-eu2", "eu")
    shutil.copy(eu.fleet.config, intruder.fleet.config)
    once = subprocess.run([RECONCILE, "--region", "eu"], cwd=intruder.fleet.root,
                          capture_output=True, text=True, timeout=120)
    assert once.returncode == 1, once.stderr
    assert "region eu already has an agent" in once.stderr
    assert "Traceback" not in once.stderr
    intruder.start()
    assert intruder.wait_dead(120) == 1
    log = intruder.log_path.read_text()
    assert "region eu already has an agent" in log and "litestream restore -o" in log
    assert not intruder.central.exists()
    assert not intruder.path("aaron").exists()
    assert replica_has_fleet_id(url)

    eu.stop()  # the region's own agent restarts as before
    before = len(eu.registry("SELECT id FROM runs"))
    eu.start()
    settle(lambda: len(eu.registry("SELECT id FROM runs")) > before, "a pass after restart")
    assert eu.alive()
    assert eu.status_of("aaron") == "active"
