"""Helpers for the tests of several Litestream processes: the daemon's Litestream
children by process number, and how many databases they report synced."""

from __future__ import annotations

import os
from pathlib import Path

from reconciler import litestream
from tests.conftest import Fleet
from tests.e2e.backupkit import Daemon


def litestream_children(daemon: Daemon) -> dict[int, int]:
    """The daemon's Litestream children (pids) by process number, read from the name
    of the config each was started with (``.litestream.yml``, ``.litestream-N.yml``)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"-config" not in args:
            continue  # exited, not yet reaped by its supervisor (a zombie has no cmdline)
        if "(litestream)" in stat and int(stat.rsplit(")", 1)[1].split()[1]) == \
                daemon.proc.pid:
            name = Path(os.fsdecode(args[args.index(b"-config") + 1])).name
            out[0 if name == ".litestream.yml" else int(name.split("-")[1][:-4])] = \
                int(entry.name)
    return out


def synced(fleet: Fleet, processes: int) -> int:
    """Databases the fleet's ``processes`` Litestream processes report synced at least
    once (a process not answering counts none)."""
    n = 0
    for k in range(processes):
        try:
            dbs = litestream.Control(litestream.socket_path(fleet.central, k),
                                     timeout=60).databases()
        except Exception:
            continue
        n += sum(d.synced_at is not None for d in dbs.values())
    return n
