"""Shared fixtures: real fleets (tenants.yaml, migrations, SQLite files) in tmp_path,
and the real ``reconcile`` console script run as a subprocess."""

from __future__ import annotations

import compileall
import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.migrations import Catalog
from reconciler.registry import Registry
from reconciler.routing import Router

REPO = Path(__file__).resolve().parents[1]
RECONCILE = str(Path(sys.executable).with_name("reconcile"))


def pytest_configure(config: pytest.Config) -> None:
    """Compile the package's bytecode once: with PYTHONDONTWRITEBYTECODE=1 (set on this
    machine) an editable install would otherwise compile every module again in every one
    of the suite's hundreds of ``reconcile`` subprocesses (~0.3 s each)."""
    compileall.compile_dir(REPO / "reconciler", quiet=1)


class Fleet:
    """A project folder: tenants.yaml + migrations/ + data/ under tmp_path."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.config = root / "tenants.yaml"
        self.migrations = root / "migrations"
        self.data = root / "data"
        self.central = self.data / "central.db"

    # -- building
    def use_shipped_migrations(self) -> Fleet:
        if self.migrations.exists():
            shutil.rmtree(self.migrations)
        shutil.copytree(REPO / "migrations", self.migrations,
                        ignore=shutil.ignore_patterns("__pycache__"))
        return self

    def write_migration(self, name: str, text: str) -> Path:
        self.migrations.mkdir(parents=True, exist_ok=True)
        path = (self.migrations / name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def write_config(self, config: str | dict[str, Any]) -> Path:
        text = config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False)
        self.config.write_text(text)
        return self.config

    def declare(self, tenants: dict[str, dict[str, Any]], regions: tuple[str, ...] = ("eu", "us"),
                **settings: Any) -> Path:
        """Write a tenants.yaml with default settings plus ``settings`` overrides."""
        return self.write_config({
            "version": 1,
            "settings": {"domain": "yoursaas.com", **settings},
            "globals": {"support_email": "help@yoursaas.com"},
            "regions": {r: {} for r in regions},
            "tenants": tenants,
        })

    # -- running
    def run(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        inherited = {k: v for k, v in os.environ.items() if k != "RECONCILE_CRASH_AT"}
        full_env = {**inherited, "RECONCILE_CONFIG": str(self.config), **(env or {})}
        return subprocess.run([RECONCILE, *args], cwd=self.root, env=full_env, text=True,
                              capture_output=True, timeout=timeout, input=input)

    # -- inspecting
    def path(self, tenant: str, region: str) -> Path:
        return self.data / region / f"{tenant}.db"

    def user_version(self, path: Path) -> int:
        conn = sqlite3.connect(path)
        try:
            return int(conn.execute("PRAGMA user_version").fetchone()[0])
        finally:
            conn.close()

    def rows(self, path: Path, sql: str) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
        try:
            return [tuple(r) for r in conn.execute(sql).fetchall()]
        finally:
            conn.close()

    def registry(self, sql: str) -> list[tuple[Any, ...]]:
        return self.rows(self.central, sql)

    def digests(self, below: Path | None = None) -> dict[str, str]:
        """sha256 of every file below ``below`` (default: data dir), by relative path."""
        base = below or self.data
        out: dict[str, str] = {}
        if not base.exists():
            return out
        for p in sorted(base.rglob("*")):
            if p.is_file():
                out[str(p.relative_to(base))] = hashlib.sha256(p.read_bytes()).hexdigest()
        return out

    def tenant_digests(self) -> dict[str, str]:
        """Digests of tenant files only (the registry changes on every pass: events)."""
        return {k: v for k, v in self.digests().items()
                if not k.startswith("central.db")}


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    f = Fleet(tmp_path / "fleet")
    f.root.mkdir()
    f.use_shipped_migrations()
    return f


def wait_delivered(pid: int, signum: int, timeout: float = 20.0) -> None:
    """Return once the kernel delivered ``signum`` to process ``pid`` (it is no longer
    pending in /proc/PID/status), or the process is gone: a test that sends a signal and
    then acts cannot have its next step overtake the signal on a loaded machine. The
    process's Python handler runs at its next instruction after delivery."""
    bit = 1 << (signum - 1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            fields = dict(line.split(":", 1) for line in
                          Path(f"/proc/{pid}/status").read_text().splitlines())
        except (OSError, ValueError):
            return
        if fields.get("State", "").strip().startswith("Z"):
            return
        if not (int(fields["SigPnd"], 16) | int(fields["ShdPnd"], 16)) & bit:
            return
        time.sleep(0.005)


def make_db(path: Path, version: int, rows: int = 0, wal: bool = False) -> Path:
    """A tenant-like file at ``version`` (schema of the shipped migrations not needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    if wal:
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO t (v) VALUES (?)", [(f"row{i}",) for i in range(rows)])
    conn.execute(f"PRAGMA user_version = {version}")
    conn.commit()
    conn.close()
    return path


# routing tests (tests/test_routing*.py): a registry as the reconciler writes it, and a
# router reading it
@pytest.fixture
def reg(fleet: Fleet) -> Iterator[Registry]:
    r = Registry.open(fleet.central)
    with r.transaction():
        r.set_setting("support_email", "help@yoursaas.com")
    yield r
    r.close()


@pytest.fixture
def router(fleet: Fleet, reg: Registry) -> Iterator[Router]:
    r = Router(fleet.central)
    yield r
    r.close()


def run_all(catalog: Catalog, db: Path) -> sqlite3.Connection:
    """Run every migration on ``db`` the way the reconciler does (one transaction each)."""
    conn = sqlite3.connect(db, isolation_level=None)
    for m in catalog.migrations:
        conn.execute("BEGIN IMMEDIATE")
        m.run(conn)
        conn.execute(f"PRAGMA user_version = {m.version}")
        conn.execute("COMMIT")
    return conn
