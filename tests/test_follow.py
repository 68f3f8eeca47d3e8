"""The region agent's heartbeat and regions rows (issue 15, ``reconciler.follow``),
written to real registries in tmp_path; log lines captured with structlog's own
``capture_logs``."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import structlog
from structlog.testing import capture_logs

from reconciler import desired, follow
from reconciler.registry import Registry
from reconciler.state import RegionRow

CONFIG = """\
version: 1
regions:
  eu: {endpoint: "https://eu.example.com"}
  us: {}
tenants: {}
"""


def test_region_rows_name_each_followed_copy_and_the_single_host_follows_none(
        tmp_path: Path) -> None:
    (tmp_path / "tenants.yaml").write_text(CONFIG)
    d = desired.load(tmp_path / "tenants.yaml", lambda _p: 0)
    follow_dir = d.settings.data_dir / "_follow"
    assert follow.region_rows(d, "eu") == (
        RegionRow("eu", "https://eu.example.com", True, None),
        RegionRow("us", None, False, str(follow_dir / "us.db")))
    assert follow.region_rows(d, None) == (
        RegionRow("eu", "https://eu.example.com", True, None), RegionRow("us", None, True, None))


def test_the_heartbeat_waits_for_the_registry_and_never_creates_it(tmp_path: Path) -> None:
    central = tmp_path / "central.db"
    beat = follow.Heartbeat(central, "eu", structlog.get_logger())
    beat.update("rev1", (RegionRow("eu", None, True, None),))
    assert not beat.write(time.time())
    assert not central.exists()
    Registry.open(central).close()
    assert beat.write(1000.0)
    beat.update("rev2", (RegionRow("eu", None, True, None), RegionRow("us", None, False, "/f")))
    assert beat.write(1001.0)
    beat.close()
    reg = Registry.open(central)
    assert reg.agent() == ("eu", follow.host_name(), "rev2", 1001.0)
    assert [r.name for r in reg.regions()] == ["eu", "us"]
    reg.close()


def test_a_busy_registry_skips_a_beat_says_so_once_and_beats_again_after(
        tmp_path: Path) -> None:
    central = tmp_path / "central.db"
    Registry.open(central).close()
    beat = follow.Heartbeat(central, "eu", structlog.get_logger())
    assert beat.write(1.0)
    holder = sqlite3.connect(central, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # a long write elsewhere
    with capture_logs() as logs:
        assert not beat.write(2.0)
        assert not beat.write(3.0)
    holder.execute("ROLLBACK")
    holder.close()
    assert [e["event"] for e in logs] == ["heartbeat not written; retrying every beat"]
    assert beat.write(4.0)
    beat.close()
    reg = Registry.open(central)
    agent = reg.agent()
    assert agent is not None and agent.heartbeat_at == 4.0
    reg.close()


def test_the_heartbeat_thread_keeps_the_row_fresh_until_stopped(tmp_path: Path) -> None:
    central = tmp_path / "central.db"
    Registry.open(central).close()
    beat = follow.Heartbeat(central, "us", structlog.get_logger(), beat=0.05).start()
    time.sleep(0.4)
    beat.stop()
    stopped = time.time()
    reg = Registry.open(central)
    agent = reg.agent()
    assert agent is not None and agent.heartbeat_at is not None
    assert stopped - agent.heartbeat_at < 0.3
    time.sleep(0.2)
    assert reg.agent() == agent  # nothing beats after stop
    reg.close()
