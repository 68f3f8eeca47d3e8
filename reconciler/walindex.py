"""How far SQLite has published a WAL-mode file's commits, read from its ``-shm``.

Why a module of its own: Litestream reads a file's ``-wal`` directly, not SQLite's
wal-index, so it can ship frames that SQLite never publishes (a writer killed inside its
commit; ``replication.unstick``). Litestream then stops replicating that file, silently:
its ``last_synced_wal_offset`` stays past the end SQLite has published, and the commits
written over those frames never reach the replica. Comparing the two needs the published
end, which only the wal-index knows.

Format (https://www.sqlite.org/walformat.html, "The WAL-Index Header"): the ``-shm``
starts with two copies of a 48-byte header, in the host's byte order: ``iVersion`` u32,
unused u32, ``iChange`` u32, ``isInit`` u8, ``bigEndCksum`` u8, ``szPage`` u16 (65536
stored as 1), ``mxFrame`` u32 (the last valid frame, counted from 1), ... The ``-wal``
is a 32-byte header and then frames of a 24-byte header and one page.

Invariants: nothing is written or locked; the two copies must agree (a writer updates
them one after the other), else the read says nothing. Never call it on a file this
process holds open through SQLite: closing the descriptor would drop this process's
POSIX locks on the ``-shm`` (the daemon calls it after its pass, with no tenant open).
"""

from __future__ import annotations

import sqlite3
import struct
from pathlib import Path

_HEADER = struct.Struct("=IIIBBHI")  # iVersion, unused, iChange, isInit, cksum, szPage, mxFrame
WAL_HEADER = 32
FRAME_HEADER = 24


def published_end(path: Path) -> int | None:
    """The byte offset in ``path``'s ``-wal`` where its last published commit ends (32
    for an empty -wal), or None when there is no wal-index or it cannot be read whole
    (not initialised, or being updated)."""
    try:
        with open(f"{path}-shm", "rb") as f:
            head = f.read(96)
    except OSError:
        return None
    if len(head) < 96 or head[:48] != head[48:]:
        return None
    _version, _unused, _change, is_init, _cksum, page, frames = _HEADER.unpack_from(head)
    if not is_init:
        return None
    page = 65536 if page == 1 else page
    return WAL_HEADER + int(frames) * (FRAME_HEADER + int(page))


def past_published(path: Path, synced_offset: int | None) -> bool:
    """Whether a replicator that synced ``path``'s -wal up to ``synced_offset`` (bytes;
    None: unknown) is past the end SQLite published: it shipped frames SQLite never
    published. False when either side is unknown."""
    end = published_end(path)
    return synced_offset is not None and end is not None and synced_offset > end


def empty(conn: sqlite3.Connection) -> bool:
    """``PRAGMA wal_checkpoint(TRUNCATE)`` on ``conn``: every published commit into the
    file and the -wal emptied, frames never published with it. True when it completed
    (False: a reader kept it from finishing)."""
    row = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    return row is not None and int(row[0]) == 0
