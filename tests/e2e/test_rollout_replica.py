"""``rollout.snapshot: replica`` (issue 14 item 5) with real Litestream: a migration
that fails after a step committed puts the tenant back from its replica to exactly
the rows and schema it had before the migration started — no local copy taken — the
migrated file retired, never deleted, and the tenant left ``failed`` (with its
backoff) so the rollout halts rather than retrying at once."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from reconciler.backup import LITESTREAM_TABLES
from reconciler.registry import Registry
from tests.conftest import RECONCILE, Fleet
from tests.e2e.backupkit import SYNC, Daemon, titles, wait_for, write

TENANTS = {"acme": {"region": "eu"}, "hooli": {"region": "us"}}
# v4 commits (a new column, every title rewritten); v5 then fails (the table exists)
V4 = "ALTER TABLE notes ADD COLUMN archived INTEGER NOT NULL DEFAULT 0;\n" \
     "UPDATE notes SET title = 'rewritten by v4';\n"
V5 = "CREATE TABLE users (id INTEGER PRIMARY KEY);\n"


def _schema(path: Path) -> list[tuple[str, str]]:
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        return [(n, s) for n, s in conn.execute(
            "SELECT name, sql FROM sqlite_schema WHERE sql IS NOT NULL ORDER BY name")
            if n not in LITESTREAM_TABLES]
    finally:
        conn.close()


def _version(path: Path) -> int:
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def _declare(fleet: Fleet, replica: str, schema: int | None) -> None:
    extra: dict[str, Any] = {} if schema is None else {"schema": schema}
    fleet.declare(TENANTS, backup={"replica": replica, "sync_interval": SYNC,
                                   "lag_threshold": "2s"},
                  rollout={"canary": 1, "max_failures": 0, "snapshot": "replica"}, **extra)


def _prepare(fleet: Fleet, replica: str, daemon: Daemon) -> tuple[list[str], list[Any]]:
    """Rows written through routing at v3, replicated; returns (titles, schema)."""
    daemon.replicated(len(TENANTS))
    live = fleet.path("acme", "eu")
    for title in ("first", "second", "third"):
        write(fleet, "acme.yoursaas.com", title)
    assert _version(live) == 3
    return titles(live), _schema(live)


def _break(fleet: Fleet, replica: str) -> None:
    fleet.write_migration("0004_archive_flag.sql", V4)
    fleet.write_migration("0005_broken.sql", V5)
    _declare(fleet, replica, None)  # to the latest: the daemon's next pass migrates


def _settled(fleet: Fleet) -> bool:
    """The put-back finished: no journal, acme at v3 and held — ``failed``, or
    ``pending`` when the resuming pass's plan holds it for the halted rollout."""
    with Registry.reading(fleet.central) as reg:
        row = reg.tenant("acme") if reg is not None else None
        return reg is not None and row is not None and row.schema_version == 3 and \
            row.status in ("failed", "pending") and row.failures == 1 and \
            reg.journal_row("acme") is None and reg.conn.execute(
                "SELECT 1 FROM events WHERE tenant = 'acme' AND action = 'pitr'").fetchone() \
            is not None


@pytest.mark.parametrize("point", ["pitr:after-journal", "pitr:after-retire",
                                   "restore:after-link"])
def test_a_put_back_killed_at_each_phase_is_finished_by_the_next_daemon(
        fleet: Fleet, tmp_path: Path, point: str) -> None:
    replica = (tmp_path / "backups").as_uri()
    _declare(fleet, replica, 3)
    first = Daemon(fleet)
    try:
        rows, schema = _prepare(fleet, replica, first)
    finally:
        assert first.stop() == 0
    _break(fleet, replica)
    env = {**os.environ, "RECONCILE_CONFIG": str(fleet.config), "RECONCILE_CRASH_AT": point}
    with (fleet.root / "crashed.log").open("w") as log:
        crashed = subprocess.Popen([RECONCILE, "daemon", "--log-format", "json"],
                                   cwd=fleet.root, env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
        assert crashed.wait(120) == -signal.SIGKILL  # killed mid-put-back
    with Registry.reading(fleet.central) as reg:
        assert reg is not None and reg.journal_row("acme") is not None
    again = Daemon(fleet)  # its first pass finishes the journal
    try:
        wait_for(lambda: _settled(fleet), 60, "the put-back finished")
        live = fleet.path("acme", "eu")
        assert _version(live) == 3 and titles(live) == rows and _schema(live) == schema
        retired = sorted((fleet.data / "_retired").glob("acme-eu-*.db"))
        assert retired and _version(retired[-1]) == 4  # the migrated file, kept
    finally:
        assert again.stop() == 0


def test_a_migration_failing_after_a_committed_step_is_put_back_from_the_replica(
        fleet: Fleet, tmp_path: Path) -> None:
    replica = (tmp_path / "backups").as_uri()
    _declare(fleet, replica, 3)
    daemon = Daemon(fleet)
    try:
        daemon.replicated(len(TENANTS))
        live = fleet.path("acme", "eu")
        for title in ("first", "second", "third"):
            write(fleet, "acme.yoursaas.com", title)
        rows, schema = titles(live), _schema(live)
        assert _version(live) == 3

        fleet.write_migration("0004_archive_flag.sql", V4)
        fleet.write_migration("0005_broken.sql", V5)
        _declare(fleet, replica, None)  # to the latest: the daemon's next pass migrates

        def put_back() -> bool:
            with Registry.reading(fleet.central) as reg:
                return reg is not None and reg.conn.execute(
                    "SELECT 1 FROM events WHERE tenant = 'acme' AND action = 'putback' AND "
                    "outcome != 'started'").fetchone() is not None
        wait_for(put_back, 60, "acme's migration to fail and be put back")

        # exactly the pre-migration rows and schema, at v3, from a new lineage
        assert _version(live) == 3
        assert titles(live) == rows == ["first", "second", "third"]
        assert _schema(live) == schema
        with Registry.reading(fleet.central) as reg:
            assert reg is not None
            row = reg.tenant("acme")
            assert row is not None and row.schema_version == 3 and row.failures == 1
            assert row.retry_at is not None and row.retry_at > time.time()  # backoff kept
            assert row.status == "failed" and reg.journal_row("acme") is None
            events = [e for e in reg.conn.execute(
                "SELECT action, outcome, detail FROM events WHERE tenant = 'acme' ORDER BY id")]
        assert any(a == "pitr" and '"txid"' in (d or "") for a, _o, d in events)
        assert [o for a, o, _d in events if a == "putback"] == ["started", "ok"], events
        assert any("put back from the replica at txid" in (d or "") for _a, _o, d in events)
        # the migrated file was retired, not deleted: v4, with the rewritten titles
        retired = sorted((fleet.data / "_retired").glob("acme-eu-*.db"))
        assert retired, list((fleet.data / "_retired").iterdir())
        assert _version(retired[-1]) == 4
        assert set(titles(retired[-1])) == {"rewritten by v4"}
        assert not any(fleet.data.glob("eu/.acme.db.snapshot"))  # no local copy taken
        # the rollout halted after its canary: hooli was never migrated
        assert _version(fleet.path("hooli", "us")) == 3
        # its restored file is replicated again (a new lineage) while it waits, failed,
        # for an operator (routing refuses a failed tenant, as with a local snapshot)
        wait_for(lambda: str(live) in daemon.control.databases(), what="re-registered")
    finally:
        assert daemon.stop() == 0
