"""Rolling migrations through the real CLI: waves, halt, snapshots, parallelism, busy
tenants and the progress line (DESIGN §6, issue 5).

Fleets are real tenant files made by ``reconcile`` itself at v3 (the shipped
migrations), then given a fourth migration that breaks on some tenants' data."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import select
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RECONCILE, Fleet

# lower-cased e-mails must be unique: breaks on a tenant holding "Bob@x" and "bob@x"
UNIQUE_EMAIL = "CREATE UNIQUE INDEX users_email_ci ON users (lower(email));\n"
NAMES_200 = [f"t{i:03d}" for i in range(200)]


def region_for(name: str) -> str:
    """Odd-numbered tenants live in eu, even ones in us (t001 → eu, t002 → us)."""
    return "eu" if int(name[1:]) % 2 else "us"


def tenants(names: list[str]) -> dict[str, dict[str, Any]]:
    return {n: {"region": region_for(n)} for n in names}


def build(fleet: Fleet, names: list[str], break_on: set[str] = frozenset(),  # type: ignore[assignment]
          **rollout: Any) -> None:
    """Create ``names`` at v3 with a user each; ``break_on`` tenants get data that the
    unique-email migration 0004 rejects. Then add 0004 and set ``rollout``."""
    fleet.declare(tenants(names), schema=3)
    done = fleet.run("apply")
    assert done.returncode == 0, done.stdout + done.stderr
    for n in names:
        conn = sqlite3.connect(fleet.path(n, region_for(n)))
        conn.execute("PRAGMA synchronous = OFF")  # test setup: no need to survive a crash
        emails = ["Bob@example.com", "bob@example.com"] if n in break_on else [f"{n}@x.com"]
        conn.executemany("INSERT INTO users (email, display_name, created_at) "
                         "VALUES (?, 'x', '2026-01-01T00:00:00Z')", [(e,) for e in emails])
        conn.commit()
        conn.close()
    fleet.write_migration("0004_unique_email.sql", UNIQUE_EMAIL)
    fleet.declare(tenants(names), rollout={"canary": 1, "batch": 25, "parallel": 4,
                                           "max_failures": 0, **rollout})


def versions(fleet: Fleet, names: list[str]) -> dict[str, int]:
    return {n: fleet.user_version(fleet.path(n, region_for(n))) for n in names}


def statuses(fleet: Fleet) -> dict[str, str]:
    return {str(n): str(s) for n, s in fleet.registry("SELECT name, status FROM tenants")}


def events(fleet: Fleet, action: str) -> list[dict[str, Any]]:
    rows = fleet.registry(f"SELECT tenant, outcome, detail FROM events WHERE action = '{action}' "
                          "ORDER BY id")
    return [{"tenant": t, "outcome": o, **json.loads(d)} for t, o, d in rows]


def test_max_failures_0_runs_only_the_canary_wave_then_halts_and_holds(fleet: Fleet) -> None:
    broken = {"t000", "t077", "t151"}  # t000 is the canary (first by name)
    build(fleet, NAMES_200, broken, max_failures=0)
    result = fleet.run("apply")
    assert result.returncode == 3, result.stdout + result.stderr
    v = versions(fleet, NAMES_200)
    assert {n for n, x in v.items() if x == 4} == set()
    assert set(v.values()) == {3}
    st = statuses(fleet)
    assert {n for n, s in st.items() if s == "failed"} == {"t000"}
    assert {n for n, s in st.items() if s == "pending"} == set(NAMES_200) - {"t000"}
    waves = events(fleet, "wave")
    assert [(w["wave"], w["tenants"], w["halted"]) for w in waves] == [(1, ["t000"], True)]
    assert waves[0]["pending"] == 199
    history = fleet.run("history", "-n", "3")
    assert "wave 1/9: 1 tenant, 1 failed (1 in the rollout) — halted" in history.stdout
    assert "rollout halted" in result.stdout
    assert "199 tenants stay at their version" in result.stdout

    # not retried in a loop: the next pass migrates nothing and says why
    migrations_before = len(events(fleet, "migrate"))
    plan = fleet.run("--dry-run")
    assert plan.returncode == 0, plan.stdout
    assert "Rollout halted: 199 pending" in plan.stdout
    again = fleet.run("apply")
    assert again.returncode == 3
    assert len(events(fleet, "migrate")) == migrations_before
    assert set(versions(fleet, NAMES_200).values()) == {3}


def test_max_failures_5_migrates_all_but_the_3_broken_tenants(fleet: Fleet) -> None:
    broken = {"t000", "t077", "t151"}
    build(fleet, NAMES_200, broken, max_failures=5)
    result = fleet.run("apply")
    assert result.returncode == 3, result.stdout + result.stderr
    v = versions(fleet, NAMES_200)
    assert {n for n, x in v.items() if x == 4} == set(NAMES_200) - broken
    assert {n for n, x in v.items() if x == 3} == broken
    st = statuses(fleet)
    assert {n for n, s in st.items() if s == "failed"} == broken
    assert {n for n, s in st.items() if s == "pending"} == set()
    assert {n for n, s in st.items() if s == "active"} == set(NAMES_200) - broken
    waves = events(fleet, "wave")
    assert [len(w["tenants"]) for w in waves] == [1] + [25] * 7 + [24]
    assert [w["failures"] for w in waves][-1] == 3
    assert not any(w["halted"] for w in waves)
    assert "3 failed" in result.stdout


def test_a_failure_after_the_canary_halts_at_the_end_of_its_wave(fleet: Fleet) -> None:
    names = NAMES_200[:80]
    build(fleet, names, {"t010"}, max_failures=0, batch=25)
    result = fleet.run("apply")
    assert result.returncode == 3, result.stdout + result.stderr
    v = versions(fleet, names)
    wave2 = {f"t{i:03d}" for i in range(1, 26)}
    assert {n for n, x in v.items() if x == 4} == {"t000"} | wave2 - {"t010"}
    st = statuses(fleet)
    assert {n for n, s in st.items() if s == "failed"} == {"t010"}
    assert {n for n, s in st.items() if s == "pending"} == {f"t{i:03d}" for i in range(26, 80)}


def test_halted_rollout_resumes_when_desired_state_changes_or_with_retry_failed(
        fleet: Fleet) -> None:
    names = NAMES_200[:30]
    build(fleet, names, {"t000"}, max_failures=0, batch=10)
    assert fleet.run("apply").returncode == 3
    assert set(versions(fleet, names).values()) == {3}
    # the operator fixes the canary's data: still held (same desired state) ...
    conn = sqlite3.connect(fleet.path("t000", "us"))
    conn.execute("DELETE FROM users WHERE email = 'bob@example.com'")
    conn.commit()
    conn.close()
    assert fleet.run("apply").returncode == 3
    assert versions(fleet, names)["t001"] == 3
    # ... until asked to retry
    retried = fleet.run("apply", "--retry-failed")
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert set(versions(fleet, names).values()) == {4}
    assert set(statuses(fleet).values()) == {"active"}
    assert fleet.registry("SELECT * FROM rollout") == []


def test_editing_tenants_yaml_resumes_a_halted_rollout(fleet: Fleet) -> None:
    names = NAMES_200[:12]
    build(fleet, names, {"t000"}, max_failures=0, batch=5)
    assert fleet.run("apply").returncode == 3
    fleet.declare(tenants(names), rollout={"canary": 1, "batch": 5, "max_failures": 1})
    result = fleet.run("apply")
    assert result.returncode == 3  # t000 still fails (its data is unchanged)
    v = versions(fleet, names)
    assert {n for n, x in v.items() if x == 4} == set(names) - {"t000"}


def dump(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        return [*conn.iterdump(), f"user_version={version}"]
    finally:
        conn.close()


def pages(path: Path) -> bytes:
    """The file's bytes except the header counters SQLite bumps on every write: the
    change counter (offset 24), the schema cookie (40: the backup API bumps it so other
    connections re-read the schema) and version-valid-for/library version (92)."""
    data = path.read_bytes()
    return data[:24] + data[28:40] + data[44:92] + data[100:]


def health_check_fleet(fleet: Fleet, names: list[str], bad: str) -> None:
    """v3 tenants whose 0004 migration works everywhere but whose health check fails
    on ``bad``'s data (a user e-mail without a dotted domain)."""
    fleet.declare(tenants(names), schema=3)
    assert fleet.run("apply").returncode == 0
    for n in names:
        email = "root@localhost" if n == bad else f"{n}@example.com"
        conn = sqlite3.connect(fleet.path(n, region_for(n)))
        conn.execute("INSERT INTO users (email, display_name, created_at) "
                     "VALUES (?, 'x', '2026-01-01T00:00:00Z')", (email,))
        conn.commit()
        conn.close()
    fleet.write_migration("0004_email_domain.sql",
                          "ALTER TABLE users ADD COLUMN domain TEXT;\n"
                          "UPDATE users SET domain = substr(email, instr(email, '@') + 1);\n")
    fleet.write_migration("checks/0004_email_domain.sql",
                          "SELECT id, domain FROM users WHERE domain NOT LIKE '%.%' LIMIT 1;\n")


def test_failed_health_check_with_snapshot_restores_the_tenant_byte_for_byte(
        fleet: Fleet) -> None:
    names = NAMES_200[:8]
    health_check_fleet(fleet, names, bad="t003")
    fleet.declare(tenants(names), rollout={"canary": 1, "batch": 3, "parallel": 2,
                                           "max_failures": 1, "snapshot": True})
    victim = fleet.path("t003", "eu")
    before_dump, before_pages = dump(victim), pages(victim)

    result = fleet.run("apply")
    assert result.returncode == 3, result.stdout + result.stderr
    assert dump(victim) == before_dump
    assert pages(victim) == before_pages
    row = fleet.registry("SELECT status, schema_version, failure FROM tenants "
                         "WHERE name = 't003'")[0]
    assert row[0:2] == ("failed", 3)
    assert "health gate" in row[2] and "restored from its snapshot" in row[2]
    v = versions(fleet, names)
    assert {n for n, x in v.items() if x == 4} == set(names) - {"t003"}
    # the rollout passed (1 failure ≤ max_failures 1): no snapshot is left behind
    assert not list(fleet.data.rglob("*.snapshot*"))


def test_snapshots_are_kept_while_halted_and_removed_once_the_rollout_passes(
        fleet: Fleet) -> None:
    names = NAMES_200[:10]
    build(fleet, names, {"t004"}, max_failures=0, batch=3, snapshot=True)
    assert fleet.run("apply").returncode == 3
    kept = {p.name for p in fleet.data.rglob("*.snapshot")}
    # migrated before the halt keep their copy; t004 was restored from its own
    assert kept == {f".t00{i}.db.snapshot" for i in (0, 1, 2, 3, 5, 6)}
    conn = sqlite3.connect(fleet.path("t004", "us"))
    conn.execute("DELETE FROM users WHERE email = 'bob@example.com'")
    conn.commit()
    conn.close()
    assert fleet.run("apply", "--retry-failed").returncode == 0
    assert not list(fleet.data.rglob("*.snapshot*"))


def end_state(fleet: Fleet, names: list[str]) -> dict[str, Any]:
    root = str(fleet.root)
    ev = fleet.registry("SELECT tenant, action, outcome, detail FROM events ORDER BY id")
    return {
        "files": {n: dump(fleet.path(n, region_for(n))) for n in names},
        "tenants": fleet.registry("SELECT name, region, schema_version, status, failure, "
                                  "failures, protected FROM tenants ORDER BY name"),
        "events": [(t, a, o, d.replace(root, "ROOT")) for t, a, o, d in ev],
        "migrations": fleet.registry("SELECT version, name, sha256 FROM migrations"),
    }


def test_parallel_8_ends_in_exactly_the_state_of_parallel_1(tmp_path: Path) -> None:
    names = NAMES_200[:60]
    broken = {"t005", "t023", "t041"}  # the third failure (wave of t041) halts
    states = []
    for parallel in (1, 8):
        fleet = Fleet(tmp_path / f"p{parallel}")
        fleet.root.mkdir()
        fleet.use_shipped_migrations()
        build(fleet, names, broken, max_failures=2, batch=10, parallel=parallel)
        result = fleet.run("apply")
        assert result.returncode == 3, result.stdout + result.stderr
        states.append(end_state(fleet, names))
    serial, parallel8 = states
    assert serial["files"] == parallel8["files"]
    assert serial["tenants"] == parallel8["tenants"]
    assert serial["events"] == parallel8["events"]
    assert serial["migrations"] == parallel8["migrations"]
    migrated = {n for n, d in serial["files"].items() if d[-1] == "user_version=4"}
    assert migrated == {f"t{i:03d}" for i in range(0, 51)} - broken


HOLDER = """
import select, sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
conn.execute("INSERT INTO users (email, display_name) VALUES ('app@example.com', 'App')")
print("locked", flush=True)
select.select([sys.stdin], [], [], float(sys.argv[2]))  # until released, or the time is up
conn.execute("COMMIT")
"""


def hold(path: Path, seconds: float) -> subprocess.Popen[str]:
    """Another process (an application) holding the tenant's write lock for ``seconds``
    or until its stdin is closed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), str(seconds)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_busy_tenant_is_retried_later_in_the_pass_and_converges_once_released(
        fleet: Fleet) -> None:
    names = NAMES_200[:6]
    build(fleet, names, max_failures=0, batch=2, parallel=2)
    fleet.declare(tenants(names), busy_timeout="1s",
                  rollout={"canary": 1, "batch": 2, "parallel": 2, "max_failures": 0})
    holder = hold(fleet.path("t002", "us"), 2.0)  # longer than the 1s busy timeout
    try:
        result = fleet.run("apply")
    finally:
        holder.wait(timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(versions(fleet, names).values()) == {4}
    retries = [w for w in events(fleet, "wave") if "retry" in w]
    assert retries and retries[0]["tenants"] == ["t002"]
    assert [e["outcome"] for e in events(fleet, "migrate") if e["tenant"] == "t002"] == ["ok"]
    # the application's write, made while the reconciler waited, is there
    assert fleet.rows(fleet.path("t002", "us"),
                      "SELECT display_name FROM users WHERE email = 'app@example.com'") \
        == [("App",)]


def test_tenant_busy_beyond_every_retry_is_left_for_the_next_pass_not_failed(
        fleet: Fleet) -> None:
    names = NAMES_200[:3]
    build(fleet, names)
    fleet.declare(tenants(names), busy_timeout="0.2s",
                  rollout={"canary": 1, "batch": 2, "parallel": 2, "max_failures": 0})
    holder = hold(fleet.path("t001", "eu"), 120.0)
    try:
        result = fleet.run("apply")
        assert result.returncode == 3, result.stdout + result.stderr
        assert statuses(fleet)["t001"] == "pending"  # busy is not a failure
        assert "1 pending" in result.stdout
        assert versions(fleet, names) == {"t000": 4, "t001": 3, "t002": 4}
    finally:
        assert holder.stdin is not None
        holder.stdin.close()  # the application lets go
        holder.wait(timeout=30)
    again = fleet.run("apply")
    assert again.returncode == 0, again.stdout + again.stderr
    assert set(versions(fleet, names).values()) == {4}


def test_pinned_tenant_is_never_taken_past_its_pin_and_latest_tracks_new_migrations(
        fleet: Fleet) -> None:
    names = NAMES_200[:4]
    build(fleet, names)
    spec = tenants(names)
    spec["t001"]["schema"] = 3
    fleet.declare(spec, rollout={"canary": 1, "batch": 2})
    assert fleet.run("apply").returncode == 0
    assert versions(fleet, names) == {"t000": 4, "t001": 3, "t002": 4, "t003": 4}
    fleet.write_migration("0005_user_bio.sql", "ALTER TABLE users ADD COLUMN bio TEXT;\n")
    result = fleet.run("apply")
    assert result.returncode == 0, result.stdout + result.stderr
    assert versions(fleet, names) == {"t000": 5, "t001": 3, "t002": 5, "t003": 5}


def test_dry_run_shows_the_waves_and_changes_nothing(fleet: Fleet) -> None:
    names = NAMES_200[:60]
    build(fleet, names, batch=25, parallel=4, max_failures=2)
    before = fleet.tenant_digests()
    plan = fleet.run("--dry-run")
    assert plan.returncode == 2, plan.stdout + plan.stderr
    lines = plan.stdout.splitlines()
    head = next(x for x in lines if x.startswith("Rollout:"))
    assert head.startswith("Rollout: 60 tenants in 4 waves — canary 1, batch 25, up to 4")
    assert "more than 2 failures" in head
    waves = [x.split() for x in lines if x.strip().startswith("wave ")]
    assert waves[0][:3] == ["wave", "1", "(canary)"]
    assert [int(w[3] if w[2] == "(canary)" else w[2]) for w in waves] == [1, 25, 25, 9]
    assert waves[0][-1] == "t000" and waves[3][3] == "t051,"
    assert fleet.tenant_digests() == before


def run_on_pty(fleet: Fleet, *args: str) -> tuple[int, str]:
    """Run reconcile with stderr on a real terminal; returns (exit code, what it drew)."""
    master, slave = pty.openpty()
    env = {**os.environ, "RECONCILE_CONFIG": str(fleet.config)}
    proc = subprocess.Popen([RECONCILE, *args], cwd=fleet.root, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    return proc.wait(timeout=30), b"".join(chunks).decode(errors="replace")


def test_progress_line_is_drawn_on_a_terminal_and_logs_stay_whole(fleet: Fleet) -> None:
    names = NAMES_200[:30]
    build(fleet, names, batch=10)
    code, drawn = run_on_pty(fleet, "apply", "--log-format", "json")
    assert code == 0, drawn
    assert "migrate 30/30 (100%) · 0 failed" in drawn
    assert "elapsed" in drawn
    logs = 0
    for line in drawn.replace("\r\n", "\n").split("\n"):
        text = line.rsplit("\r\x1b[K", 1)[-1]
        if text.startswith("{"):
            json.loads(text)  # a whole JSON line, never cut by the progress line
            logs += 1
    assert logs >= 30 + 4  # one per tenant action plus one per wave


def test_no_progress_line_when_stderr_is_not_a_terminal(fleet: Fleet) -> None:
    names = NAMES_200[:5]
    build(fleet, names)
    result = fleet.run("apply")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "elapsed" not in result.stderr and "\x1b[K" not in result.stderr
    for line in result.stderr.splitlines():
        json.loads(line)


@pytest.mark.parametrize("point", ["rollout:after-snapshot", "rollout:after-migrate",
                                   "rollout:before-record"])
def test_killed_mid_rollout_the_next_pass_converges_and_still_gates_every_tenant(
        fleet: Fleet, point: str) -> None:
    names = NAMES_200[:6]
    health_check_fleet(fleet, names, bad="t000")  # the canary is the unhealthy one
    fleet.declare(tenants(names), rollout={"canary": 1, "batch": 5, "parallel": 2,
                                           "max_failures": 0, "snapshot": True})
    killed = fleet.run("apply", env={"RECONCILE_CRASH_AT": point})
    assert killed.returncode == -9, killed.stdout + killed.stderr
    # 0004's checksum was durable before any tenant ran it (issue 11): an edit is refused
    sha = hashlib.sha256((fleet.migrations / "0004_email_domain.sql").read_bytes()).hexdigest()
    assert fleet.registry("SELECT sha256 FROM migrations WHERE version = 4") == [(sha,)]
    again = fleet.run("apply")
    assert again.returncode == 3, again.stdout + again.stderr
    # the unhealthy canary never counts as migrated, whatever the kill skipped
    st = statuses(fleet)
    assert st["t000"] == "failed"
    assert {n for n, s in st.items() if s == "pending"} == set(names) - {"t000"}
    assert set(versions(fleet, names[1:]).values()) == {3}
    # the registry agrees with every file
    for name, version in fleet.registry("SELECT name, schema_version FROM tenants"):
        assert versions(fleet, [name])[name] == version
    failure = fleet.registry("SELECT failure FROM tenants WHERE name = 't000'")[0][0]
    if point == "rollout:after-migrate":  # migrated, then killed before gate and restore
        assert versions(fleet, ["t000"]) == {"t000": 4}
        assert "snapshot from an earlier, interrupted attempt is kept" in failure
        assert (fleet.data / "us" / ".t000.db.snapshot").exists()
    else:
        assert versions(fleet, ["t000"]) == {"t000": 3}
        assert "restored from its snapshot" in failure


def test_killed_while_a_wave_runs_before_the_previous_one_was_recorded(fleet: Fleet) -> None:
    """A wave's record is written while the next wave runs: kill the pass in between
    (wave 1 migrated, unrecorded; wave 2 in flight) — the next pass gates and records
    every tenant, and the halt rule still held (wave 1 was judged before wave 2 began)."""
    names = NAMES_200[:7]
    build(fleet, names, break_on={"t003"}, batch=2, parallel=2, max_failures=0)
    killed = fleet.run("apply", env={"RECONCILE_CRASH_AT": "rollout:before-record-previous"})
    assert killed.returncode == -9, killed.stdout + killed.stderr
    assert statuses(fleet)["t000"] == "migrating"  # the canary: migrated, not recorded
    again = fleet.run("apply")
    assert again.returncode == 3, again.stdout + again.stderr
    st, v = statuses(fleet), versions(fleet, names)
    assert st["t003"] == "failed" and v["t003"] == 3  # rolled back, isolated
    migrated = {n for n in names if v[n] == 4}
    assert {n for n in migrated if st[n] == "active"} == migrated and "t000" in migrated
    # the halt after t003's wave: every later tenant waits at v3
    assert {n for n, s in st.items() if s == "pending"} == set(names) - migrated - {"t003"}
    for name, version in fleet.registry("SELECT name, schema_version FROM tenants"):
        assert v[name] == version


@pytest.mark.slow
def test_stress_2000_tenants_parallel_4_with_failures(tmp_path: Path) -> None:
    names = [f"s{i:04d}" for i in range(2000)]
    broken = {names[i] for i in (0, 333, 999, 1500)}
    fleet = Fleet(tmp_path / "big")
    fleet.root.mkdir()
    fleet.use_shipped_migrations()
    build(fleet, names, broken, max_failures=10, batch=100, parallel=4, snapshot=True)
    result = fleet.run("apply", timeout=600)
    assert result.returncode == 3, result.stdout[-2000:] + result.stderr[-2000:]
    v = versions(fleet, names)
    assert {n for n, x in v.items() if x == 3} == broken
    assert not list(fleet.data.rglob("*.snapshot*"))
    shutil.rmtree(fleet.root)
