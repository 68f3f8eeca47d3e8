"""Routing: ``Router.connect(host)`` per request against the least an application
could do — ``sqlite3.connect`` of the right file plus ``ATTACH`` of the registry.

Why: the router runs on every request of every application; whatever it adds on top
of opening the file (host validation, the registry lookup and its cache, the
re-check that the route did not change while opening, ``foreign_keys``, reading the
``user_version``) must stay small. Both sides open and close one connection per
request, over the same hosts of a converged fleet, in the same order.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from bench import fleets
from bench.timing import Contender, Row, measure, median
from reconciler.routing import Router

REQUESTS = 2000


def ours(router: Router, hosts: Sequence[str]) -> None:
    for host in hosts:
        router.connect(host).close()


def bare(paths: Sequence[str], central_uri: str) -> None:
    for path in paths:
        conn = sqlite3.connect(path)
        conn.execute("ATTACH DATABASE ? AS central", (central_uri,))
        conn.close()


# A request that reads: the authorizer (issue 15 §5) runs when each statement is prepared,
# so it is measured on a query, not only on connect + close.
QUERY = "SELECT value FROM central.settings WHERE key = ?"


def ours_query(router: Router, hosts: Sequence[str]) -> None:
    for host in hosts:
        conn = router.connect(host)
        conn.execute(QUERY, ("support_email",)).fetchone()
        conn.close()


def bare_query(paths: Sequence[str], central_uri: str) -> None:
    for path in paths:
        conn = sqlite3.connect(path)
        conn.execute("ATTACH DATABASE ? AS central", (central_uri,))
        conn.execute(QUERY, ("support_email",)).fetchone()
        conn.close()


def run(size: int, repeats: int, root: Path) -> list[Row]:
    rows: list[Row] = []
    for mode in ("delete", "wal"):
        fleet = fleets.get(fleets.FleetSpec(size, mode=mode), root)
        pick = random.Random(7).sample(range(size), min(REQUESTS, size))
        hosts = [f"{fleets.tenant_name(i)}.bench.example" for i in pick]
        paths = [fleet.paths[i] for i in pick]
        central_uri = f"{fleet.central.resolve().as_uri()}?mode=ro"
        with Router(fleet.central) as router:
            for host, path in zip(hosts[:20], paths[:20], strict=True):
                conn = router.connect(host)  # routes where the bare loop goes
                try:
                    file = conn.execute("PRAGMA database_list").fetchone()[2]
                finally:
                    conn.close()
                assert Path(file) == Path(path).resolve(), (host, file, path)
            t = measure([Contender("ours", partial(ours, router, hosts)),
                         Contender("bare", partial(bare, paths, central_uri)),
                         Contender("ours_query", partial(ours_query, router, hosts)),
                         Contender("bare_query", partial(bare_query, paths, central_uri))],
                        repeats)
        per = f"{size // 1000}k" if size >= 1000 else str(size)
        kind = "rollback-journal" if mode == "delete" else "WAL"
        rows.append(Row(f"routing, {len(hosts)} requests over {per} tenants, {kind}",
                        "Router.connect(host) + close", median(t["ours"]),
                        "sqlite3.connect(file) + ATTACH + close", median(t["bare"]),
                        "≤ 1.3×", 1.3))
        rows.append(Row(f"routing + one query, {len(hosts)} requests over {per} tenants, "
                        f"{kind}", "Router.connect(host) + SELECT + close (authorizer on)",
                        median(t["ours_query"]), "sqlite3.connect + ATTACH + SELECT + close",
                        median(t["bare_query"]), "≤ 1.3×", 1.3))
    return rows
