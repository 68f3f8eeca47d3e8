"""The header fast path in ``observe`` agrees with ``PRAGMA user_version`` — always,
and the planner's steady-state short-cut answers exactly what its full rules answer.

Why: the no-op pass reads ``user_version`` straight from the 4 bytes at offset 60 when
neither a ``-wal`` nor a ``-journal`` sits beside the file, and asks SQLite otherwise.
That is only acceptable if it can never disagree with SQLite: in WAL mode the header
lags an uncheckpointed change, and after a writer died mid-commit the header is
*ahead* of the truth until the hot journal is rolled back. Every case uses real files
and, where the issue is another process, a real process (killed with SIGKILL).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from reconciler import engine
from reconciler.actions import Plan
from reconciler.observe import FileState, Observed, observe, read_user_version, read_user_versions
from reconciler.plan import plan
from reconciler.registry import Registry, Snapshot
from tests.conftest import Fleet


def pragma(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def header(path: Path) -> int:
    with open(path, "rb") as f:
        f.seek(60)
        return int.from_bytes(f.read(4), "big", signed=True)


def batch(path: Path) -> FileState:
    return read_user_versions([path])[path]


READERS: dict[str, Callable[[Path], FileState]] = {
    "single": read_user_version,
    "batch": batch,
}


def make(path: Path, version: int, wal: bool = False) -> Path:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(f"PRAGMA journal_mode={'WAL' if wal else 'DELETE'}")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        conn.executemany("INSERT INTO t (v) VALUES (?)", [(f"row{i}",) for i in range(200)])
        conn.execute(f"PRAGMA user_version = {version}")
    finally:
        conn.close()
    return path


@contextmanager
def child(code: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    """A real Python process running ``code``; killed (SIGKILL) on the way out."""
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def wait_for(proc: subprocess.Popen[str], word: str) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line == word, f"child said {line!r}, expected {word!r}"


@pytest.mark.parametrize("reader", READERS)
def test_rollback_journal_file_is_read_from_the_header_and_agrees(tmp_path: Path,
                                                                   reader: str) -> None:
    for version in (0, 1, 7, 2**31 - 1, -5):
        path = make(tmp_path / f"v{version}.db", version)
        assert not os.path.exists(f"{path}-journal")  # the fast path applies
        state = READERS[reader](path)
        assert state.usable and state.user_version == pragma(path) == version
        assert not state.wal


@pytest.mark.parametrize("reader", READERS)
def test_wal_file_agrees_before_and_after_a_checkpoint(tmp_path: Path, reader: str) -> None:
    read = READERS[reader]
    path = make(tmp_path / "t.db", 1, wal=True)
    writer = sqlite3.connect(path, isolation_level=None)
    try:
        writer.execute("PRAGMA wal_autocheckpoint = 0")
        writer.execute("PRAGMA user_version = 4")
        assert header(path) == 1, "precondition: the header lags the WAL"
        state = read(path)
        assert state.user_version == pragma(path) == 4
        assert state.wal

        writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert header(path) == 4 and os.path.exists(f"{path}-wal")
        assert read(path).user_version == pragma(path) == 4

        writer.execute("PRAGMA user_version = 5")  # lagging again, after a checkpoint
        assert header(path) == 4
        assert read(path).user_version == pragma(path) == 5
    finally:
        writer.close()  # last connection: checkpoints and removes the -wal
    assert not os.path.exists(f"{path}-wal"), "precondition: the fast path applies again"
    state = read(path)
    assert state.user_version == pragma(path) == 5
    assert not state.wal


HOLD_OPEN = """
import sqlite3, sys
path, wal = sys.argv[1], sys.argv[2] == "wal"
conn = sqlite3.connect(path, isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
conn.execute("PRAGMA user_version = 7")
conn.execute("INSERT INTO t (v) VALUES ('uncommitted')")
print("holding", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
print("committed", flush=True)
sys.stdin.readline()
"""


@pytest.mark.parametrize("mode", ["rollback", "wal"])
@pytest.mark.parametrize("reader", READERS)
def test_agrees_while_another_process_holds_the_file_open_for_writing(
        tmp_path: Path, reader: str, mode: str) -> None:
    read = READERS[reader]
    path = make(tmp_path / "t.db", 3, wal=mode == "wal")
    with child(HOLD_OPEN, str(path), mode) as proc:
        wait_for(proc, "holding")
        assert os.path.exists(f"{path}-journal" if mode == "rollback" else f"{path}-wal")
        state = read(path)
        assert state.usable, state.error
        assert state.user_version == pragma(path) == 3  # the uncommitted 7 is not the truth
        assert proc.stdin is not None
        proc.stdin.write("commit\n")
        proc.stdin.flush()
        wait_for(proc, "committed")
        assert read(path).user_version == pragma(path) == 7


# A large transaction keeps every page in memory until COMMIT, which then writes page 1
# (the header, now saying 9) first and deletes the journal last: in between, the file's
# header is ahead of the truth. The parent watches the header and kills the writer there.
KILLED_MID_COMMIT = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA cache_size = -400000")
conn.execute("BEGIN IMMEDIATE")
conn.execute("PRAGMA user_version = 9")
conn.execute("CREATE TABLE filler (x BLOB)")
for _ in range(5000):
    conn.execute("INSERT INTO filler VALUES (randomblob(4000))")
print("committing", flush=True)
conn.execute("COMMIT")
print("committed", flush=True)
sys.stdin.readline()
"""


def kill_mid_commit(path: Path) -> bool:
    """True when the writer died with the header ahead of the truth (a hot journal)."""
    with child(KILLED_MID_COMMIT, str(path)) as proc:
        wait_for(proc, "committing")
        fd = os.open(path, os.O_RDONLY)
        try:
            deadline = time.monotonic() + 30
            while int.from_bytes(os.pread(fd, 4, 60), "big") != 9:
                assert time.monotonic() < deadline, "the writer never wrote its header"
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            os.close(fd)
        proc.wait(timeout=30)
    return header(path) == 9 and os.path.exists(f"{path}-journal")


@pytest.mark.parametrize("reader", READERS)
def test_hot_journal_after_a_writer_was_killed_mid_commit_is_not_trusted(
        tmp_path: Path, reader: str) -> None:
    for attempt in range(5):  # the kill lands in the commit window nearly always
        path = make(tmp_path / f"t{attempt}.db", 2)
        if kill_mid_commit(path):
            break
    else:
        pytest.fail("could not kill the writer inside its commit in 5 attempts")
    assert header(path) == 9, "precondition: the header is ahead of the truth"
    state = READERS[reader](path)  # first reader: nothing has rolled the journal back yet
    assert state.usable, state.error
    assert state.user_version == 2
    assert pragma(path) == 2
    assert not os.path.exists(f"{path}-journal"), "SQLite rolled the hot journal back"
    assert READERS[reader](path).user_version == 2  # and now the fast path agrees too


def test_batch_reader_answers_exactly_like_the_single_reader(tmp_path: Path) -> None:
    d = tmp_path / "region"
    d.mkdir()
    make(d / "plain.db", 3)
    make(d / "wal.db", 2, wal=True)
    (d / "empty.db").write_bytes(b"")
    (d / "junk.db").write_bytes(b"not a database" * 20)
    (d / "short.db").write_bytes(b"SQLite format 3\x00")
    (d / "dir.db").mkdir()
    os.symlink(d / "plain.db", d / "link.db")
    os.mkfifo(d / "fifo.db")
    make(d / "journal.db", 4)
    (d / "journal.db-journal").write_bytes(b"")  # a cold (empty) journal: SQLite decides
    # the same oddities with a sidecar beside them, where SQLite is asked: what the
    # directory listing says of each entry must keep them away from it
    os.symlink(d / "wal.db", d / "wal-link.db")
    os.mkfifo(d / "wal-fifo.db")
    (d / "wal-dir.db").mkdir()
    make(d / "odd #?%.db", 5)  # needs quoting in a file: URI
    for name in ("wal-link", "wal-fifo", "wal-dir", "odd #?%"):
        (d / f"{name}.db-journal").write_bytes(b"")
    held = sqlite3.connect(d / "wal.db")
    try:
        held.execute("PRAGMA user_version").fetchone()  # keeps the -wal in place
        names = ["plain", "wal", "empty", "junk", "short", "dir", "link", "fifo", "journal",
                 "missing", "wal-link", "wal-fifo", "wal-dir", "odd #?%"]
        paths = [d / f"{n}.db" for n in names] + [tmp_path / "nowhere" / "x.db"]
        together = read_user_versions(paths)
        one_by_one = {p: read_user_version(p) for p in paths}
    finally:
        held.close()
    assert together == one_by_one
    assert together[d / "plain.db"].user_version == 3
    assert together[d / "wal.db"].user_version == 2 and together[d / "wal.db"].wal
    assert together[d / "journal.db"].user_version == 4
    assert together[d / "empty.db"].user_version == 0
    assert "symbolic link" in (together[d / "link.db"].error or "")
    assert "not a regular file" in (together[d / "fifo.db"].error or "")
    assert "not a regular file" in (together[d / "dir.db"].error or "")
    assert "not a SQLite database" in (together[d / "junk.db"].error or "")
    assert not together[d / "missing.db"].exists
    assert "symbolic link" in (together[d / "wal-link.db"].error or "")
    assert "not a regular file" in (together[d / "wal-fifo.db"].error or "")
    assert "not a regular file" in (together[d / "wal-dir.db"].error or "")
    assert together[d / "odd #?%.db"].user_version == 5
    assert not together[tmp_path / "nowhere" / "x.db"].exists


# ------------------------------------------------------------------ the planner's short-cut
# The planner decides in-sync tenants with a short-cut (registry row, declared path text
# and the file's version all agree at the target) before its full rules. It must be
# exactly those rules' answer: every plan below is compared with the plan of the same
# observation with the short-cut disabled (no declared path texts).


def full_rules(observed: Observed) -> Observed:
    return replace(observed, declared=MappingProxyType({}))


def converged(fleet: Fleet, tenants: dict[str, dict[str, Any]]) -> None:
    fleet.declare(tenants, regions=("eu", "us"))
    result = fleet.run("apply")
    assert result.returncode == 0, result.stdout + result.stderr


def plans(fleet: Fleet) -> tuple[Plan, Plan, Observed]:
    inputs = engine.load(fleet.config)
    snapshot = registry_snapshot(inputs.desired.settings.central)
    observed = observe(inputs.desired, snapshot)
    fast = plan(inputs.desired, observed, inputs.catalog, revision=inputs.revision)
    slow = plan(inputs.desired, full_rules(observed), inputs.catalog, revision=inputs.revision)
    return fast, slow, observed


def registry_snapshot(central: Path) -> Snapshot:
    reg = Registry.open_readonly(central)
    assert reg is not None
    try:
        return reg.snapshot()
    finally:
        reg.close()


TENANTS: dict[str, dict[str, Any]] = {
    "aaron": {"region": "eu"}, "acme": {"region": "us"}, "globex": {"region": "eu"},
    "hooli": {"region": "us", "schema": 2}, "initech": {"region": "eu", "protected": True},
}


def test_declared_path_texts_are_exactly_the_desired_tenant_paths(fleet: Fleet) -> None:
    converged(fleet, TENANTS)
    inputs = engine.load(fleet.config)
    observed = observe(inputs.desired, registry_snapshot(inputs.desired.settings.central))
    assert dict(observed.declared) == {
        name: os.fspath(inputs.desired.tenant_path(name, spec.region))
        for name, spec in inputs.desired.tenants.items()}


def test_shortcut_plans_nothing_on_a_converged_fleet_like_the_full_rules(fleet: Fleet) -> None:
    converged(fleet, TENANTS)
    fast, slow, observed = plans(fleet)
    assert fast.is_empty and slow.is_empty
    assert fast == slow
    for name in TENANTS:  # and the short-cut really was taken for every one of them
        assert observed.version_at(observed.declared[name]) is not None


def set_file_version(path: Path, version: int) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute(f"PRAGMA user_version = {version}")
        conn.commit()
    finally:
        conn.close()


def set_registry(fleet: Fleet, sql: str, *args: object) -> None:
    conn = sqlite3.connect(fleet.central)
    try:
        conn.execute(sql, args)
        conn.commit()
    finally:
        conn.close()


DRIFTS: dict[str, Callable[[Fleet], object]] = {
    "file behind the target": lambda f: set_file_version(f.path("aaron", "eu"), 2),
    "registry disagrees with the file": lambda f: set_registry(
        f, "UPDATE tenants SET schema_version = 1 WHERE name = 'acme'"),
    "status not active": lambda f: set_registry(
        f, "UPDATE tenants SET status = 'failed' WHERE name = 'globex'"),
    "registry path elsewhere": lambda f: set_registry(
        f, "UPDATE tenants SET path = path || '.old' WHERE name = 'acme'"),
    "region changed": lambda f: f.declare({**TENANTS, "aaron": {"region": "us"}},
                                          regions=("eu", "us")),
    "protection changed": lambda f: f.declare({**TENANTS, "acme": {"region": "us",
                                                                    "protected": True}},
                                              regions=("eu", "us")),
    "suspended": lambda f: f.declare({**TENANTS, "globex": {"region": "eu",
                                                             "suspended": True}},
                                     regions=("eu", "us")),
    "pin lowered below the file": lambda f: f.declare({**TENANTS, "aaron": {"region": "eu",
                                                                             "schema": 1}},
                                                      regions=("eu", "us")),
    "file gone": lambda f: os.unlink(f.path("initech", "eu")),
    "file replaced by junk": lambda f: f.path("hooli", "us").write_bytes(b"junk" * 40),
    "hot journal beside the file": lambda f: f.path("aaron", "eu").with_name(
        "aaron.db-journal").write_bytes(b""),
}


@pytest.mark.parametrize("drift", DRIFTS)
def test_shortcut_leaves_every_drift_to_the_full_rules(fleet: Fleet, drift: str) -> None:
    converged(fleet, TENANTS)
    DRIFTS[drift](fleet)
    fast, slow, _ = plans(fleet)
    assert fast == slow
    if drift != "hot journal beside the file":  # an empty journal is cold: no drift
        assert fast.actions, f"{drift}: the plan should hold an action or a report"
