"""``reconcile plan --rehearse``: pending migrations run on backup-API copies of real
tenants, through the real command; the live files are compared byte for byte."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import Fleet

V1 = """
CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL, name TEXT NOT NULL);
CREATE TABLE notes (id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES users(id),
                    title TEXT NOT NULL);
"""
# fails on duplicate names; leaves orphaned notes where an old user had some
V2 = """
DELETE FROM users WHERE email LIKE '%@old.example';
CREATE UNIQUE INDEX users_by_name ON users (name);
"""
CHECK2 = "SELECT id FROM notes WHERE title = '' LIMIT 1;\n"

DATA = {
    "dupes": ("INSERT INTO users (email, name) VALUES ('a@x', 'Ann'), ('b@x', 'Ann');"),
    "orphans": ("INSERT INTO users (id, email, name) VALUES (1, 'z@old.example', 'Zed');"
                "INSERT INTO notes (user_id, title) VALUES (1, 'kept');"),
    "blank": ("INSERT INTO users (email, name) VALUES ('c@x', 'Cy');"
              "INSERT INTO notes (user_id, title) VALUES (1, '');"),
    "fine": ("INSERT INTO users (email, name) VALUES ('d@x', 'Di'), ('e@x', 'Ed');"
             "INSERT INTO notes (user_id, title) VALUES (1, 'hello');"),
    "good": "INSERT INTO users (email, name) VALUES ('f@x', 'Flo');",
}


def catalog(fleet: Fleet) -> None:
    shutil.rmtree(fleet.migrations)
    fleet.write_migration("0001_users.sql", V1)
    fleet.write_migration("0002_unique_names.sql", V2)
    fleet.write_migration("checks/0002_titles.sql", CHECK2)


@pytest.fixture
def staged(fleet: Fleet, tmp_path: Path) -> Fleet:
    """Five tenants at v1 with data; v2 pending, which fails on three of them."""
    catalog(fleet)
    fleet.declare({n: {"region": "eu"} for n in DATA}, schema=1)
    assert fleet.run("apply").returncode == 0
    for name, sql in DATA.items():
        conn = sqlite3.connect(fleet.path(name, "eu"))
        conn.executescript(sql)
        conn.close()
    fleet.declare({n: {"region": "eu"} for n in DATA})
    (tmp_path / "tmp").mkdir()
    return fleet


def rehearse(fleet: Fleet, tmp: Path, *args: str, env: dict[str, str] | None = None
             ) -> tuple[int, dict[str, dict[str, object]]]:
    out = fleet.run("plan", "--json", "--rehearse", *args,
                    env={"TMPDIR": str(tmp), **(env or {})})
    assert "Traceback" not in out.stderr
    if out.returncode < 0:
        return out.returncode, {}
    return out.returncode, {r["tenant"]: r for r in json.loads(out.stdout)["rehearsal"]}


def test_failing_tenants_report_their_step_and_the_live_fleet_is_untouched(
        staged: Fleet, tmp_path: Path) -> None:
    before = staged.tenant_digests()
    code, found = rehearse(staged, tmp_path / "tmp", "all")
    assert code == 3
    assert found["fine"]["ok"] and found["good"]["ok"]
    assert found["fine"]["reached"] == 2
    assert (found["dupes"]["step"], found["dupes"]["reached"]) == ("0002_unique_names.sql", 1)
    assert "UNIQUE constraint failed: users.name" in str(found["dupes"]["error"])
    assert found["blank"]["step"] == "health gate"
    assert "0002_titles.sql:1 returned rows" in str(found["blank"]["error"])
    # the step itself refuses to commit the orphan (issue 11: checked before COMMIT), so
    # the rehearsal names the migration; its error names the row
    assert (found["orphans"]["step"], found["orphans"]["reached"]) == (
        "0002_unique_names.sql", 1)
    assert "notes rowid 1 → users" in str(found["orphans"]["error"])
    assert staged.tenant_digests() == before  # not one byte of a live tenant changed
    assert all(staged.user_version(staged.path(n, "eu")) == 1 for n in DATA)
    assert os.listdir(tmp_path / "tmp") == []  # every copy removed


def test_text_report_and_exit_0_when_every_rehearsal_passes(staged: Fleet, tmp_path: Path
                                                             ) -> None:
    out = staged.run("plan", "--rehearse", "fine", "good",
                     env={"TMPDIR": str(tmp_path / "tmp")})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "  ~ migrate   dupes" in out.stdout  # the plan first
    assert "Rehearsal: 2 passed, 0 failed." in out.stdout
    failing = staged.run("plan", "--rehearse", "dupes", env={"TMPDIR": str(tmp_path / "tmp")})
    assert failing.returncode == 3
    assert "FAIL  dupes  v1 → v2" in failing.stdout
    assert "failed at 0002_unique_names.sql (reached v1): 0002_unique_names.sql" in \
        failing.stdout


def test_a_rehearsal_killed_outright_is_swept_by_the_next_one(staged: Fleet,
                                                               tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    before = staged.tenant_digests()
    code, _ = rehearse(staged, tmp, "fine", env={"RECONCILE_CRASH_AT": "rehearse:after-copy"})
    assert code == -9
    (left,) = os.listdir(tmp)
    assert left.startswith("reconcile-rehearse-")
    assert os.listdir(tmp / left) == ["fine.db"]
    code, found = rehearse(staged, tmp, "good")
    assert code == 0 and found["good"]["ok"]
    assert os.listdir(tmp) == []  # the killed run's folder went too
    assert staged.tenant_digests() == before


def test_default_sample_takes_the_largest_the_oldest_and_random_tenants(
        fleet: Fleet, tmp_path: Path) -> None:
    catalog(fleet)
    names = [f"t{i:02d}" for i in range(14)]
    fleet.declare({n: {"region": "eu", **({"schema": 0} if n == "t13" else {})}
                   for n in names} | {"big": {"region": "eu"}}, schema=1)
    assert fleet.run("apply").returncode == 0
    conn = sqlite3.connect(fleet.path("big", "eu"))
    conn.executemany("INSERT INTO users (email, name) VALUES (?, ?)",
                     ((f"u{i}@x", f"user {i} " + "x" * 200) for i in range(5000)))
    conn.commit()
    conn.close()
    fleet.declare({n: {"region": "eu"} for n in [*names, "big"]})
    (tmp_path / "tmp").mkdir()
    code, found = rehearse(fleet, tmp_path / "tmp")
    assert code == 0
    assert len(found) == 9
    assert found["big"]["why"] == "largest"
    assert found["t13"]["why"] == "oldest" and found["t13"]["from_version"] == 0
    assert sum(r["why"] == "random" for r in found.values()) == 3
    code, found = rehearse(fleet, tmp_path / "tmp", "4")
    assert code == 0 and len(found) == 4


def test_bad_rehearse_arguments_are_invalid_input(staged: Fleet, tmp_path: Path) -> None:
    for args in (["nobody"], ["0"]):
        out = staged.run("plan", "--rehearse", *args, env={"TMPDIR": str(tmp_path / "tmp")})
        assert out.returncode == 1
        assert "Traceback" not in out.stderr and "--rehearse" in out.stderr


def test_the_ci_rehearsal_step_runs_against_a_staging_copy(staged: Fleet, tmp_path: Path
                                                           ) -> None:
    import subprocess

    import yaml

    from tests.conftest import RECONCILE, REPO
    workflow = yaml.safe_load((REPO / "deploy" / "ci" / "reconcile-plan.yml").read_text())
    script = next(s["run"] for s in workflow["jobs"]["rehearse"]["steps"]
                  if s.get("id") == "rehearse")
    staging = tmp_path / "staging"
    shutil.copytree(staged.data, staging)
    def tenant_files() -> dict[str, str]:  # of both fleets (the registry is access's concern)
        return {k: v for k, v in {**staged.digests(), **{f"staging/{k}": v for k, v in
                                                         staged.digests(staging).items()}
                                  }.items() if "central.db" not in k}
    before = tenant_files()
    env = {**os.environ, "PATH": f"{Path(RECONCILE).parent}:{os.environ['PATH']}",
           "STAGING_DATA_DIR": str(staging), "TMPDIR": str(tmp_path / "tmp"),
           "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md")}
    env.pop("RECONCILE_CONFIG", None)
    done = subprocess.run(["bash", "-e", "-c", script], cwd=staged.root, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0  # three tenants fail: the job fails
    summary = (tmp_path / "summary.md").read_text()
    assert "FAIL  dupes" in summary and "ok    fine" in summary
    assert str(staging) in (staged.root / "staging-tenants.yaml").read_text()
    assert tenant_files() == before


def test_named_tenants_with_nothing_pending_are_listed_not_rehearsed(
        staged: Fleet, tmp_path: Path) -> None:
    staged.declare({n: {"region": "eu", **({"schema": 1} if n == "good" else {})}
                    for n in DATA})
    out = staged.run("plan", "--rehearse", "fine", "good",
                     env={"TMPDIR": str(tmp_path / "tmp")})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "nothing pending (not rehearsed): good" in out.stdout
    assert "Rehearsal: 1 passed, 0 failed." in out.stdout


SLOW = '''"""Slow on purpose: the test sends SIGTERM while this runs."""
import time
from pathlib import Path


def migrate(conn):
    copy = Path(conn.execute("PRAGMA database_list").fetchone()[2])
    if copy.stem:  # not the in-memory reference build
        (Path({markers!r}) / copy.stem).write_text("started")
        deadline = time.monotonic() + 30
        while (Path({markers!r}).parent / "hold").exists() and time.monotonic() < deadline:
            time.sleep(0.02)  # until the test has sent its signal
'''


def test_sigterm_lets_the_tenants_in_flight_finish_starts_no_more_and_removes_the_copies(
        staged: Fleet, tmp_path: Path) -> None:
    import signal
    import subprocess
    import time

    from tests.conftest import RECONCILE, wait_delivered
    markers = tmp_path / "started"
    markers.mkdir()
    (tmp_path / "hold").write_text("")
    staged.write_migration("0003_slow.py", SLOW.format(markers=str(markers)))
    before = staged.tenant_digests()
    env = {**os.environ, "RECONCILE_CONFIG": str(staged.config), "TMPDIR": str(tmp_path / "tmp")}
    staged.declare({n: {"region": "eu"} for n in DATA},
                   rollout={"parallel": 1, "canary": 1, "batch": 25, "max_failures": 0})
    proc = subprocess.Popen([RECONCILE, "plan", "--rehearse", "fine", "good"], cwd=staged.root,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not os.listdir(markers):
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        assert os.listdir(tmp_path / "tmp")  # its private folder, holding a copy
        proc.send_signal(signal.SIGTERM)
        wait_delivered(proc.pid, signal.SIGTERM)
        time.sleep(0.3)  # its handler runs at once (the main thread waits in Python)
        (tmp_path / "hold").unlink()
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    assert os.listdir(tmp_path / "tmp") == []
    assert staged.tenant_digests() == before
    # one worker: "fine" was in flight and finished; "good" never started
    assert os.listdir(markers) == ["fine"]
