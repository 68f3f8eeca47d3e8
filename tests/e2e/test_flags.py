"""No option is accepted and then ignored (issue 12, item 3): every command is run with
every global option, through the real CLI. An option the command does not act on is
refused before anything runs — exit 1, a message naming the option and why, and not
one entry of the fleet changed (``reconcile --dry-run daemon`` used to create tenant
files, ``reconcile --dry-run restore`` to restore). An option it acts on is shown to
have its effect where it has one: ``--dry-run`` changes nothing, ``-c`` is the file
read, ``--json`` prints JSON, ``--log-format json`` writes JSON lines, ``--log-level``
filters, ``--no-wait`` exits at once while another process holds the fleet lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.options import GLOBAL, HONOURS
from tests.conftest import RECONCILE, Fleet
from tests.e2e.conftest import listing

COMMANDS: dict[str, tuple[str, ...]] = {
    "apply": ("apply",),
    "plan": ("plan",),
    "status": ("status",),
    "validate": ("validate",),
    "history": ("history",),
    "route": ("route", "aaron.yoursaas.com"),
    "daemon": ("daemon",),
    "restore": ("restore", "hooli", "--from", "backup/hooli.db"),
    "gc": ("gc", "--retired-older-than", "30d"),
    "completion": ("completion", "bash"),
    "drift": ("drift",),
    "metrics": ("metrics",),
    "backups": ("backups", "aaron"),
}
VALUES: dict[str, tuple[str, ...]] = {
    "config": ("-c", "desired/tenants.yaml"), "json": ("--json",),
    "log_format": ("--log-format", "json"), "log_level": ("--log-level", "error"),
    "dry_run": ("--dry-run",), "no_wait": ("--no-wait",), "retry_failed": ("--retry-failed",),
    "verbose": ("--verbose",),
    "region": ("--region", "us"),
}
CELLS = [(c, o) for c in COMMANDS for o in GLOBAL]


def test_every_command_declares_every_global_option() -> None:
    assert set(HONOURS) == set(COMMANDS)  # a new command must be added here and there
    assert set(VALUES) == set(GLOBAL)


def _with_work(root: Path) -> Fleet:
    """Converged on aaron and acme, with hooli declared but not created yet (a pass would
    create it); tenants.yaml lives in desired/, so only ``-c`` finds it."""
    fleet = Fleet(root)
    fleet.root.mkdir()
    fleet.use_shipped_migrations()
    fleet.declare({"aaron": {"region": "eu"}, "acme": {"region": "us"}})
    assert fleet.run().returncode == 0
    fleet.declare({"aaron": {"region": "eu"}, "acme": {"region": "us"},
                   "hooli": {"region": "us"}})
    (fleet.root / "desired").mkdir()
    moved = fleet.root / "desired" / "tenants.yaml"
    moved.write_text(fleet.config.read_text().replace("domain: yoursaas.com",
                                                      "domain: yoursaas.com\n  data_dir: ../data"))
    (fleet.root / "desired" / "migrations").symlink_to(fleet.migrations)
    (fleet.root / "backup").mkdir()
    return fleet


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    """One fleet for the runs that must change nothing (each compares it before/after)."""
    return _with_work(tmp_path_factory.mktemp("flags") / "fleet")


@pytest.fixture
def fleet_with_work(tmp_path: Path) -> Fleet:
    """A fleet of its own, for runs that may change it."""
    return _with_work(tmp_path / "fleet")


def _changes(command: str, option: str) -> bool:
    return command in ("apply", "gc", "daemon") and option not in (
        "dry_run", "no_wait") and option in HONOURS[command]


def _run(fleet: Fleet, argv: list[str], timeout: float = 60
         ) -> subprocess.CompletedProcess[str]:
    # RECONCILE_CONFIG names a file that does not exist: -c is what finds tenants.yaml
    return fleet.run(*argv, env={"RECONCILE_CONFIG": str(fleet.root / "absent.yaml")},
                     timeout=timeout)


def _argv(command: str, option: str) -> list[str]:
    extra = [] if option == "config" else list(VALUES["config"])
    return [*VALUES[option], *extra, *COMMANDS[command]]


REFUSED = {c: [o for o in GLOBAL if o not in HONOURS[c]] for c in COMMANDS}


@pytest.mark.parametrize("command", [c for c in COMMANDS if REFUSED[c]])
def test_an_option_the_command_does_not_use_is_refused_and_nothing_changes(
        shared: Fleet, command: str) -> None:
    """Every option the command does not act on, all in one run (each is refused on its
    own line, independently of the others: ``options.refusal``)."""
    before = listing(shared.root)
    argv = [a for option in REFUSED[command] for a in VALUES[option]]
    if "config" in HONOURS[command]:
        argv += VALUES["config"]
    result = _run(shared, [*argv, *COMMANDS[command]])
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    for option in REFUSED[command]:
        flag = GLOBAL[option]
        assert f"`reconcile {command}` does not take {flag}: it would be ignored" \
            in result.stderr, (option, result.stderr)
    assert listing(shared.root) == before


@pytest.mark.parametrize(("command", "option"),
                         [c for c in CELLS if c[1] in HONOURS[c[0]] and c[0] != "daemon"],
                         ids=[f"{c}-{o}" for c, o in CELLS if o in HONOURS[c] and c != "daemon"])
def test_an_option_the_command_uses_has_its_effect(
        request: pytest.FixtureRequest, command: str, option: str) -> None:
    fleet: Fleet = request.getfixturevalue("fleet_with_work" if _changes(command, option)
                                           else "shared")
    before = listing(fleet.root)
    lock = _held_lock(fleet) if option == "no_wait" else None
    try:
        result = _run(fleet, _argv(command, option))
    finally:
        if lock is not None:
            os.close(lock)
    assert "Traceback" not in result.stderr
    if command == "restore" and option == "dry_run":  # honoured with --at only (backups)
        assert result.returncode == 1
        assert "--dry-run goes with --at" in result.stderr
        assert listing(fleet.root) == before
        return
    assert "would be ignored" not in result.stderr
    if option == "region":  # read and judged: an agent needs settings.backup (off here)
        assert result.returncode == 1
        assert "--region us needs settings.backup" in result.stderr + result.stdout
        assert listing(fleet.root) == before
        return
    if option == "no_wait":  # the lock is held: --no-wait exits at once, saying so
        assert result.returncode == 1
        assert ("another reconciler is acting on this fleet" in result.stderr
                or "another reconciler is applying a pass" in result.stderr)  # plan's words
        return
    if option == "dry_run" or command not in ("apply", "restore", "gc"):
        assert listing(fleet.root) == before
    if command == "restore":  # hooli is not missing: refused, with its reason
        assert result.returncode == 1
        assert "hooli" in result.stderr + result.stdout  # --json: the error is on stdout
        return
    if command == "backups":  # settings.backup is off here: refused, saying so
        assert result.returncode == 1
        assert "backups are off" in result.stderr + result.stdout
        return
    assert result.returncode in (0, 2, 3), result.stderr  # it found and read -c's file
    if option == "json":
        json.loads(result.stdout)
    if option == "log_format" and command == "apply":
        events = [json.loads(line) for line in result.stderr.splitlines()]
        assert any(e.get("tenant") == "hooli" for e in events)
    if option == "log_level" and command == "apply":
        assert "hooli" not in result.stderr  # its create is logged at info, filtered out
    if command == "apply" and option != "dry_run":
        assert fleet.path("hooli", "us").exists()


def _held_lock(fleet: Fleet) -> int:
    fd = os.open(fleet.data / "central.db.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


@pytest.fixture
def daemon_runs(fleet_with_work: Fleet) -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("option", sorted(HONOURS["daemon"] - {"region"}))
def test_the_daemon_acts_on_the_options_it_takes(
        fleet_with_work: Fleet, daemon_runs: list[subprocess.Popen[str]], option: str
        ) -> None:
    fleet = fleet_with_work
    argv = [RECONCILE, *_argv("daemon", option)]
    if option != "log_format":
        argv.insert(1, "--log-format=json")  # to read its log lines here
    env = {**os.environ, "RECONCILE_CONFIG": str(fleet.root / "absent.yaml")}
    proc = subprocess.Popen(argv, cwd=fleet.root, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    daemon_runs.append(proc)
    deadline = time.monotonic() + 60
    while not fleet.path("hooli", "us").exists() and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    assert fleet.path("hooli", "us").exists()  # it read -c's file and applied it
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    events = [json.loads(line) for line in err.splitlines()]
    if option == "log_level":  # --log-level error: no info lines
        assert all(e["level"] in ("error", "critical") for e in events), events
    else:
        assert any(e.get("event") == "pass finished" for e in events)
