"""Several "hosts" on this machine for the multi-host tests (issue 15).

Each host is its own git clone of one bare remote holding ``tenants.yaml`` and the
migrations (pull mode), so relative ``data_dir``/``central`` give each host its own data
root and its own ``central.db``. The hosts share nothing else but the replica store: a
real ``nats-server`` on 127.0.0.1 (``backupkit.NatsServer``), or a ``file://`` directory
for fast tests. An agent is the real ``reconcile daemon --git-pull --region R`` as a
subprocess of the test, started, stopped (SIGTERM) or killed (SIGKILL) like any process.

    kit = Hosts(tmp_path, replica=nats.url + "/fleet", regions=("eu", "us"))
    eu, us = kit.host("eu"), kit.host("us")
    kit.push({"aaron": {"region": "eu"}})
    eu.start(); us.start()
    wait_for(lambda: eu.registry("SELECT name FROM tenants") == [("aaron",)])
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import IO, Any

import yaml

from tests.conftest import RECONCILE, REPO
from tests.e2e.backupkit import SYNC, terminate, wait_for

__all__ = ["Host", "Hosts", "wait_for"]


def git(root: Path, *args: str) -> str:
    out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                         check=True)
    return out.stdout.strip()


class Hosts:
    """A bare remote (``origin.git``), a developer clone that pushes (``dev``), and one
    clone per host under ``root``. ``replica``: the replica base URL every host uses
    (``settings.backup.replica``); ``regions``: region → its settings (endpoint...)."""

    def __init__(self, root: Path, replica: str, regions: dict[str, dict[str, Any]] | tuple[
            str, ...] = ("eu", "us"), **settings: Any) -> None:
        self.root = root
        self.replica = replica
        self.regions = {r: {} for r in regions} if isinstance(regions, tuple) else regions
        self.settings: dict[str, Any] = {"interval": "1s", "stale_after": "5s", **settings}
        self.origin = root / "origin.git"
        self.dev = root / "dev"
        self.hosts: dict[str, Host] = {}
        subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(self.origin)],
                       check=True)
        shutil.copytree(REPO / "migrations", self.dev / "migrations",
                        ignore=shutil.ignore_patterns("__pycache__"))
        (self.dev / ".gitignore").write_text("data/\n")
        git(root, "init", "-q", "-b", "main", str(self.dev))
        git(self.dev, "config", "user.email", "dev@example.com")
        git(self.dev, "config", "user.name", "Dev")
        git(self.dev, "remote", "add", "origin", str(self.origin))
        self.push({}, "empty fleet")

    def config(self, tenants: dict[str, dict[str, Any]]) -> dict[str, Any]:
        return {
            "version": 1,
            "settings": {"domain": "yoursaas.com",
                         "backup": {"replica": self.replica, "sync_interval": SYNC},
                         **self.settings},
            "globals": {"support_email": "help@yoursaas.com"},
            "regions": self.regions,
            "tenants": tenants,
        }

    def push(self, tenants: dict[str, dict[str, Any]], message: str = "fleet") -> str:
        """Commit a tenants.yaml declaring ``tenants`` and push it; returns the sha."""
        (self.dev / "tenants.yaml").write_text(
            yaml.safe_dump(self.config(tenants), sort_keys=False))
        git(self.dev, "add", "-A")
        git(self.dev, "commit", "-q", "--allow-empty", "-m", message)
        git(self.dev, "push", "-q", "origin", "main")
        return git(self.dev, "rev-parse", "HEAD")

    def host(self, region: str) -> Host:
        """The host of ``region`` (its clone is made on first use)."""
        if region not in self.hosts:
            clone = self.root / f"host-{region}"
            subprocess.run(["git", "clone", "-q", "-b", "main", str(self.origin), str(clone)],
                           check=True)
            self.hosts[region] = Host(self, region, clone)
        return self.hosts[region]

    def stop_all(self) -> None:
        for h in self.hosts.values():
            h.stop()


class Host:
    """One host: its clone (``root``), its data (``root/data``) and its agent process."""

    def __init__(self, kit: Hosts, region: str, root: Path) -> None:
        self.kit = kit
        self.region = region
        self.root = root
        self.data = root / "data"
        self.central = self.data / "central.db"
        self.logfile = kit.root / f"agent-{region}.log"  # outside the clone: a clean tree
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[str] | None = None

    # -- the agent
    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "RECONCILE_CRASH_AT"}
        return {**env, "RECONCILE_CONFIG": str(self.root / "tenants.yaml"), **(extra or {})}

    def start(self, env: dict[str, str] | None = None, *args: str) -> Host:
        """Start ``reconcile daemon --git-pull --region <region>`` in this clone."""
        assert self.proc is None or self.proc.poll() is not None, "agent already running"
        self._log = self.logfile.open("a")
        self.proc = subprocess.Popen(
            [RECONCILE, "daemon", "--git-pull", "--region", self.region, "--log-format",
             "json", *args], cwd=self.root, env=self.env(env), stdout=self._log,
            stderr=subprocess.STDOUT)
        return self

    def stop(self) -> int | None:
        """SIGTERM the agent and wait for it (its Litestream processes stop with it)."""
        if self.proc is None:
            return None
        code = terminate(self.proc)
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def kill(self) -> None:
        """SIGKILL the agent (its children die with it: PR_SET_PDEATHSIG)."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def children(self, *words: str) -> list[int]:
        """Pids of the agent's child processes whose command line holds every word
        (e.g. ``children("restore", "-f")``: its registry followers)."""
        assert self.proc is not None
        out = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) != self.proc.pid:
                continue
            text = [a.decode(errors="replace") for a in argv]
            if all(w in text for w in words):
                out.append(int(entry.name))
        return out

    def follower(self, region: str) -> int | None:
        """Pid of the agent's follower of ``region``'s registry, if one runs now."""
        pids = self.children("restore", "-f", str(self.follow_copy(region)))
        return pids[0] if pids else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.logfile.read_text() if self.logfile.exists() else ""

    # -- commands and files
    def run(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120
            ) -> subprocess.CompletedProcess[str]:
        """A one-shot ``reconcile`` command in this host's clone."""
        return subprocess.run([RECONCILE, *args], cwd=self.root, env=self.env(env), text=True,
                              capture_output=True, timeout=timeout)

    def registry(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` on this host's own registry, read-only ([] before it exists)."""
        return read(self.central, sql, args)

    def follow_copy(self, region: str) -> Path:
        """This host's followed copy of ``region``'s registry."""
        return self.data / "_follow" / f"{region}.db"

    def followed(self, region: str, sql: str, args: tuple[Any, ...] = ()
                 ) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` on this host's copy of ``region``'s registry ([] if none)."""
        return read(self.follow_copy(region), sql, args)

    def path(self, tenant: str) -> Path:
        return self.data / self.region / f"{tenant}.db"


def read(path: Path, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """``sql`` on the SQLite file at ``path`` opened read-only; [] while it is missing or
    not readable yet (being created or restored)."""
    if not path.exists():
        return []
    try:
        conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            return [tuple(r) for r in conn.execute(sql, args).fetchall()]
        finally:
            conn.close()
    except sqlite3.Error:
        return []
