"""The registry's journal: the phase each unfinished operation on a tenant has reached.

Why a module of its own: an operation that moves, swaps or puts back a tenant file
(relocation, archive, restore, a move to another region) records each phase before
acting on it, so a reconciler killed half-way finds the phase and the paths involved on
its next run and completes or undoes it (DESIGN: "relocation journals its phases in the
registry"); gc asks which paths an unfinished operation still refers to. ``JournalRows``
is mixed into ``registry.Registry``.

Invariants:
* at most one unfinished operation per tenant (``journal.tenant`` is the key);
* ``journal_set`` keeps a path or detail recorded by an earlier phase unless it names a
  new one, and ``started_at`` stays that of the first phase;
* a row is only removed by ``journal_clear``, once the operation is complete.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from reconciler.registryconn import RegistryConnection
from reconciler.registryschema import utcnow
from reconciler.state import JournalRow


class JournalRows(RegistryConnection):
    """The ``journal`` table: one row per tenant with an unfinished operation."""

    def journal_set(self, tenant: str, action: str, phase: str, *, source: str | None = None,
                    dest: str | None = None, temp: str | None = None,
                    detail: Mapping[str, Any] | None = None) -> None:
        now = utcnow()
        self.conn.execute(
            "INSERT INTO journal (tenant, action, phase, source, dest, temp, started_at, "
            "updated_at, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(tenant) DO "
            "UPDATE SET action=excluded.action, phase=excluded.phase, "
            "source=COALESCE(excluded.source, source), dest=COALESCE(excluded.dest, dest), "
            "temp=COALESCE(excluded.temp, temp), updated_at=excluded.updated_at, "
            "detail=COALESCE(excluded.detail, detail)",
            (tenant, action, phase, source, dest, temp, now, now,
             json.dumps(dict(detail)) if detail is not None else None))

    def journal_clear(self, tenant: str) -> None:
        self.conn.execute("DELETE FROM journal WHERE tenant = ?", (tenant,))

    def journal_row(self, tenant: str) -> JournalRow | None:
        r = self.conn.execute("SELECT tenant, action, phase, source, dest, temp, started_at, "
                              "detail FROM journal WHERE tenant = ?", (tenant,)).fetchone()
        return JournalRow(*r) if r is not None else None

    def journal_paths(self) -> set[str]:
        """Every path an unfinished operation still refers to (gc must not touch them)."""
        out: set[str] = set()
        for source, dest, temp, detail in self.conn.execute(
                "SELECT source, dest, temp, detail FROM journal"):
            out.update(p for p in (source, dest, temp) if p)
            extra = json.loads(detail) if detail else {}
            out.update(str(v) for k, v in extra.items() if k.endswith("path") and v)
        return out
