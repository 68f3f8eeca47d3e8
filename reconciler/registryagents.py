"""The registry's rows of issue 15: which agent writes it, what it hands off, what it follows.

Why a module of its own: with one agent per region host, a registry is read by the
other regions' agents (through followed copies, ``follow`` and ``peers``); the rows they
act on — the ``agent`` row and its heartbeat, ``handoffs``, a takeover's stamp on a
tenant, the ``regions`` this host follows — and the rule that makes those facts safe to
act on (``confirm``: a later commit of the same registry) are one concept. ``AgentRows``
is mixed into ``registry.Registry``.

Invariants:
* the ``agent`` table holds at most one row (``id = 1``); ``agent.seq`` only grows: every
  heartbeat, every ``set_agent`` and every ``confirm`` adds one;
* a row peers act on (a tenant, a handoff) records ``SEQ_NOW``, the ``seq`` it was
  written at; peers trust it once their copy shows a larger ``seq`` (``confirm``);
* reading an older registry (no ``agent`` or ``regions`` table) gives None or [].
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from reconciler import walindex
from reconciler.registryconn import RegistryConnection
from reconciler.registryschema import has_table, utcnow
from reconciler.state import AgentRow, Handoff, RegionRow

#: SQL for the agent row's ``seq`` now (0 without one): the ``seq`` a row peers act on is
#: written at (see ``AgentRows.confirm``)
SEQ_NOW = "COALESCE((SELECT seq FROM agent WHERE id = 1), 0)"


class AgentRows(RegistryConnection):
    """The agent row, handoffs and followed regions of a registry (issue 15)."""

    def set_agent(self, region: str | None, host: str, revision: str | None,
                  heartbeat_at: float) -> None:
        """Record which agent writes this registry (``region`` None: every region) and
        its heartbeat (unix seconds). One short statement: the caller's transaction or
        autocommit."""
        self.conn.execute(
            "INSERT INTO agent (id, region, host, revision, heartbeat_at, seq) VALUES "
            "(1, ?, ?, ?, ?, 1) ON CONFLICT(id) DO UPDATE SET region=excluded.region, "
            "host=excluded.host, revision=COALESCE(excluded.revision, revision), "
            "heartbeat_at=excluded.heartbeat_at, seq=seq + 1",
            (region, host, revision, heartbeat_at))

    def confirm(self) -> None:
        """Commit a later transaction than the caller's last one (autocommitted; the
        caller holds none): ``agent.seq`` + 1.

        Why (issue 15): Litestream replicates WAL frames as they reach the -wal file,
        before SQLite publishes the commit in the wal-index; a writer killed in between
        leaves a transaction that followers have and this registry then loses (SQLite
        keeps the wal-index of a live connection, e.g. Litestream's, and the next writer
        overwrites the frames: https://www.sqlite.org/walformat.html). A row written at
        ``seq`` s is therefore trusted by peers only once their copy shows ``seq`` > s
        (``PeerView.confirmed``): that commit began after this one was published. The
        heartbeat also bumps ``seq`` (``set_agent``); this makes the wait one commit
        instead of one beat. A registry without an agent row (one host) is unchanged."""
        self.conn.execute("UPDATE agent SET seq = seq + 1 WHERE id = 1")

    def truncate_wal(self) -> bool:
        """``PRAGMA wal_checkpoint(TRUNCATE)``: every published commit into the file and
        the -wal emptied. True when it completed (False: a reader kept it from finishing).

        Why: run before Litestream starts on the registry (``replicators``). A writer
        killed between writing a commit's frames and publishing them leaves those frames
        in the -wal, where Litestream may already have shipped them (see ``confirm``);
        Litestream 0.5.17 then stops replicating the file when that commit had grown it
        ("sync: write ltx from db: read database page N: EOF", restarting it does not
        help). Started on an emptied -wal, it takes a new snapshot and catches up (the
        workaround in https://github.com/benbjohnson/litestream/issues/875)."""
        return walindex.empty(self.conn)

    def put_handoff(self, h: Handoff) -> None:
        """Publish ``h`` for its destination (caller holds a transaction; ``confirm``
        after it commits)."""
        self.conn.execute(
            "INSERT OR REPLACE INTO handoffs (tenant, to_region, replica_url, txid, "
            f"schema_version, digest, generation, at, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, "
            f"{SEQ_NOW})", (h.tenant, h.to_region, h.replica_url, h.txid,
                             h.schema_version, h.digest, h.generation, utcnow()))

    def took_over(self, h: Handoff) -> None:
        """Stamp the tenant row just registered by a takeover with ``h``'s generation and
        content digest (caller holds a transaction; ``confirm`` after it commits)."""
        self.conn.execute("UPDATE tenants SET generation = ?, taken_digest = ? WHERE "
                          "name = ?", (h.generation, h.digest, h.tenant))

    def heartbeat(self, at: float) -> None:
        """Refresh the agent row's ``heartbeat_at`` (unix seconds), autocommitted: a
        commit like any other, so it also confirms (``confirm``) what came before it."""
        self.conn.execute("UPDATE agent SET heartbeat_at = ?, seq = seq + 1 WHERE id = 1",
                          (at,))

    def agent(self) -> AgentRow | None:
        """The ``agent`` row, or None (never recorded, or an older registry)."""
        if not has_table(self.conn, "agent"):
            return None
        r = self.conn.execute("SELECT region, host, revision, heartbeat_at FROM agent "
                              "WHERE id = 1").fetchone()
        return None if r is None else AgentRow(*r)

    def set_regions(self, rows: Iterable[RegionRow]) -> None:
        """Replace the ``regions`` table with ``rows`` (caller holds a transaction)."""
        rows = list(rows)
        self.conn.execute("DELETE FROM regions WHERE name NOT IN (SELECT value FROM "
                          "json_each(?))", (json.dumps([r.name for r in rows]),))
        self.conn.executemany(
            "INSERT INTO regions (name, endpoint, local, registry) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET endpoint=excluded.endpoint, "
            "local=excluded.local, registry=excluded.registry",
            [(r.name, r.endpoint, int(r.local), r.registry) for r in rows])

    def regions(self) -> list[RegionRow]:
        """The ``regions`` table, by name ([] on an older registry)."""
        if not has_table(self.conn, "regions"):
            return []
        return [RegionRow(n, e, bool(loc), reg) for n, e, loc, reg in self.conn.execute(
            "SELECT name, endpoint, local, registry FROM regions ORDER BY name")]
