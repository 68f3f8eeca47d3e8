"""Holding a process inside SQLite's commit, for the tests of commits Litestream shipped
and SQLite never published (``hold_wal_sync.c``, an LD_PRELOAD shim built here with the
system's C compiler)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

SHIM = Path(__file__).with_name("hold_wal_sync.c")

# an application's commit that grows the file by ~400 pages, held inside it by the shim
APP = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
conn.execute("PRAGMA synchronous=FULL")
open(sys.argv[2], "w").close()  # arms the shim: this commit's -wal sync is held
conn.execute("INSERT INTO notes (title) VALUES (?)", ("x" * 1_600_000,))
"""


def build_shim(where: Path) -> Path:
    compiler = shutil.which("cc") or shutil.which("gcc")
    assert compiler, "a C compiler is needed to build the fsync-holding shim (gcc)"
    out = where / "hold_wal_sync.so"
    subprocess.run([compiler, "-shared", "-fPIC", "-O1", "-o", str(out), str(SHIM), "-ldl"],
                   check=True)
    return out


def hold_env(shim: Path, wal_of: Path, arm: Path, held: Path) -> dict[str, str]:
    """The environment that holds the next sync of ``wal_of``'s -wal once ``arm``
    exists (``held`` is created then)."""
    return {"LD_PRELOAD": str(shim), "HOLD_WAL_SYNC_PATH": os.path.realpath(f"{wal_of}-wal"),
            "HOLD_WAL_SYNC_ARM": str(arm), "HOLD_WAL_SYNC_HELD": str(held)}


@contextlib.contextmanager
def application_held(path: Path, where: Path, timeout: float = 60.0) -> Iterator[None]:
    """An application held inside a commit to the tenant file ``path`` for the block,
    then SIGKILLed (``where``: a scratch folder)."""
    arm, held = where / "app-arm", where / "app-held"
    app = subprocess.Popen([sys.executable, "-c", APP, str(path), str(arm)],
                           stdout=subprocess.DEVNULL,
                           env={**os.environ, **hold_env(build_shim(where), path, arm, held)})
    try:
        deadline = time.monotonic() + timeout
        while not held.exists():
            assert app.poll() is None, f"the application exited ({app.returncode})"
            assert time.monotonic() < deadline, "the application was never held"
            time.sleep(0.05)
        yield
    finally:
        app.send_signal(signal.SIGKILL)
        app.wait()
