"""Two region "hosts" on this machine for the cross-host relocation tests (issue 15).

Each host is its own project folder (tenants.yaml + migrations + its own data root and
registry) with its own ``reconcile daemon --region NAME`` (and the Litestream it
supervises); they share nothing but the replica store. Every host gets the same
tenants.yaml text (``Hosts.declare``), as every clone of one git remote would.
Each agent replicates its registry and follows the others' with Litestream (the real
follower, ``reconciler.follow``), so a host knows another region only as fresh as its
followed copy.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from reconciler.routing import Router, RoutingError
from tests.conftest import RECONCILE, Fleet
from tests.e2e.backupkit import SYNC, wait_for
from tests.e2e.backupkit import titles as titles  # the tests read rows through this kit


class Host:
    """One region's host: a project folder and, while started, its agent daemon."""

    def __init__(self, root: Path, region: str) -> None:
        self.region = region
        self.fleet = Fleet(root)
        root.mkdir(parents=True)
        self.fleet.use_shipped_migrations()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = root / "daemon.log"

    @property
    def central(self) -> Path:
        return self.fleet.central

    def path(self, tenant: str) -> Path:
        return self.fleet.path(tenant, self.region)

    def start(self, crash_at: str | None = None, env: dict[str, str] | None = None
              ) -> None:
        """Start the agent; ``crash_at``: its RECONCILE_CRASH_AT; ``env``: more of its
        environment (e.g. a test's LD_PRELOAD)."""
        env = {**os.environ, "RECONCILE_CONFIG": str(self.fleet.config), **(env or {})}
        env.pop("RECONCILE_CRASH_AT", None)
        if crash_at:
            env["RECONCILE_CRASH_AT"] = crash_at
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [RECONCILE, "daemon", "--region", self.region, "--log-format", "json"],
                cwd=self.fleet.root, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_dead(self, timeout: float = 120) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL the agent and (its process group) the Litestream it supervised."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        elif self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # its orphaned Litestream

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(60)
        self.kill()

    def registry(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if not self.central.exists():
            return []
        conn = sqlite3.connect(f"{self.central.as_uri()}?mode=ro", uri=True, timeout=10)
        try:
            return [tuple(r) for r in conn.execute(sql, args)]
        except sqlite3.OperationalError:
            return []
        finally:
            conn.close()

    def status_of(self, tenant: str) -> str | None:
        rows = self.registry("SELECT status FROM tenants WHERE name = ?", (tenant,))
        return str(rows[0][0]) if rows else None

    def generation(self, tenant: str) -> int | None:
        rows = self.registry("SELECT generation FROM tenants WHERE name = ?", (tenant,))
        return int(rows[0][0]) if rows else None

    def events(self, action: str) -> list[tuple[Any, ...]]:
        return self.registry("SELECT tenant, outcome, agent FROM events WHERE action = ?",
                             (action,))


class Hosts:
    """The two hosts and the replica store both use."""

    def __init__(self, root: Path, replica: str, regions: tuple[str, ...] = ("eu", "us")
                 ) -> None:
        self.replica = replica
        self.hosts = {r: Host(root / f"host-{r}", r) for r in regions}

    def __getitem__(self, region: str) -> Host:
        return self.hosts[region]

    def __iter__(self) -> Iterator[Host]:
        return iter(self.hosts.values())

    def declare(self, tenants: dict[str, str], **settings: Any) -> None:
        """The same tenants.yaml on every host: ``tenants``: name → region."""
        text = yaml.safe_dump({
            "version": 1,
            "settings": {"domain": "yoursaas.com", "interval": "1s",
                         "backup": {"replica": self.replica, "sync_interval": SYNC,
                                    "lag_threshold": "5s"}, **settings},
            "regions": {r: {} for r in self.hosts},
            "tenants": {n: {"region": r} for n, r in tenants.items()},
        }, sort_keys=False)
        for host in self:
            tmp = host.fleet.config.with_name(".tenants.yaml.tmp")
            tmp.write_text(text)
            os.replace(tmp, host.fleet.config)

    def start(self) -> None:
        for host in self:
            host.start()

    def close(self) -> None:
        for host in self:
            host.stop()


class Writer:
    """An application on one host writing through the routing library, one row per
    transaction; ``acked`` holds every row whose commit returned."""

    def __init__(self, host: Host, hostname: str, prefix: str = "row") -> None:
        self.host = host
        self.hostname = hostname
        self.prefix = prefix
        self.acked: list[str] = []
        self.refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Writer:
        self._thread.start()
        return self

    def _run(self) -> None:
        n = 0
        with Router(self.host.central) as router:
            while not self._stop.is_set():
                title = f"{self.prefix}-{n}"
                try:
                    with router.connect(self.hostname) as db:
                        db.execute("INSERT INTO notes (title) VALUES (?)", (title,))
                    self.acked.append(title)
                    n += 1
                except (RoutingError, sqlite3.Error):
                    self.refused += 1
                    time.sleep(0.02)
                time.sleep(0.005)

    def stop(self) -> list[str]:
        self._stop.set()
        self._thread.join(30)
        return self.acked


def settle(pred: Any, what: str, timeout: float = 90) -> Any:
    return wait_for(pred, timeout, what)


def live_copies(hosts: Hosts, tenant: str) -> list[str]:
    """The regions whose registry holds ``tenant`` in service (active)."""
    return [h.region for h in hosts if h.status_of(tenant) == "active"]


def wait_quiet(seconds: float) -> None:
    time.sleep(seconds)
