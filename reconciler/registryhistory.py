"""The registry's history: what the reconciler did (events, runs) and what it told.

Why a module of its own: ``events`` is the audit log applications and ``reconcile
history`` read (a public table, DESIGN §4), ``runs`` the summary of each pass
(``reconcile status``), ``notified`` the webhook conditions already sent (issue 16) so a
restarted daemon does not send them again. Recording and reading them is one concept,
apart from the tenants' rows. ``HistoryRows`` is mixed into ``registry.Registry``.

Invariants:
* events are only appended; each names the agent that recorded it (``<region>@<host>``,
  ``*@<host>`` for the agent of every region or before any agent row);
* ``runs`` stays bounded (the last 1000 passes): the events are the long-term history;
* reading an older registry (no ``agent`` column, no ``runs`` or ``notified`` table)
  gives what it has, never an error.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Mapping
from typing import Any

from reconciler.registryconn import RegistryConnection
from reconciler.registryschema import has_column, utcnow


class HistoryRows(RegistryConnection):
    """The ``events``, ``runs`` and ``notified`` tables."""

    def event(self, *, revision: str, tenant: str | None, action: str, outcome: str,
              detail: Mapping[str, Any] | None = None, duration_ms: int | None = None) -> None:
        """Record an event, naming the agent from the ``agent`` row (``<region>@<host>``,
        ``*@<host>`` for the agent of every region); before any agent row was recorded (a
        one-shot pass on a single host), ``*@<this host>``."""
        self.conn.execute(
            "INSERT INTO events (at, revision, tenant, action, outcome, detail, duration_ms, "
            "agent) VALUES (?, ?, ?, ?, ?, ?, ?, COALESCE((SELECT COALESCE(region, '*') || "
            "'@' || COALESCE(host, '?') FROM agent WHERE id = 1), ?))",
            (utcnow(), revision, tenant, action, outcome,
             json.dumps(dict(detail or {}), sort_keys=True, default=str), duration_ms,
             f"*@{socket.gethostname()}"))

    def events(self, tenant: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        agent = has_column(self.conn, "events", "agent")  # issue 15: which agent did it
        sql = ("SELECT id, at, revision, tenant, action, outcome, detail, duration_ms"
               + (", agent" if agent else "") + " FROM events")
        args: tuple[Any, ...] = ()
        if tenant:
            sql += " WHERE tenant = ?"
            args = (tenant,)
        sql += " ORDER BY id DESC LIMIT ?"
        rows = self.conn.execute(sql, (*args, limit)).fetchall()
        keys: tuple[str, ...] = ("id", "at", "revision", "tenant", "action", "outcome",
                                 "detail", "duration_ms") + (("agent",) if agent else ())
        out = []
        for r in rows:
            d = dict(zip(keys, r, strict=True))
            d["detail"] = json.loads(d["detail"]) if d["detail"] else {}
            out.append(d)
        return out

    def last_run(self) -> dict[str, Any] | None:
        if self.version < 2:
            return None
        r = self.conn.execute("SELECT started_at, finished_at, revision, summary, detail "
                              "FROM runs ORDER BY id DESC LIMIT 1").fetchone()
        if r is None:
            return None
        return {"started_at": r[0], "finished_at": r[1], "revision": r[2], "summary": r[3],
                "detail": json.loads(r[4]) if r[4] else {}}

    def record_run(self, started_at: str, revision: str, summary: str,
                   detail: Mapping[str, Any]) -> None:
        with self.transaction():
            self.conn.execute("INSERT INTO runs (started_at, finished_at, revision, summary, "
                              "detail) VALUES (?, ?, ?, ?, ?)",
                              (started_at, utcnow(), revision, summary,
                               json.dumps(dict(detail), default=str)))
            # keep the table bounded: the events table is the long-term history
            self.conn.execute("DELETE FROM runs WHERE id <= (SELECT MAX(id) FROM runs) - 1000")

    def notified(self) -> dict[str, str]:
        """Webhook conditions already notified: key → event (issue 16)."""
        if self.conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                             "name = 'notified'").fetchone() is None:
            return {}  # an older registry, read-only (opened for writing, it is upgraded)
        return dict(self.conn.execute("SELECT key, event FROM notified").fetchall())

    def set_notified(self, added: Mapping[str, str], removed: set[str]) -> None:
        """Remember notified conditions (key → event) and forget cleared ones."""
        with self.transaction():
            self.conn.executemany("INSERT OR REPLACE INTO notified (key, event, at) VALUES "
                                  "(?, ?, ?)", [(k, e, utcnow()) for k, e in added.items()])
            self.conn.executemany("DELETE FROM notified WHERE key = ?",
                                  [(k,) for k in removed])
