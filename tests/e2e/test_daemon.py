"""``reconcile daemon`` as systemd runs it: a real process, a real unix datagram socket as
``NOTIFY_SOCKET``, real signals, real file edits and a real bare git repository."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import RECONCILE, Fleet, wait_delivered

CONVERGE = 8.0  # "within a few seconds", with room for a loaded CI machine
PATIENCE = 60.0  # for waits that prove nothing by their speed (start-up, a pass summary):
# generous, as a shared 2-core machine can take many seconds to start a daemon


class Notifications:
    """The receiving end of NOTIFY_SOCKET, as systemd holds it."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="rd-", dir="/tmp")  # sun_path is 108 bytes
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages: list[str] = []

    def collect(self, wait: float = 0.0) -> list[str]:
        self.sock.settimeout(wait if wait > 0 else 0.001)
        try:
            while True:
                self.messages.append(self.sock.recv(65536).decode())
                self.sock.settimeout(0.001)
        except (TimeoutError, BlockingIOError):
            pass
        return self.messages

    def wait_for(self, pred: Callable[[str], bool], timeout: float = PATIENCE,
                 since: int = 0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.collect(0.1)
            for m in self.messages[since:]:
                if pred(m):
                    return m
        raise AssertionError(f"no matching notification in {timeout}s; got {self.messages}")

    @property
    def statuses(self) -> list[str]:
        return [line[len("STATUS="):] for m in self.messages for line in m.splitlines()
                if line.startswith("STATUS=")]

    def close(self) -> None:
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Daemon:
    def __init__(self, fleet: Fleet, *args: str, env: dict[str, str] | None = None) -> None:
        self.fleet = fleet
        self.notify = Notifications()
        self.log_path = fleet.root.parent / f"daemon-{time.monotonic_ns()}.log"
        inherited = {k: v for k, v in os.environ.items()
                     if k not in ("RECONCILE_CRASH_AT", "WATCHDOG_USEC", "WATCHDOG_PID")}
        full = {**inherited, "RECONCILE_CONFIG": str(fleet.config),
                "NOTIFY_SOCKET": self.notify.path, **(env or {})}
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([RECONCILE, "daemon", "--log-format", "json", *args],
                                     cwd=fleet.root, env=full, stdout=subprocess.DEVNULL,
                                     stderr=self._log)

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def log_events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.splitlines() if line.startswith("{")]

    def ready(self) -> None:
        self.notify.wait_for(lambda m: m.startswith("READY=1"))

    def wait_summary(self, text: str, timeout: float = PATIENCE) -> str:
        """Wait for a pass summary (STATUS=) containing ``text``."""
        return self.notify.wait_for(lambda m: "STATUS=" in m and "reconciling" not in m
                                    and text in m, timeout)

    def signal(self, signum: int) -> None:
        """Send ``signum``; return once it is delivered (``wait_delivered``)."""
        self.proc.send_signal(signum)
        wait_delivered(self.proc.pid, signum)

    def exited(self, timeout: float = 20) -> int:
        """Wait for the daemon to exit on its own (no further signal), then clean up."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"daemon still running after {timeout}s") from None
        return self.stop()

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._log.close()
            self.notify.collect()
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if not self._log.closed:
            self._log.close()
        self.notify.close()


@pytest.fixture
def start() -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def _start(fleet: Fleet, *args: str, env: dict[str, str] | None = None) -> Daemon:
        d = Daemon(fleet, *args, env=env)
        started.append(d)
        return d

    yield _start
    for d in started:
        d.close()


def eventually(check: Callable[[], Any], timeout: float = CONVERGE, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except (sqlite3.Error, OSError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what or check}")
        time.sleep(0.05)


def config_text(tenants: dict[str, dict[str, Any]], **settings: Any) -> str:
    return yaml.safe_dump({
        "version": 1,
        "settings": {"domain": "yoursaas.com", **settings},
        "globals": {"support_email": "help@yoursaas.com"},
        "regions": {"eu": {}, "us": {}},
        "tenants": tenants,
    }, sort_keys=False)


def save_by_rename(path: Path, text: str) -> None:
    """How vim, most editors and git write a file: a new inode renamed over the old."""
    temp = path.with_name(f".{path.name}.swp-{os.getpid()}")
    temp.write_text(text)
    os.replace(temp, path)


def save_in_place(path: Path, text: str) -> None:
    """How some editors (and `>` in a shell) write: truncate, then write the same inode."""
    with open(path, "r+") as f:
        f.truncate(0)
        f.write(text)


def registered(fleet: Fleet, tenant: str) -> tuple[Any, ...] | None:
    rows = fleet.registry(f"SELECT schema_version, status FROM tenants WHERE name = '{tenant}'")
    return rows[0] if rows else None


# --------------------------------------------------------------------------- watching


def test_edit_saved_by_rename_and_in_place_each_converge_within_seconds(
        fleet: Fleet, start: Callable[..., Daemon]) -> None:
    fleet.write_config(config_text({"aaron": {"region": "eu"}}, interval="1h"))
    d = start(fleet)
    d.ready()
    d.wait_summary("1 in sync")
    assert fleet.user_version(fleet.path("aaron", "eu")) == 3

    begun = time.monotonic()
    save_by_rename(fleet.config, config_text({"aaron": {"region": "eu"}, "beta": {"region": "us"}},
                                             interval="1h"))
    eventually(lambda: registered(fleet, "beta") == (3, "active"), what="rename-save applied")
    assert time.monotonic() - begun < CONVERGE
    assert fleet.user_version(fleet.path("beta", "us")) == 3

    begun = time.monotonic()
    save_in_place(fleet.config, config_text({"aaron": {"region": "eu"}, "beta": {"region": "us"},
                                             "carol": {"region": "eu"}}, interval="1h"))
    eventually(lambda: registered(fleet, "carol") == (3, "active"), what="in-place save applied")
    assert time.monotonic() - begun < CONVERGE
    d.wait_summary("3 in sync")
    assert d.stop() == 0


def test_new_migration_file_is_rolled_out_without_a_restart(
        fleet: Fleet, start: Callable[..., Daemon]) -> None:
    fleet.write_config(config_text({"aaron": {"region": "eu"}}, interval="1h"))
    d = start(fleet)
    d.wait_summary("1 in sync")
    fleet.write_migration("0004_tags.sql", "CREATE TABLE tags (id INTEGER PRIMARY KEY);\n")
    eventually(lambda: fleet.user_version(fleet.path("aaron", "eu")) == 4,
               what="migration 0004 applied")
    assert d.stop() == 0


def test_invalid_edit_keeps_last_good_state_and_next_valid_edit_applies(
        fleet: Fleet, start: Callable[..., Daemon]) -> None:
    good = {"aaron": {"region": "eu"}}
    fleet.write_config(config_text(good, interval="1h"))
    d = start(fleet)
    d.wait_summary("1 in sync")
    before = fleet.tenant_digests()

    # a semantic error: located, reported, nothing applied
    save_by_rename(fleet.config, config_text({**good, "beta": {"region": "mars"}}, interval="1h"))
    status = d.wait_summary("invalid")
    assert "tenants.yaml:" in status and "mars" in status and "still applying rev" in status
    # a half-written (empty) file, as seen mid-save or mid-checkout
    mark = len(d.notify.messages)
    save_in_place(fleet.config, "")
    d.notify.wait_for(lambda m: "STATUS=" in m and "invalid" in m and "reconciling" not in m,
                      since=mark)
    time.sleep(0.5)
    assert registered(fleet, "beta") is None
    assert fleet.tenant_digests() == before
    assert not fleet.path("beta", "us").exists() and not (fleet.data / "mars").exists()

    # the error is in the journal and in what `reconcile status` shows
    loads = fleet.registry("SELECT detail FROM events WHERE action = 'load' "
                           "AND outcome = 'failed' ORDER BY id")
    assert len(loads) == 2 and any("mars" in p for p in json.loads(loads[0][0])["problems"])
    shown = fleet.run("status")
    assert shown.returncode == 1 and "tenants.yaml:" in shown.stderr

    save_by_rename(fleet.config, config_text({**good, "beta": {"region": "us"}}, interval="1h"))
    eventually(lambda: registered(fleet, "beta") == (3, "active"), what="valid edit applied")
    final = d.wait_summary("2 in sync")
    assert "invalid" not in final
    status_out = fleet.run("status")
    assert status_out.returncode == 0, status_out.stdout + status_out.stderr
    assert "last pass: 2 in sync" in status_out.stdout and "invalid" not in status_out.stdout
    assert d.stop() == 0


def test_invalid_file_at_start_is_reported_and_fixed_file_applies(
        fleet: Fleet, start: Callable[..., Daemon]) -> None:
    fleet.write_config("version: 1\ntenants: [\n")
    d = start(fleet)
    d.ready()
    status = d.notify.wait_for(lambda m: "STATUS=" in m and "invalid" in m)
    assert "nothing applied yet" in status
    assert not fleet.central.exists()
    save_by_rename(fleet.config, config_text({"aaron": {"region": "eu"}}, interval="1h"))
    d.wait_summary("1 in sync")
    assert d.stop() == 0


def passes(d: Daemon) -> int:
    return sum(1 for e in d.log_events() if e["event"] == "pass starting")


def test_unrelated_files_do_not_wake_it(fleet: Fleet, start: Callable[..., Daemon]) -> None:
    fleet.write_config(config_text({"aaron": {"region": "eu"}}, interval="1h"))
    d = start(fleet)
    d.wait_summary("1 in sync")
    time.sleep(0.5)
    before = passes(d)
    (fleet.root / "README.md").write_text("notes\n")
    (fleet.migrations / "notes.txt").write_text("not a migration\n")
    (fleet.data / "scratch.db").write_text("")
    save_by_rename(fleet.root / "other.yaml", "x: 1\n")
    time.sleep(2.5)  # more than the debounce window
    assert passes(d) == before
    assert d.stop() == 0


def test_lock_held_by_another_reconciler_delays_the_pass_then_it_runs(
        fleet: Fleet, start: Callable[..., Daemon]) -> None:
    fleet.write_config(config_text({"aaron": {"region": "eu"}}, interval="1h"))
    d = start(fleet)
    d.wait_summary("1 in sync")
    lock = os.open(f"{fleet.central}.lock", os.O_RDWR)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        save_by_rename(fleet.config, config_text({"aaron": {"region": "eu"},
                                                  "beta": {"region": "eu"}}, interval="1h"))
        d.notify.wait_for(lambda m: "another reconciler holds the lock" in m)
        assert registered(fleet, "beta") is None
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        os.close(lock)
    eventually(lambda: registered(fleet, "beta") == (3, "active"), what="pass after the lock")
    assert d.stop() == 0


# --------------------------------------------------------------------------- resync


def drift_setting(fleet: Fleet) -> None:
    conn = sqlite3.connect(fleet.central)
    conn.execute("UPDATE settings SET value = 'tampered' WHERE key = 'support_email'")
    conn.commit()
    conn.close()


def setting(fleet: Fleet) -> str:
    return str(fleet.registry("SELECT value FROM settings WHERE key = 'support_email'")[0][0])


def test_periodic_resync_undoes_drift_made_behind_its_back(
        fleet: Fleet, start: Callable[..., Daemon]) -> None:
    fleet.write_config(config_text({"aaron": {"region": "eu"}}, interval="1s"))
    d = start(fleet)
    d.wait_summary("1 in sync")
    drift_setting(fleet)
    eventually(lambda: setting(fleet) == "help@yoursaas.com", what="drift undone")
    assert d.stop() == 0


def test_sighup_rereads_and_reconciles_at_once(fleet: Fleet, start: Callable[..., Daemon]
                                               ) -> None:
    fleet.write_config(config_text({"aaron": {"region": "eu"}}, interval="1h"))
    d = start(fleet)
    d.wait_summary("1 in sync")
    drift_setting(fleet)
    time.sleep(1.0)
    assert setting(fleet) == "tampered"  # nothing watches the registry: only a pass fixes it
    mark = len(d.notify.collect())
    d.signal(signal.SIGHUP)
    eventually(lambda: setting(fleet) == "help@yoursaas.com", timeout=5, what="SIGHUP pass")
    d.notify.wait_for(lambda m: m.startswith("READY=1"), since=mark)
    after = d.notify.messages[mark:]
    assert after[0].startswith("RELOADING=1\nMONOTONIC_USEC=")
    assert d.stop() == 0


# --------------------------------------------------------------------------- signals


SLOW = '''"""Slow on purpose: the test stops the daemon while this runs."""
import time
from pathlib import Path


def migrate(conn):
    conn.execute("CREATE TABLE slow_done (id INTEGER PRIMARY KEY)")
    Path({marker!r}).write_text("started")
    deadline = time.monotonic() + {seconds}
    while Path({hold!r}).exists() and time.monotonic() < deadline:  # the test may release it
        time.sleep(0.02)
    conn.execute("INSERT INTO slow_done (id) VALUES (1)")
'''


def slow_fleet(fleet: Fleet, seconds: float) -> Path:
    """Three tenants at v3, then a slow migration 0004 waiting to roll out, one at a time.
    Returns the marker each run of it writes as it starts; it then takes ``seconds``, or
    less once the test releases it (``release(marker)``)."""
    tenants = {n: {"region": "eu"} for n in ("alpha", "bravo", "charlie")}
    fleet.write_config(config_text(tenants, interval="1h",
                                   rollout={"canary": 1, "batch": 1, "parallel": 1,
                                            "max_failures": 0}))
    first = fleet.run("apply")
    assert first.returncode == 0, first.stderr
    marker = fleet.root.parent / "slow-started"
    marker.with_name("slow-hold").write_text("")
    fleet.write_migration("0004_slow.py", SLOW.format(marker=str(marker), seconds=seconds,
                                                      hold=str(marker.with_name("slow-hold"))))
    return marker


def release(marker: Path) -> None:
    """Let the slow migration of ``slow_fleet`` finish now (the signals were sent)."""
    marker.with_name("slow-hold").unlink()


def consistent(fleet: Fleet) -> dict[str, int]:
    """Every tenant's registry version equals its file's, and the slow table is all-or-nothing."""
    out = {}
    for name, version in fleet.registry("SELECT name, schema_version FROM tenants"):
        path = fleet.path(name, "eu")
        assert fleet.user_version(path) == version, name
        tables = {r[0] for r in fleet.rows(path, "SELECT name FROM sqlite_master")}
        assert ("slow_done" in tables) == (version >= 4), name
        if version >= 4:
            assert fleet.rows(path, "SELECT id FROM slow_done") == [(1,)]
        out[name] = version
    return out


def test_sigterm_during_slow_migration_completes_it_and_exits_0(
        fleet: Fleet, start: Callable[..., Daemon]) -> None:
    marker = slow_fleet(fleet, seconds=20)
    d = start(fleet)
    eventually(marker.exists, what="slow migration started")
    d.signal(signal.SIGTERM)
    time.sleep(0.3)  # the handler runs at once: the daemon waits in Python (time.sleep)
    release(marker)
    assert d.exited(timeout=20) == 0
    versions = consistent(fleet)
    assert versions == {"alpha": 4, "bravo": 3, "charlie": 3}  # in flight finished, no more
    events = fleet.registry("SELECT tenant, outcome FROM events WHERE action = 'migrate'")
    assert ("alpha", "ok") in events
    assert d.notify.messages[-1].startswith("STOPPING=1")
    again = fleet.run("apply")  # the rest follows on the next run
    assert again.returncode == 0, again.stderr
    assert consistent(fleet) == {"alpha": 4, "bravo": 4, "charlie": 4}


STEP = '''"""Slow step {version}: the test signals the daemon while this runs."""
import time
from pathlib import Path


def migrate(conn):
    conn.execute("CREATE TABLE step{version} (id INTEGER PRIMARY KEY)")
    tenant = Path(conn.execute("PRAGMA database_list").fetchone()[2]).stem
    (Path({markers!r}) / f"step{version}-{{tenant}}").write_text("started")
    deadline = time.monotonic() + (0 if tenant in {quick!r} else {seconds})
    while Path({slow!r}).exists() and time.monotonic() < deadline:  # removed once the
        time.sleep(0.02)                                           # test sent its signals
    conn.execute("INSERT INTO step{version} (id) VALUES (1)")
'''


def two_slow_steps(fleet: Fleet, seconds: float, parallel: int = 1,
                   quick: tuple[str, ...] = ()) -> Path:
    """Three tenants at v3, then two slow Python steps (0004, 0005) waiting to roll out.
    Returns the directory where each step, as it starts, writes ``step<v>-<tenant>``;
    the steps are slow (at most ``seconds``) while its ``slow`` file exists, except for
    the ``quick`` tenants."""
    tenants = {n: {"region": "eu"} for n in ("alpha", "bravo", "charlie")}
    fleet.write_config(config_text(tenants, interval="1h",
                                   rollout={"canary": 1, "batch": 2, "parallel": parallel,
                                            "max_failures": 0}))
    first = fleet.run("apply")
    assert first.returncode == 0, first.stderr
    markers = fleet.root.parent / "started"
    markers.mkdir()
    (markers / "slow").write_text("")
    for version in (4, 5):
        fleet.write_migration(f"000{version}_slow{version}.py",
                              STEP.format(version=version, markers=str(markers),
                                          slow=str(markers / "slow"), seconds=seconds,
                                          quick=quick))
    return markers


def started(markers: Path) -> list[str]:
    return sorted(p.name for p in markers.iterdir() if p.name != "slow")


def steps_consistent(fleet: Fleet) -> dict[str, tuple[int, str]]:
    """Every tenant's registry version equals its file's, and each step is all-or-nothing
    and present exactly up to that version. Returns {tenant: (version, status)}."""
    out = {}
    for name, version, status in fleet.registry(
            "SELECT name, schema_version, status FROM tenants"):
        path = fleet.path(name, "eu")
        assert fleet.user_version(path) == version, name
        tables = {r[0] for r in fleet.rows(path, "SELECT name FROM sqlite_master")}
        for step in (4, 5):
            assert (f"step{step}" in tables) == (version >= step), (name, step)
            if version >= step:
                assert fleet.rows(path, f"SELECT id FROM step{step}") == [(1,)], (name, step)
        out[name] = (version, status)
    return out


def test_second_signal_exits_after_the_step_in_flight_commits(
        fleet: Fleet, start: Callable[..., Daemon]) -> None:
    markers = two_slow_steps(fleet, seconds=20)
    d = start(fleet)
    eventually(lambda: started(markers), timeout=PATIENCE, what="step 4 started on the canary")
    d.signal(signal.SIGTERM)
    time.sleep(0.3)
    d.signal(signal.SIGTERM)
    time.sleep(0.3)
    (markers / "slow").unlink()  # the step in flight may finish now
    code = d.exited(timeout=20)  # on its own: a third signal would roll back
    assert code == 128 + signal.SIGTERM
    assert started(markers) == ["step4-alpha"]  # no further step was started
    # the canary's step 4 committed and is recorded as exactly that; nobody else moved
    assert steps_consistent(fleet) == {"alpha": (4, "pending"), "bravo": (3, "active"),
                                       "charlie": (3, "active")}
    events = fleet.registry("SELECT tenant, outcome, detail FROM events WHERE action = 'migrate'")
    assert [(t, o) for t, o, _ in events] == [("alpha", "pending")]
    assert json.loads(events[0][2])["applied"] == [4]
    # 4 committed (confirmed); 5's checksum was recorded before use, never confirmed
    assert fleet.registry("SELECT version, applied FROM migrations WHERE version > 3") == [
        (4, 1), (5, 0)]
    logged = [e["event"] for e in d.log_events()]
    assert any(e.startswith("second signal: stopping right after") for e in logged)
    assert d.notify.messages[-1].startswith("STOPPING=1")
    again = fleet.run("apply")  # the next run continues from v4
    assert again.returncode == 0, again.stderr
    assert steps_consistent(fleet) == {n: (5, "active") for n in ("alpha", "bravo", "charlie")}


def test_second_signal_with_parallel_workers_stops_each_after_its_step(
        fleet: Fleet, start: Callable[..., Daemon]) -> None:
    markers = two_slow_steps(fleet, seconds=20, parallel=2, quick=("alpha",))
    d = start(fleet)
    # the canary (alpha) runs both steps alone; the second wave (bravo, charlie) runs in
    # two worker threads: signal while both run their step 4
    eventually(lambda: {"step4-bravo", "step4-charlie"} <= set(started(markers)),
               timeout=PATIENCE, what="second wave started step 4 in both workers")
    d.signal(signal.SIGTERM)
    time.sleep(0.3)
    d.signal(signal.SIGTERM)
    time.sleep(0.3)
    (markers / "slow").unlink()  # the steps in flight may finish now
    assert d.exited(timeout=20) == 128 + signal.SIGTERM
    assert started(markers) == ["step4-alpha", "step4-bravo", "step4-charlie", "step5-alpha"]
    assert steps_consistent(fleet) == {"alpha": (5, "active"), "bravo": (4, "pending"),
                                       "charlie": (4, "pending")}
    again = fleet.run("apply")
    assert again.returncode == 0, again.stderr
    assert steps_consistent(fleet) == {n: (5, "active") for n in ("alpha", "bravo", "charlie")}


def test_third_signal_exits_at_once_and_rolls_back_the_transaction(
        fleet: Fleet, start: Callable[..., Daemon]) -> None:
    marker = slow_fleet(fleet, seconds=30)
    d = start(fleet)
    eventually(marker.exists, what="slow migration started")
    begun = time.monotonic()
    for _ in range(3):
        d.signal(signal.SIGTERM)
        time.sleep(0.3)
    # on its own: stop() would send a fourth SIGTERM, which (once the daemon restored
    # the default handlers on its way out) kills it by the signal under load
    code = d.exited(timeout=10)
    assert code == 128 + signal.SIGTERM
    assert time.monotonic() - begun < 10  # did not wait out the 30 s migration
    assert consistent(fleet) == {"alpha": 3, "bravo": 3, "charlie": 3}
    assert d.notify.messages[-1].startswith("STOPPING=1")


def test_notify_messages_arrive_in_order_with_watchdog_pings_during_a_long_pass(
        fleet: Fleet, start: Callable[..., Daemon]) -> None:
    marker = slow_fleet(fleet, seconds=1.5)
    d = start(fleet, env={"WATCHDOG_USEC": "200000"})  # a ping every 0.1 s
    eventually(marker.exists, what="slow migration started")
    d.wait_summary("3 in sync", timeout=30)
    assert d.stop() == 0
    messages = d.notify.messages
    others = [m for m in messages if m != "WATCHDOG=1"]
    assert others[0] == "READY=1"
    assert others[-1].startswith("STOPPING=1")
    assert all(m.startswith("STATUS=") for m in others[1:-1])
    assert any(s.startswith("reconciling rev") for s in d.notify.statuses)
    # the pass took > 4.5 s (three slow migrations): the watchdog kept pinging through it
    first = messages.index(next(m for m in messages if m.startswith("STATUS=reconciling")))
    last = messages.index(next(m for m in messages if "3 in sync" in m))
    assert messages[first:last].count("WATCHDOG=1") >= 20


# --------------------------------------------------------------------------- backoff


FAILING = '''"""Fails on any tenant holding a `blocker` table (bad data the operator must fix)."""


def migrate(conn):
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'blocker'").fetchone():
        raise RuntimeError("blocker table present")
    conn.execute("CREATE TABLE v4 (id INTEGER PRIMARY KEY)")
'''


def migrate_events(fleet: Fleet, tenant: str) -> list[tuple[Any, ...]]:
    return fleet.registry(f"SELECT id, outcome FROM events WHERE tenant = '{tenant}' "
                          "AND action = 'migrate' ORDER BY id")


def test_failing_tenant_is_retried_when_its_backoff_expires_not_in_a_loop(
        fleet: Fleet, start: Callable[..., Daemon]) -> None:
    tenants = {"bad": {"region": "eu"}, "good": {"region": "eu"}}
    # drift: warn — the hand-made blocker table is schema drift, which would block "bad"
    fleet.write_config(config_text(tenants, interval="1h", drift="warn",
                                   rollout={"canary": 0, "batch": 10, "max_failures": 5}))
    assert fleet.run("apply").returncode == 0
    conn = sqlite3.connect(fleet.path("bad", "eu"))
    conn.execute("CREATE TABLE blocker (id INTEGER)")
    conn.commit()
    conn.close()
    fleet.write_migration("0004_guarded.py", FAILING)
    assert fleet.run("apply").returncode == 3
    (failures, retry_at), = fleet.registry("SELECT failures, retry_at FROM tenants "
                                           "WHERE name = 'bad'")
    assert failures == 1 and retry_at > time.time() + 20  # the first backoff step
    # let the backoff run out 3 s after the daemon starts
    conn = sqlite3.connect(fleet.central)
    conn.execute("UPDATE tenants SET retry_at = ? WHERE name = 'bad'", (time.time() + 3,))
    conn.commit()
    conn.close()

    begun = time.monotonic()
    d = start(fleet)
    d.wait_summary("1 in sync")  # the first pass: bad is reported, not retried
    assert len(migrate_events(fleet, "bad")) == 1
    eventually(lambda: len(migrate_events(fleet, "bad")) == 2, timeout=12,
               what="retried when the backoff expired")
    assert time.monotonic() - begun >= 2.5
    (failures, retry_at), = fleet.registry("SELECT failures, retry_at FROM tenants "
                                           "WHERE name = 'bad'")
    assert failures == 2 and retry_at > time.time() + 45  # exponential: 30 s, then 60 s
    time.sleep(1.5)
    assert len(migrate_events(fleet, "bad")) == 2  # and not again until then

    # a change of migrations resets the backoff: retried at once, counting from 1
    fleet.write_migration("0005_more.sql", "CREATE TABLE more (id INTEGER PRIMARY KEY);\n")
    eventually(lambda: len(migrate_events(fleet, "bad")) == 3, what="retried after a change")
    eventually(lambda: fleet.registry("SELECT failures FROM tenants WHERE name = 'bad'")
               == [(1,)], what="backoff reset")
    assert fleet.user_version(fleet.path("good", "eu")) == 5
    assert d.stop() == 0


# --------------------------------------------------------------------------- pull mode


def git(root: Path, *args: str) -> str:
    out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                         check=True)
    return out.stdout.strip()


def gitops(fleet: Fleet, tmp: Path) -> tuple[Fleet, Path]:
    """origin.git (bare) ← dev (pushes) ; the daemon's clone is the returned fleet."""
    origin, dev = tmp / "origin.git", tmp / "dev"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], check=True)
    shutil.copytree(fleet.migrations, dev / "migrations")
    (dev / "tenants.yaml").write_text(config_text({"aaron": {"region": "eu"}}, interval="1s"))
    (dev / ".gitignore").write_text("data/\n")
    git(dev.parent, "init", "-q", "-b", "main", str(dev))
    git(dev, "config", "user.email", "dev@example.com")
    git(dev, "config", "user.name", "Dev")
    git(dev, "add", ".")
    git(dev, "commit", "-q", "-m", "fleet")
    git(dev, "remote", "add", "origin", str(origin))
    git(dev, "push", "-q", "origin", "main")
    clone = tmp / "clone"
    subprocess.run(["git", "clone", "-q", "-b", "main", str(origin), str(clone)], check=True)
    return Fleet(clone), dev


def push(dev: Path, tenants: dict[str, dict[str, Any]], message: str, force: bool = False
         ) -> str:
    (dev / "tenants.yaml").write_text(config_text(tenants, interval="1s"))
    git(dev, "commit", "-q", "-am", message)
    git(dev, "push", "-q", *(["--force"] if force else []), "origin", "main")
    return git(dev, "rev-parse", "HEAD")


def test_pull_mode_applies_pushed_commit_and_events_carry_its_sha(
        fleet: Fleet, start: Callable[..., Daemon], tmp_path: Path) -> None:
    clone, dev = gitops(fleet, tmp_path)
    first = git(clone.root, "rev-parse", "HEAD")
    d = start(clone, "--git-pull")
    d.wait_summary(f"rev {first[:7]}")
    pushed = push(dev, {"aaron": {"region": "eu"}, "beta": {"region": "us"}}, "add beta")
    eventually(lambda: registered(clone, "beta") == (3, "active"), what="pushed commit applied")
    assert git(clone.root, "rev-parse", "HEAD") == pushed
    revisions = {r[0] for r in clone.registry("SELECT revision FROM events WHERE tenant = 'beta'")}
    assert revisions == {pushed}
    pulls = clone.registry("SELECT outcome, revision FROM events WHERE action = 'pull'")
    assert ("ok", pushed) in pulls
    assert d.stop() == 0


def test_pull_mode_refuses_and_reports_force_pushed_history(
        fleet: Fleet, start: Callable[..., Daemon], tmp_path: Path) -> None:
    clone, dev = gitops(fleet, tmp_path)
    d = start(clone, "--git-pull")
    applied = push(dev, {"aaron": {"region": "eu"}, "beta": {"region": "us"}}, "add beta")
    eventually(lambda: registered(clone, "beta") == (3, "active"), what="first push applied")

    git(dev, "reset", "-q", "--hard", "HEAD~1")
    rewritten = push(dev, {"aaron": {"region": "eu"}, "gamma": {"region": "eu"}}, "rewrite",
                     force=True)
    status = d.wait_summary("pull refused")
    assert "not a fast-forward" in status and rewritten[:7] in status
    time.sleep(2.5)  # two more intervals: still refused, nothing from the rewrite applied
    assert registered(clone, "gamma") is None and not clone.path("gamma", "eu").exists()
    assert git(clone.root, "rev-parse", "HEAD") == applied
    refused = clone.registry("SELECT revision, detail FROM events WHERE action = 'pull' "
                             "AND outcome = 'refused'")
    assert len(refused) == 1 and refused[0][0] == applied  # reported once, not every tick
    assert rewritten in json.loads(refused[0][1])["fetched"]
    shown = clone.run("status")
    assert "pull refused: not a fast-forward" in shown.stdout
    assert d.stop() == 0


def test_pull_mode_does_not_apply_uncommitted_edits(
        fleet: Fleet, start: Callable[..., Daemon], tmp_path: Path) -> None:
    clone, _ = gitops(fleet, tmp_path)
    d = start(clone, "--git-pull")
    d.wait_summary("1 in sync")
    clone.config.write_text(config_text({"aaron": {"region": "eu"}, "local": {"region": "eu"}},
                                        interval="1s"))
    status = d.wait_summary("pull refused")
    assert "local edits in tenants.yaml" in status
    time.sleep(1.5)
    assert registered(clone, "local") is None
    assert d.stop() == 0


def test_without_pull_mode_local_edit_applies_and_events_say_dirty(
        fleet: Fleet, start: Callable[..., Daemon], tmp_path: Path) -> None:
    clone, _ = gitops(fleet, tmp_path)
    head = git(clone.root, "rev-parse", "HEAD")
    clone.config.write_text(config_text({"aaron": {"region": "eu"}}, interval="1h"))
    d = start(clone)
    d.wait_summary("1 in sync")
    save_by_rename(clone.config, config_text({"aaron": {"region": "eu"}, "beta": {"region": "us"}},
                                             interval="1h"))
    eventually(lambda: registered(clone, "beta") == (3, "active"), what="local edit applied")
    revisions = {r[0] for r in clone.registry("SELECT revision FROM events WHERE tenant = 'beta'")}
    assert revisions == {f"{head}+dirty"}
    assert d.stop() == 0
