"""Reading changes nothing (DESIGN §5): plan, status, history, route and validate work
with read access only, and leave no file and no byte behind — for a real unprivileged
user who may only read the fleet (chmod a+rX, nothing writable), for the fleet's owner
who could write (no ``central.db-wal``/``-shm`` left over), and for root on a read-only
bind mount. Each case compares a listing of the whole project folder (mode, owner,
size, mtime, sha256 of every entry) before and after.

A reader that may not create ``-shm`` must still never see a torn registry while a
writer commits: ``test_reads_while_a_writer_commits_succeed_and_see_whole_transactions``
runs a real writer process committing batches (each opening and closing its
connection, so ``-wal`` comes and goes and checkpoints rewrite the file) while the
unprivileged user reads the events again and again.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Fleet
from tests.e2e.conftest import OtherUser, listing, readable_by_all

TENANTS: dict[str, dict[str, Any]] = {
    "aaron": {"region": "eu"}, "acme": {"region": "us", "domains": ["acme.example.com"]},
    "globex": {"region": "eu", "schema": 2}}

# (arguments, exit code, a fragment of stdout)
READS = [
    (("--dry-run",), 0, "No changes"),
    (("plan",), 0, "No changes"),
    (("plan", "--json"), 0, "["),
    (("-c", "pending.yaml", "--dry-run"), 2, "create"),
    (("status",), 0, "in sync"),
    (("status", "--json"), 0, '"in_sync": true'),
    (("history",), 0, "create"),
    (("history", "aaron", "--json"), 0, '"tenant": "aaron"'),
    (("route", "aaron.yoursaas.com"), 0, "tenant   aaron"),
    (("route", "acme.example.com", "--json"), 0, '"available": true'),
    (("route", "aaron.yoursaas.com", "--central", "data/central.db"), 0, "tenant   aaron"),
    (("validate",), 0, "ok"),
]
IDS = [" ".join(a) for a, _, _ in READS]


def _converged(root: Path) -> Fleet:
    fleet = Fleet(root / "fleet")
    fleet.root.mkdir()
    fleet.use_shipped_migrations()
    fleet.declare(TENANTS)
    applied = fleet.run()
    assert applied.returncode == 0, applied.stderr
    more = {**TENANTS, "hooli": {"region": "us"}}
    pending = fleet.write_config({**_yaml(fleet), "tenants": more})
    pending.rename(fleet.root / "pending.yaml")
    fleet.declare(TENANTS)
    return fleet


def _yaml(fleet: Fleet) -> dict[str, object]:
    import yaml

    loaded: dict[str, object] = yaml.safe_load(fleet.config.read_text())
    return loaded


@pytest.fixture(scope="module")
def shared_fleet() -> Iterator[Fleet]:
    """One converged fleet, readable (never writable) by every user."""
    root = Path(tempfile.mkdtemp(prefix="reconcile-readonly-", dir="/tmp"))
    root.chmod(0o755)
    try:
        fleet = _converged(root)
        readable_by_all(fleet.root)
        yield fleet
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _check(result: subprocess.CompletedProcess[str], code: int, fragment: str) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert "readonly database" not in result.stderr, result.stderr
    assert result.returncode == code, (result.stdout, result.stderr)
    assert fragment in result.stdout, result.stdout


@pytest.mark.parametrize(("args", "code", "fragment"), READS, ids=IDS)
def test_a_user_with_read_access_only_can_read_and_changes_nothing(
        shared_fleet: Fleet, other_user: OtherUser, args: tuple[str, ...], code: int,
        fragment: str) -> None:
    before = listing(shared_fleet.root)
    _check(other_user.run(shared_fleet, *args), code, fragment)
    assert listing(shared_fleet.root) == before


def test_the_owner_reading_leaves_no_wal_or_shm_behind(tmp_path: Path) -> None:
    fleet = _converged(tmp_path)
    for args, code, fragment in READS:  # each compared on its own
        before = listing(fleet.root)
        _check(fleet.run(*args), code, fragment)
        assert listing(fleet.root) == before, args
        assert not list(fleet.data.glob("central.db-*")), args


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True)


@pytest.fixture
def read_only_mount(tmp_path: Path) -> Iterator[Fleet]:
    """A converged fleet whose whole folder is bind-mounted read-only onto itself."""
    fleet = _converged(tmp_path)
    if shutil.which("mount") is None or _mount("--bind", str(fleet.root),
                                               str(fleet.root)).returncode != 0:
        pytest.skip("cannot bind-mount here (needs root with CAP_SYS_ADMIN)")
    try:
        remounted = _mount("-o", "remount,bind,ro", str(fleet.root))
        if remounted.returncode != 0:
            pytest.skip(f"cannot remount read-only: {remounted.stderr.strip()}")
        yield fleet
    finally:
        subprocess.run(["umount", str(fleet.root)], check=True)


def test_reads_on_a_read_only_bind_mount_work(read_only_mount: Fleet) -> None:
    fleet = read_only_mount
    with pytest.raises(OSError):  # the mount really refuses writes, even root's
        (fleet.data / "probe").write_text("x")
    before = listing(fleet.root)
    for args, code, fragment in READS:
        _check(fleet.run(*args), code, fragment)
    assert listing(fleet.root) == before


WRITER = textwrap.dedent("""
    import sqlite3, sys, time
    path, batch, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    end = time.monotonic() + seconds
    n = 0
    pad = '{"pad": "%s"}' % ("x" * 3000)
    while time.monotonic() < end:
        conn = sqlite3.connect(path, isolation_level=None)  # opened and closed per batch:
        conn.execute("PRAGMA wal_autocheckpoint=2")          # -wal comes and goes, and
        conn.execute("BEGIN IMMEDIATE")                      # checkpoints rewrite the file
        for i in range(batch):
            conn.execute("INSERT INTO events (at, tenant, action, outcome, detail) "
                         "VALUES ('now', 'probe', 'probe', 'ok', ?)", (pad,))
        conn.execute("COMMIT")
        conn.close()
        n += 1
    print(n)
""")


def test_reads_while_a_writer_commits_succeed_and_see_whole_transactions(
        open_dir: Path, other_user: OtherUser) -> None:
    fleet = _converged(open_dir)
    readable_by_all(fleet.root)
    batch = 7
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(fleet.central), str(batch),
                               "6"], stdout=subprocess.PIPE, text=True)
    reads = 0
    try:
        while writer.poll() is None:
            result = other_user.run(fleet, "history", "probe", "-n", "1000000", "--json")
            assert "Traceback" not in result.stderr, result.stderr
            assert result.returncode == 0, result.stderr
            probes = json.loads(result.stdout)
            assert len(probes) % batch == 0, f"a torn read: {len(probes)} events"
            reads += 1
    finally:
        out, _ = writer.communicate(timeout=60)
    assert writer.returncode == 0
    assert int(out) > 0
    assert reads >= 3


HOLDER = textwrap.dedent("""
    import os, sqlite3, sys
    os.umask(int(sys.argv[2], 8))
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("PRAGMA wal_autocheckpoint=0")  # the commit stays in the -wal only
    conn.execute("INSERT INTO events (at, tenant, action, outcome, detail) "
                 "VALUES ('now', 'held', 'probe', 'ok', '{}')")
    print("committed", flush=True)
    sys.stdin.read()  # hold the connection (and the -wal, -shm) until told to stop
    conn.close()
""")


@pytest.fixture
def held_registry(open_dir: Path, request: pytest.FixtureRequest) -> Iterator[Fleet]:
    """A fleet whose registry a writer holds open, one commit only in its -wal; the
    writer's umask (param) decides whether others may read -wal and -shm."""
    fleet = _converged(open_dir)
    readable_by_all(fleet.root)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(fleet.central),
                               request.param], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "committed\n"
        assert (fleet.data / "central.db-wal").exists()
        yield fleet
    finally:
        holder.communicate("", timeout=30)


@pytest.mark.parametrize("held_registry", ["022"], indirect=True)
def test_a_commit_still_in_the_wal_is_read_by_a_user_who_cannot_write(
        held_registry: Fleet, other_user: OtherUser) -> None:
    before = listing(held_registry.root)
    result = other_user.run(held_registry, "history", "held", "--json")
    assert result.returncode == 0, result.stderr
    assert [e["tenant"] for e in json.loads(result.stdout)] == ["held"]
    assert listing(held_registry.root) == before


@pytest.mark.parametrize("held_registry", ["022"], indirect=True)
def test_a_registry_held_open_with_private_wal_is_refused_with_what_to_grant(
        held_registry: Fleet, other_user: OtherUser) -> None:
    # SQLite gives -wal and -shm the mode of the database; an operator may narrow them
    for side in ("central.db-wal", "central.db-shm"):
        (held_registry.data / side).chmod(0o600)
    before = listing(held_registry.root)
    result = other_user.run(held_registry, "status")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "central.db-wal and central.db-shm" in result.stderr
    assert "read access" in result.stderr
    assert listing(held_registry.root) == before


# tenants.yaml broken three ways; the registry (at a non-default path, named by the
# broken file itself) still answers status, history and route
BROKEN = {
    "syntax": ("tenants: {aaron: [\n", "tenants.yaml:"),
    "unknown region": ("tenants:\n  aaron: {region: mars}\n", "mars"),
    "wrong type": ("settings:\n  schema: [1]\n", "settings.schema"),
}


@pytest.mark.parametrize("breakage", sorted(BROKEN))
def test_status_history_and_route_read_the_registry_while_tenants_yaml_is_invalid(
        open_dir: Path, other_user: OtherUser, breakage: str) -> None:
    fleet = Fleet(open_dir / "fleet")
    fleet.root.mkdir()
    fleet.use_shipped_migrations()
    fleet.declare(TENANTS, central="registry/central.db")
    assert fleet.run().returncode == 0
    text, says = BROKEN[breakage]
    if breakage == "syntax":
        fleet.config.write_text(fleet.config.read_text() + text)
    else:
        fleet.config.write_text(fleet.config.read_text().replace(
            "tenants:\n" if "tenants" in text else "settings:\n", text, 1))
    readable_by_all(fleet.root)
    before = listing(fleet.root)
    for run in (fleet.run, lambda *a: other_user.run(fleet, *a)):
        status = run("status")
        assert status.returncode == 1, status.stderr
        assert "is invalid" in status.stderr and says in status.stderr
        assert "aaron" in status.stdout and "acme" in status.stdout
        assert "not compared" in status.stdout
        shown = json.loads(run("status", "--json").stdout)
        assert shown["in_sync"] is None and shown["problems"]
        assert {t["tenant"] for t in shown["tenants"]} == set(TENANTS)
        history = run("history", "aaron")
        assert history.returncode == 0 and "create" in history.stdout
        assert says in history.stderr
        route = run("route", "acme.example.com")
        assert route.returncode == 0 and "tenant   acme" in route.stdout
        assert says in route.stderr
        for out in (status, history, route):
            assert "Traceback" not in out.stderr
    assert listing(fleet.root) == before


CRASHED_WRITER = textwrap.dedent("""
    import os, signal, sqlite3, sys
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("INSERT INTO users (email) VALUES ('crash@probe')")  # rows, not schema
    os.kill(os.getpid(), signal.SIGKILL)  # dies holding the commit in its -wal only
""")


@pytest.mark.parametrize("args", [("--dry-run",), ("status",), ("route", "aaron.yoursaas.com")])
def test_reading_a_tenant_left_with_a_wal_by_a_killed_writer_changes_no_byte(
        tmp_path: Path, args: tuple[str, ...]) -> None:
    fleet = _converged(tmp_path)
    tenant = fleet.path("aaron", "eu")
    killed = subprocess.run([sys.executable, "-c", CRASHED_WRITER, str(tenant)])
    assert killed.returncode == -9
    assert Path(f"{tenant}-wal").stat().st_size > 0
    before = listing(fleet.root)
    result = fleet.run(*args)
    assert "Traceback" not in result.stderr
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert listing(fleet.root) == before  # the -wal was read, not checkpointed
