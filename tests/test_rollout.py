"""Unit tests of the rollout's parts: waves, the planner's hold on a halted rollout, the
worker (migrate + health gate + snapshot, on real SQLite files), and the progress line
(on a real pseudo-terminal)."""

from __future__ import annotations

import io
import os
import pty
import select
import sqlite3
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

import pytest
import structlog

from reconciler import migrations as migrations_mod
from reconciler import progress, rollout, snapshot, sqltext
from reconciler.actions import Action, Kind
from reconciler.desired import Desired
from reconciler.errors import RetryableError
from reconciler.migrations import Catalog
from reconciler.observe import Observed
from reconciler.plan import plan, rollout_key, waves
from tests.test_plan import catalog, desired, observed, row

# -------------------------------------------------------------------------- waves


def test_waves_put_the_canary_alone_first_then_batches_in_name_order() -> None:
    names = ["e", "a", "g", "c", "b", "f", "d"]
    assert waves(names, canary=1, batch=3) == (("a",), ("b", "c", "d"), ("e", "f", "g"))
    assert waves(list(reversed(names)), canary=1, batch=3) == waves(names, 1, 3)


def test_waves_without_canary_and_with_a_canary_larger_than_the_fleet() -> None:
    assert waves(["b", "a", "c"], canary=0, batch=2) == (("a", "b"), ("c",))
    assert waves(["b", "a"], canary=5, batch=2) == (("a", "b"),)
    assert waves([], canary=1, batch=2) == ()


# ------------------------------------------------------------- planner and halts


def halted_fleet(statuses: dict[str, str] | None = None) -> tuple[Desired, Catalog, Observed]:
    d = desired({n: {"region": "eu"} for n in ("a", "b", "c")})
    cat = catalog(3)
    rows = [row(n, version=2, status=(statuses or {}).get(n, "active")) for n in ("a", "b", "c")]
    obs = observed(rows, files={f"eu/{n}.db": 2 for n in ("a", "b", "c")})
    return d, cat, obs


def with_rollout(obs: Observed, table: dict[str, str]) -> Observed:
    return replace(obs, registry=replace(obs.registry, rollout=MappingProxyType(table)))


def test_a_halted_rollout_holds_its_tenants_as_pending_and_failed_ones_as_failed() -> None:
    d, cat, obs = halted_fleet({"a": "failed", "b": "pending"})
    key = rollout_key(d, cat)
    p = plan(d, with_rollout(obs, {key: "halted"}), cat)
    assert {a.tenant: a.kind for a in p.actions} == {
        "a": Kind.FAILED, "b": Kind.PENDING, "c": Kind.PENDING}
    assert p.waves == ()
    assert not p.changes and len(p.problems) == 3
    assert p.rollout_key == key


def test_retry_failed_or_a_changed_desired_state_resumes_a_halted_rollout() -> None:
    d, cat, obs = halted_fleet({"b": "pending"})
    key = rollout_key(d, cat)
    held = with_rollout(obs, {key: "halted"})
    retried = plan(d, held, cat, retry_failed=True)
    assert [a.kind for a in retried.actions] == [Kind.MIGRATE] * 3
    changed = desired({n: {"region": "eu"} for n in ("a", "b", "c")}, prune_limit=3)
    resumed = plan(changed, held, cat)
    assert [a.kind for a in resumed.actions] == [Kind.MIGRATE] * 3
    assert resumed.rollout_key != key


def test_a_pending_tenant_below_target_is_not_corrected_but_one_at_target_is() -> None:
    d = desired({"a": {"region": "eu"}, "b": {"region": "eu"}})
    obs = observed([row("a", version=2, status="pending"), row("b", version=3, status="pending")],
                   files={"eu/a.db": 2, "eu/b.db": 3})
    p = plan(d, obs, catalog(3))
    assert [(a.tenant, a.kind) for a in p.actions] == [("a", Kind.MIGRATE), ("b", Kind.CORRECT)]


def test_rollout_key_changes_with_migrations_checks_and_desired_state_only() -> None:
    d = desired({"a": {"region": "eu"}})
    cat = catalog(3)
    assert rollout_key(d, cat) == rollout_key(desired({"a": {"region": "eu"}}), catalog(3))
    edited = replace(cat, migrations=(*cat.migrations[:2],
                                      replace(cat.migrations[2], sha256="other")))
    assert rollout_key(d, edited) != rollout_key(d, cat)
    checked = replace(cat, checks=(migrations_mod.Check(
        3, Path("/fleet/migrations/checks/0003_x.sql"),
        (sqltext.Statement(1, "SELECT 1 WHERE 0"),)),))
    assert rollout_key(d, checked) != rollout_key(d, cat)
    assert rollout_key(desired({"a": {"region": "us"}}), cat) != rollout_key(d, cat)


# ------------------------------------------------------------- worker, real files

SCHEMA = "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL);\n"


def real_catalog(tmp_path: Path, third: str, check: str | None = None
                 ) -> migrations_mod.Catalog:
    d = tmp_path / "migrations"
    (d / "checks").mkdir(parents=True)
    (d / "0001_users.sql").write_text(SCHEMA)
    (d / "0002_names.sql").write_text("ALTER TABLE users ADD COLUMN name TEXT;\n")
    (d / "0003_third.sql").write_text(third)
    if check is not None:
        (d / "checks" / "0003_third.sql").write_text(check)
    return migrations_mod.load(d)


def tenant(tmp_path: Path, emails: list[str], version: int = 1, wal: bool = False) -> Path:
    path = tmp_path / "eu" / "t.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    if wal:
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(SCHEMA)
    conn.executemany("INSERT INTO users (email) VALUES (?)", [(e,) for e in emails])
    conn.execute(f"PRAGMA user_version = {version}")
    conn.commit()
    conn.close()
    return path


def content(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [*conn.iterdump(), str(conn.execute("PRAGMA user_version").fetchone()[0])]
    finally:
        conn.close()


def migrate_action(path: Path, target: int = 3, start: int = 1) -> Action:
    return Action(Kind.MIGRATE, "t", "eu", from_version=start, to_version=target, path=path)


@pytest.mark.parametrize("wal", [False, True])
def test_failing_step_with_snapshot_restores_the_state_before_every_step(
        tmp_path: Path, wal: bool) -> None:
    cat = real_catalog(tmp_path, "CREATE UNIQUE INDEX u ON users (lower(email));\n")
    path = tenant(tmp_path, ["Bob@x", "bob@x"], wal=wal)
    before = content(path)
    done = rollout.migrate_one(migrate_action(path), cat, 1.0, take=True)
    assert done.result is not None and done.busy is None
    assert done.result.to_version == 1 and done.result.applied == ()
    assert "restored from its snapshot (v1)" in (done.result.error or "")
    assert content(path) == before  # 0002 had committed; the restore undid it too
    assert not snapshot.path_for(path).exists()


def test_without_snapshot_a_failing_step_leaves_the_last_committed_step(
        tmp_path: Path) -> None:
    cat = real_catalog(tmp_path, "CREATE UNIQUE INDEX u ON users (lower(email));\n")
    path = tenant(tmp_path, ["Bob@x", "bob@x"])
    done = rollout.migrate_one(migrate_action(path), cat, 1.0, take=False)
    assert done.result is not None
    assert (done.result.to_version, done.result.applied) == (2, (2,))
    assert "0003_third.sql:1" in (done.result.error or "")


def test_health_check_returning_rows_fails_the_tenant_and_names_the_check(
        tmp_path: Path) -> None:
    cat = real_catalog(tmp_path,
                       "UPDATE users SET name = substr(email, 1, instr(email, '@') - 1);\n",
                       check="-- every user has a name\nSELECT id FROM users WHERE name = '';\n")
    path = tenant(tmp_path, ["ann@x", "@nobody"])
    done = rollout.migrate_one(migrate_action(path), cat, 1.0, take=False)
    assert done.result is not None
    assert done.result.error is not None
    assert done.result.error.startswith("health gate: 0003_third.sql:2 returned rows")
    assert content(path)[-1] == "3"  # committed: without a snapshot nothing is restored


def test_healthy_migration_keeps_its_snapshot_until_the_rollout_passes(tmp_path: Path) -> None:
    cat = real_catalog(tmp_path, "UPDATE users SET name = email;\n",
                       check="SELECT id FROM users WHERE name IS NULL;\n")
    path = tenant(tmp_path, ["ann@x"])
    done = rollout.migrate_one(migrate_action(path), cat, 1.0, take=True)
    assert done.result is not None and done.result.error is None
    assert done.result.applied == (2, 3)
    copy = snapshot.path_for(path)
    assert content(copy)[-1] == "1"
    snapshot.remove_for([path])
    assert not copy.exists()


def test_busy_tenant_is_reported_busy_not_failed_and_left_untouched(tmp_path: Path) -> None:
    cat = real_catalog(tmp_path, "UPDATE users SET name = email;\n")
    path = tenant(tmp_path, ["ann@x"])
    app = sqlite3.connect(path, isolation_level=None)
    app.execute("BEGIN IMMEDIATE")
    try:
        for take in (False, True):
            done = rollout.migrate_one(migrate_action(path), cat, 0.1, take=take)
            assert done.result is None and done.busy is not None
    finally:
        app.execute("ROLLBACK")
        app.close()
    assert content(path)[-1] == "1"


def test_health_gate_on_a_locked_rollback_journal_file_is_retryable(tmp_path: Path) -> None:
    cat = real_catalog(tmp_path, "UPDATE users SET name = email;\n")
    path = tenant(tmp_path, ["ann@x"])
    app = sqlite3.connect(path, isolation_level=None)
    app.execute("BEGIN EXCLUSIVE")  # readers are locked out in rollback-journal mode
    conn = sqlite3.connect(path, isolation_level=None, timeout=0.1)
    try:
        with pytest.raises(RetryableError):
            rollout.health_gate(conn, 3, cat)
    finally:
        conn.close()
        app.execute("ROLLBACK")
        app.close()


def test_restore_is_refused_when_an_application_wrote_after_the_snapshot(
        tmp_path: Path) -> None:
    path = tenant(tmp_path, ["ann@x"], wal=True)
    conn = sqlite3.connect(path, isolation_level=None)
    copy = snapshot.take(conn, path)
    app = sqlite3.connect(path)
    app.execute("INSERT INTO users (email) VALUES ('new@x')")
    app.commit()
    app.close()
    why = snapshot.restore(conn, copy, 1.0)
    conn.close()
    assert why is not None and "would lose that write" in why
    assert ("new@x",) in sqlite3.connect(path).execute("SELECT email FROM users").fetchall()
    assert copy.path.exists()


def test_snapshot_file_is_private(tmp_path: Path) -> None:
    path = tenant(tmp_path, ["ann@x"])
    conn = sqlite3.connect(path, isolation_level=None)
    copy = snapshot.take(conn, path)
    conn.close()
    assert copy.path.name == ".t.db.snapshot"
    assert os.stat(copy.path).st_mode & 0o077 == 0


# ------------------------------------------------------------------- progress


def test_progress_text_shows_done_total_failed_elapsed_and_eta() -> None:
    assert progress.format_line("migrate", 50, 200, 1, 10.0) == \
        "migrate 50/200 (25%) · 1 failed · 0:10 elapsed · ETA 0:30"
    assert progress.format_line("migrate", 0, 200, 0, 2.0).endswith("ETA --:--")
    assert progress.format_line("migrate", 200, 200, 0, 75.0) == \
        "migrate 200/200 (100%) · 0 failed · 1:15 elapsed · done"
    assert progress.clock(3725) == "1:02:05"


def test_progress_draws_nothing_when_the_stream_is_not_a_terminal() -> None:
    stream = io.StringIO()
    line = progress.ProgressLine(stream)
    line("migrate", 1, 2, 0)
    line.redraw()
    line.close()
    assert not line.enabled and stream.getvalue() == ""


def read_all(fd: int) -> str:
    """Everything written to the pty so far. The kernel moves pty data asynchronously, so
    under load a bare non-blocking read can come back short: wait until it goes quiet."""
    out = b""
    while select.select([fd], [], [], 1.0)[0]:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the other side is closed and drained
            break
        if not chunk:
            break
        out += chunk
    return out.decode()


def test_progress_on_a_terminal_is_throttled_and_log_lines_clear_it_first() -> None:
    master, slave = pty.openpty()
    stream = os.fdopen(slave, "w")
    clock = iter([0.0, 0.01, 0.5, 0.6])
    line = progress.ProgressLine(stream, now=lambda: next(clock))
    try:
        assert line.enabled
        line("migrate", 1, 4, 0)   # drawn
        line("migrate", 2, 4, 0)   # 10 ms later: throttled
        line("migrate", 3, 4, 1)   # drawn
        logger = progress.LineSafeLogger(
            # its own wrapper class: another test may have configured structlog
            # process-wide at level "error", which would filter this info line
            structlog.wrap_logger(structlog.PrintLogger(stream),
                                  processors=[structlog.processors.JSONRenderer()],
                                  wrapper_class=structlog.make_filtering_bound_logger(0)),
            line)
        logger.bind(tenant="t3").info("migrate")
        line("migrate", 4, 4, 1)   # the last one is always drawn
        line.close()
        stream.flush()
        drawn = read_all(master)
    finally:
        stream.close()
        os.close(master)
    clear = "\r\x1b[K"
    assert "migrate 2/4" not in drawn
    first = drawn.index("migrate 1/4")
    third = drawn.index("migrate 3/4 (75%) · 1 failed")
    log = drawn.index('{"tenant": "t3", "event": "migrate"}')
    assert first < third < log < drawn.index("migrate 4/4 (100%) · 1 failed")
    assert drawn[log - len(clear):log] == clear  # the log line starts on a cleared line
    assert drawn.endswith(clear)  # closed: nothing left on the terminal


def test_a_tenant_left_migrating_at_its_target_is_migrated_again_so_its_gate_runs() -> None:
    d = desired({"a": {"region": "eu"}, "b": {"region": "eu"}})
    obs = observed([row("a", version=2, status="migrating"),
                    row("b", version=2, status="migrating")],
                   files={"eu/a.db": 3, "eu/b.db": 2})
    p = plan(d, obs, catalog(3))
    got = [(a.tenant, a.kind, a.status, a.from_version, a.to_version) for a in p.actions]
    assert got == [("a", Kind.CORRECT, "migrating", 2, 3), ("a", Kind.MIGRATE, "active", 3, 3),
                   ("b", Kind.MIGRATE, "active", 2, 3)]
    assert p.waves == (("a",), ("b",))
