"""The registry's memory of schema drift: which tenant files drifted, and every file's schema key.

Why a module of its own: schema drift detection (``drift``) compares a tenant file's
schema with the one its migrations build only when the file's schema key (cookie,
user_version, inode) changed since it was last compared; what it found and the keys it
compared are remembered here, between passes. The format of that memory (one blob, not a
row per file) is a measured choice for the no-op pass. ``DriftRows`` is mixed into
``registry.Registry``; ``registry.Registry.snapshot`` reads the memory back with
``decode_keys``.

Invariants:
* ``schema_checks`` holds a row per drifted file only; a clean or vanished file has none;
* ``schema_keys`` is one row (``id = 1``) whose blob is in ``KEYS_FORMAT``; a blob in
  another format decodes to {} (every file is compared once more), never to an error.
"""

from __future__ import annotations

import marshal
import sys
from collections.abc import Iterable, Mapping

from reconciler.registryconn import RegistryConnection
from reconciler.registryschema import utcnow

# The remembered schema keys are one blob, not a row per file: at 10k tenants reading
# 10k rows costs a no-op pass ~10%, unmarshalling one dict well under 1%. ``marshal``'s
# format may change between Python versions: the format names both, and a blob written
# by another is ignored (every file is then compared once more, and remembered again).
KEYS_FORMAT = f"marshal-{marshal.version}-py{sys.version_info[0]}.{sys.version_info[1]}"


def decode_keys(fmt: str, blob: bytes) -> dict[str, bytes]:
    if fmt != KEYS_FORMAT:
        return {}
    try:
        keys = marshal.loads(blob)
    except (EOFError, ValueError, TypeError):
        return {}
    return keys if isinstance(keys, dict) else {}


class DriftRows(RegistryConnection):
    """The ``schema_checks`` and ``schema_keys`` tables (caller holds a transaction)."""

    def record_schema_checks(self, drifted: Iterable[tuple[str, int, str]],
                             clean: Iterable[str], keys: Mapping[str, bytes]) -> None:
        """Remember drift: (path, version, differences as JSON) of each drifted file, no
        row for ``clean`` ones, and ``keys`` (path → schema key) of every compared file,
        replacing what was remembered (caller holds a transaction)."""
        now = utcnow()
        self.conn.executemany("DELETE FROM schema_checks WHERE path = ?",
                              ((p,) for p in clean))
        self.conn.executemany(
            "INSERT INTO schema_checks (path, version, drift, checked_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(path) DO UPDATE SET version=excluded.version, drift=excluded.drift, "
            "checked_at=excluded.checked_at", ((p, v, d, now) for p, v, d in drifted))
        gone = [p for (p,) in self.conn.execute("SELECT path FROM schema_checks")
                if p not in keys]  # drifted files only: a short list
        self.conn.executemany("DELETE FROM schema_checks WHERE path = ?", ((p,) for p in gone))
        self.conn.execute(
            "INSERT INTO schema_keys (id, format, keys, updated_at) VALUES (1, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET format=excluded.format, keys=excluded.keys, "
            "updated_at=excluded.updated_at", (KEYS_FORMAT, marshal.dumps(dict(keys)), now))
