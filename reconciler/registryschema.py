"""The registry's schema: the steps that build ``central.db`` and upgrade an older one.

Why a module of its own: the schema is the registry's contract with applications (DESIGN
§4) and with older and newer reconcilers, read without the code that writes the rows;
``registry`` opens the file and runs these steps, the row operations live beside it
(``registry`` and its mixins). ``UPGRADES`` and ``VERSION`` are re-exported by
``registry``, where callers import them from.

Invariants:
* ``UPGRADES[i]`` upgrades a registry from version ``i`` to ``i + 1`` and is never edited
  once released: a new table or column is a new step APPENDED at the end;
* ``VERSION`` is the number of steps: the ``PRAGMA user_version`` of an up-to-date registry;
* a reader that may meet an older registry (read-only, not upgraded) asks ``has_table``
  and ``has_column`` before reading what a later step added;
* the TEXT timestamps it records (``*_at`` columns) are ``utcnow``'s: ISO 8601 in UTC
  with milliseconds, so they sort as text.
"""

from __future__ import annotations

import sqlite3
import time

from reconciler.state import STATUSES

_STATUS_CHECK = ", ".join(f"'{s}'" for s in STATUSES)

# Each entry upgrades the registry from version i to i+1. Never edit a released step.
UPGRADES: tuple[str, ...] = (
    f"""
    CREATE TABLE tenants (
        name           TEXT PRIMARY KEY,
        region         TEXT NOT NULL,
        path           TEXT NOT NULL,
        schema_version INTEGER NOT NULL,
        status         TEXT NOT NULL CHECK (status IN ({_STATUS_CHECK})),
        created_at     TEXT NOT NULL,
        updated_at     TEXT NOT NULL,
        protected      INTEGER NOT NULL DEFAULT 0,
        failure        TEXT,
        failed_key     TEXT,
        failures       INTEGER NOT NULL DEFAULT 0,
        retry_at       REAL
    );
    CREATE TABLE domains (
        domain TEXT PRIMARY KEY,
        tenant TEXT NOT NULL REFERENCES tenants(name) ON DELETE CASCADE
    );
    CREATE INDEX domains_tenant ON domains(tenant);
    CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT);
    CREATE TABLE migrations (
        version          INTEGER PRIMARY KEY,
        name             TEXT NOT NULL,
        sha256           TEXT NOT NULL,
        first_applied_at TEXT NOT NULL
    );
    CREATE TABLE events (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        at          TEXT NOT NULL,
        revision    TEXT,
        tenant      TEXT,
        action      TEXT NOT NULL,
        outcome     TEXT NOT NULL,
        detail      TEXT,
        duration_ms INTEGER
    );
    CREATE INDEX events_tenant ON events(tenant, id);
    """,
    """
    CREATE TABLE journal (
        tenant     TEXT PRIMARY KEY,
        action     TEXT NOT NULL,
        phase      TEXT NOT NULL,
        source     TEXT,
        dest       TEXT,
        temp       TEXT,
        started_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        detail     TEXT
    );
    CREATE TABLE runs (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        started_at  TEXT NOT NULL,
        finished_at TEXT,
        revision    TEXT,
        summary     TEXT,
        detail      TEXT
    );
    CREATE TABLE rollout (
        key        TEXT PRIMARY KEY,
        state      TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        detail     TEXT
    );
    """,
    # a migration's checksum is recorded before its first use (applied = 0) and confirmed
    # once a tenant committed it: a kill in between cannot lose it (issue 11, item 5)
    """
    ALTER TABLE migrations ADD COLUMN applied INTEGER NOT NULL DEFAULT 1;
    """,
    # the fleet's identity (see reconciler/fleet.py): its id, where this registry was
    # when last written (``central``), and the directories the fleet then declared
    # (``dirs``, JSON) — so a copied or moved registry is recognised as such
    """
    CREATE TABLE fleet (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    # schema drift: the differences found in each drifted tenant file (JSON), and, in one
    # row, the schema key (cookie, user_version, inode) every compared file had then
    """
    CREATE TABLE schema_checks (
        path       TEXT PRIMARY KEY,
        version    INTEGER NOT NULL,
        drift      TEXT NOT NULL,
        checked_at TEXT NOT NULL
    );
    CREATE TABLE schema_keys (
        id         INTEGER PRIMARY KEY CHECK (id = 1),
        format     TEXT NOT NULL,
        keys       BLOB NOT NULL,
        updated_at TEXT NOT NULL
    );
    """,
    # issue 16: webhook notifications already sent, one row per condition while it
    # lasts (a halt, a failed tenant…), so a restarted daemon does not send them again
    """
    CREATE TABLE notified (
        key   TEXT PRIMARY KEY,
        event TEXT NOT NULL,
        at    TEXT NOT NULL
    );
    """,
    # issue 14: each tenant file that entered replication (a "lineage") and where
    # Litestream copies it; rows are never deleted (restore points outlive the file)
    """
    CREATE TABLE backup_lineages (
        tenant     TEXT NOT NULL,
        lineage    TEXT NOT NULL,
        path       TEXT NOT NULL,
        inode      INTEGER NOT NULL,
        url        TEXT NOT NULL,
        started_at TEXT NOT NULL,
        ended_at   TEXT,
        PRIMARY KEY (tenant, lineage)
    );
    CREATE INDEX backup_lineages_path ON backup_lineages (path, inode);
    """,
    # issue 15: one agent per region host. A tenant's ``generation`` grows by one each
    # time another region's agent registers it (highest wins across registries); the
    # ``agent`` row says which agent writes this registry and how fresh it is (a
    # follower's copy tells its age by it); ``regions`` what this host follows; a
    # ``handoffs`` row is a tenant handed to another region (written by xmove); each
    # event names the agent that recorded it
    """
    ALTER TABLE tenants ADD COLUMN generation INTEGER NOT NULL DEFAULT 1;
    CREATE TABLE agent (
        id           INTEGER PRIMARY KEY CHECK (id = 1),
        region       TEXT,
        host         TEXT,
        revision     TEXT,
        heartbeat_at REAL
    );
    CREATE TABLE regions (
        name     TEXT PRIMARY KEY,
        endpoint TEXT,
        local    INTEGER NOT NULL,
        registry TEXT
    );
    CREATE TABLE handoffs (
        tenant         TEXT PRIMARY KEY,
        to_region      TEXT NOT NULL,
        replica_url    TEXT NOT NULL,
        txid           INTEGER NOT NULL,
        schema_version INTEGER NOT NULL,
        digest         TEXT NOT NULL,
        generation     INTEGER NOT NULL,
        at             TEXT NOT NULL
    );
    ALTER TABLE events ADD COLUMN agent TEXT;
    """,
    # issue 15: a fact another region acts on must be *confirmed*. Litestream ships WAL
    # frames as soon as they are in the -wal file; a writer killed between writing a
    # commit's frames and publishing them in the wal-index leaves a transaction that
    # the replica (and every follower) has and that SQLite here then discards: the next
    # writer overwrites those frames (see ``confirm``). ``agent.seq`` grows with every
    # heartbeat and every ``confirm``; a fact row records the ``seq`` it was written at,
    # so a follower's copy that shows ``agent.seq`` past it shows a later commit of the
    # same registry, which this one's frames could not have been overwritten before.
    # ``taken_digest``: the content digest of the handoff a takeover registered.
    """
    ALTER TABLE agent ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE tenants ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE tenants ADD COLUMN taken_digest TEXT;
    ALTER TABLE handoffs ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
    """,
)
VERSION = len(UPGRADES)


def utcnow() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def has_table(conn: sqlite3.Connection, table: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                        (table,)).fetchone() is not None


def has_column(conn: sqlite3.Connection, table: str, column: str) -> bool:
    """Whether ``table`` has ``column`` (a read-only reader may see an older registry)."""
    return any(r[1] == column for r in conn.execute(f"PRAGMA table_info({table})"))


def split_script(script: str) -> list[str]:
    out, buf = [], ""
    for part in script.split(";"):
        buf += part + ";"
        if sqlite3.complete_statement(buf):
            if buf.strip(" \n;"):
                out.append(buf.strip())
            buf = ""
    return out

