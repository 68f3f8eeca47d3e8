"""Cross-host relocation (issue 15) against a bare ``litestream restore`` of the same file.

Why: a tenant moving from the ``eu`` host to the ``us`` host travels through its
Litestream replica; the least such a move can cost is the destination downloading the
file, i.e. ``litestream restore`` of the source's replica. Ours also fences the tenant,
brings the replica to its final transaction, publishes the hand-off in the source's
registry, waits for the destination's follower to see it, verifies the restored copy
(integrity, ``user_version``, content digest), registers it and has the source retire
its copy — with two real agents (``reconcile daemon --region``, ``interval: 1s``), their
Litestream processes and followers, on a ``file://`` replica and on a real NATS server
on 127.0.0.1.

Each timed move goes one way (``aaron`` declared in the other region) and the next one
back; a move is timed from the moment every host's ``tenants.yaml`` names the new region
until the destination serves the tenant and the source holds no copy. The bare restore
is of the holder's current lineage, into a new file each run. The two agents poll
(pass interval 1 s, follower interval 200 ms), so a move includes up to a few seconds
of polling that no copy of bytes needs: the ratio falls as the file grows.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bench.timing import Contender, Row, measure, median
from reconciler import litestream
from tests.e2e.backupkit import NatsServer
from tests.e2e.xmovekit import Hosts, settle

TENANT = "aaron"


def _fill(path: Path, rows: int) -> None:
    conn = sqlite3.connect(path, timeout=10)
    try:
        for start in range(0, rows, 1000):
            conn.executemany("INSERT INTO notes (title, body) VALUES (?, ?)",
                             [(f"t{i}", "x" * 200) for i in range(start, min(rows,
                                                                             start + 1000))])
            conn.commit()
    finally:
        conn.close()


class _Fleet:
    """Two hosts, ``aaron`` on one of them, moved back and forth."""

    def __init__(self, root: Path, replica: str, rows: int) -> None:
        self.hosts = Hosts(root, replica)
        self.hosts.declare({TENANT: "eu", "acme": "us"})
        self.hosts.start()
        self.where = "eu"
        settle(lambda: self.hosts["eu"].status_of(TENANT) == "active", "aaron created",
               timeout=180)
        _fill(self.hosts["eu"].path(TENANT), rows)
        self.out = root / "bare"
        self.out.mkdir()
        self.n = 0

    def move(self) -> None:
        there = "us" if self.where == "eu" else "eu"
        self.hosts.declare({TENANT: there, "acme": "us"})
        src, dst = self.hosts[self.where], self.hosts[there]
        settle(lambda: dst.status_of(TENANT) == "active" and src.status_of(TENANT) is None,
               f"aaron moved {self.where} → {there}", timeout=600)
        self.where = there

    def url(self) -> str:
        rows = self.hosts[self.where].registry(
            "SELECT url FROM backup_lineages WHERE tenant = ? AND ended_at IS NULL "
            "ORDER BY started_at DESC LIMIT 1", (TENANT,))
        return str(rows[0][0])

    def bare_restore(self) -> None:
        self.n += 1
        litestream.restore(self.url(), self.out / f"{self.n}.db", None)

    def size(self) -> int:
        return self.hosts[self.where].path(TENANT).stat().st_size

    def close(self) -> None:
        self.hosts.close()


def run(rows: int, repeats: int, root: Path) -> list[Row]:
    out: list[Row] = []
    for store in ("file", "nats"):
        base = root / f"xmove-{store}"
        base.mkdir(parents=True, exist_ok=True)
        nats = NatsServer(base / "nats") if store == "nats" else None
        replica = f"{nats.url}/tenants" if nats is not None else f"file://{base / 'replica'}"
        fleet = _Fleet(base / "hosts", replica, rows)
        try:
            times = measure([Contender("move", fleet.move),
                             Contender("restore", fleet.bare_restore)], repeats)
            mb = fleet.size() / 1e6
        finally:
            fleet.close()
            if nats is not None:
                nats.kill()
        out.append(Row(f"cross-host relocation, {mb:.0f} MB tenant, {store} replica",
                       "declared elsewhere → served there, source retired",
                       median(times["move"]), "bare `litestream restore` of that file",
                       median(times["restore"]),
                       note="includes the agents' polling (1 s passes, 200 ms followers)"))
    return out
