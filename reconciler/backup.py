"""Backups as values: the ``settings.backup`` block, replica addresses, and what a
tenant's replication state means (issue 14, DESIGN §9). Pure: no I/O.

Why a module of its own: the settings validator, the planner, ``status`` and the
process that drives Litestream all need the same rules — which replica URL a tenant's
file is copied to, and when a backup counts as good — and the planner may only import
values.

Invariants:
* a replica URL's scheme is one Litestream 0.5 supports (``REPLICA_SCHEMES``); the
  URL carries no credentials (they come from the environment, as Litestream reads them);
* every tenant *file* (one "lineage": a tenant's file from the moment it entered
  service until it was replaced) replicates to a location of its own under the base
  replica, so a relocated, restored or re-created file never continues another file's
  history: ``<base>/<tenant>/<lineage>`` (object stores, sftp, file) or the bucket
  ``<bucket>-<tenant>-<lineage>`` (NATS, whose Litestream client has no path prefix);
* lineage ids are ``<UTC yyyymmddHHMMSS><ms>`` — sortable, and valid in every
  backend's object and bucket names.
"""

from __future__ import annotations

import math
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

# Litestream 0.5's replica clients (their URL factories: file, s3, gs, abs, sftp, nats;
# source: litestream cmd/litestream/main.go and each */replica_client.go)
REPLICA_SCHEMES = ("file", "s3", "gs", "abs", "sftp", "nats")
DEFAULT_RETENTION = 7 * 86400.0
DEFAULT_SYNC_INTERVAL = 1.0
LAG_FACTOR = 5  # lag_threshold defaults to 5 × sync_interval
MAX_SYNC_INTERVAL = 3600.0
MIN_RETENTION = 3600.0  # Litestream's snapshots are daily; less keeps nothing useful
# One ``litestream replicate`` holds 5-6 file descriptors per database it replicates
# (measured on 0.5.17: 3 on the database file — its SQL connections and its own reader —
# plus the -wal and the -shm), so a process hits its RLIMIT_NOFILE at about
# limit / 5 databases and then fails every open with EMFILE (seen: 4,000 databases at a
# 20,000 limit, the rest never replicated). A fleet is split across processes of at
# most PER_PROCESS_MAX databases each, fewer when the descriptor limit is lower.
FDS_PER_DB = 7  # 6.3 measured at 2,000 per process (LTX files open while syncing)
FD_RESERVE = 256  # sockets, logs, replica clients
PER_PROCESS_MAX = 2000
MAX_PROCESSES = 64
# tables Litestream creates in every file it replicates (db.go: _litestream_seq forces WAL
# writes, _litestream_lock takes the write lock during a sync; never holds user rows):
# schema comparisons (drift, reference schemas) must leave them out
LITESTREAM_TABLES = frozenset({"_litestream_seq", "_litestream_lock"})


@dataclass(frozen=True)
class BackupSettings:
    """``settings.backup``. ``replica`` is a URL (a plain path became ``file://``);
    durations are seconds."""

    replica: str
    retention: float = DEFAULT_RETENTION
    sync_interval: float = DEFAULT_SYNC_INTERVAL
    lag_threshold: float | None = None  # None: LAG_FACTOR × sync_interval
    processes: int | None = None  # Litestream processes; None: from the fleet size
    # issue 15: (line, column, text) in tenants.yaml where ``replica`` was written as a
    # relative path (resolved against tenants.yaml's folder, so private to each host's checkout:
    # ``regionargs.shared_replica`` refuses it for a region agent); None otherwise.
    # Not part of the value (repr/compare): where it was written is no setting.
    relative_at: tuple[int, int, str] | None = field(default=None, repr=False, compare=False)

    @property
    def scheme(self) -> str:
        return urlsplit(self.replica).scheme

    @property
    def threshold(self) -> float:
        """Seconds of lag beyond which a tenant's backup is not good."""
        if self.lag_threshold is not None:
            return self.lag_threshold
        return LAG_FACTOR * self.sync_interval


def check_replica(text: str, base: Path) -> tuple[str | None, str, str]:
    """Validate a replica written in tenants.yaml.

    Returns ``(url, message, hint)``: the URL (absolute ``file://`` for a plain or
    relative path, taken relative to ``base``) and empty strings, or ``None`` and what
    is wrong and what to write instead."""
    example = "write for example file:///srv/backups, s3://bucket/tenants or " \
              "nats://127.0.0.1:4222/tenants"
    if "://" not in text:
        if not text.strip() or text.startswith("$"):
            return None, f"settings.backup.replica {text!r} is not a replica URL or path", \
                example
        return Path(base, text).expanduser().absolute().as_uri(), "", ""
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in REPLICA_SCHEMES:
        return None, f"settings.backup.replica scheme {parts.scheme!r} is not one " \
            "Litestream replicates to", f"use one of {', '.join(REPLICA_SCHEMES)}"
    if parts.password or any(
            k in parts.query.lower() for k in ("secret", "password", "key=", "token")):
        return None, "settings.backup.replica holds credentials", \
            "remove them from the URL: Litestream reads them from the environment " \
            "(AWS_ACCESS_KEY_ID, …) — see deploy/README.md, section Backups"
    if scheme == "file":
        if parts.netloc or not parts.path.startswith("/"):
            return None, "settings.backup.replica file URL must be absolute", \
                "write file:///absolute/path (three slashes), or a plain path"
        return urlunsplit(("file", "", parts.path.rstrip("/") or "/", "", "")), "", ""
    if not parts.netloc:
        return None, f"settings.backup.replica {text!r} names no bucket or host", example
    if scheme == "nats" and not parts.path.strip("/").replace("-", "").replace(
            "_", "").isalnum():
        return None, "settings.backup.replica NATS URL needs a bucket name prefix " \
            "(letters, digits, - and _)", "write nats://HOST:PORT/tenants"
    # (a user name is no secret: abs://ACCOUNT@container, sftp://user@host)
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/"), parts.query, "")), "", ""


def per_process(nofile: int) -> int:
    """How many databases one Litestream process may hold when its descriptor limit is
    ``nofile`` (at least 1)."""
    return max(1, min(PER_PROCESS_MAX, (nofile - FD_RESERVE) // FDS_PER_DB))


def process_count(setting: int | None, files: int, nofile: int) -> int:
    """Litestream processes for a fleet of ``files`` tenant files: ``setting`` when the
    operator chose one, else enough that none holds more than ``per_process(nofile)``
    (1 to ``MAX_PROCESSES``)."""
    if setting is not None:
        return setting
    return max(1, min(MAX_PROCESSES, math.ceil(files / per_process(nofile))))


def shard_of(tenant: str, processes: int) -> int:
    """Which of ``processes`` Litestream processes replicates ``tenant`` (0-based): a
    CRC-32 of its name, so the same on every run, host and Python (``hash()`` is
    salted per process)."""
    return zlib.crc32(tenant.encode()) % processes if processes > 1 else 0


def lineage_id(now: float) -> str:
    """A new lineage id for a file entering service at ``now`` (epoch seconds)."""
    ms = int((now - math.floor(now)) * 1000) % 1000
    return time.strftime("%Y%m%d%H%M%S", time.gmtime(now)) + f"{ms:03d}"


def lineage_url(base: str, tenant: str, lineage: str) -> str:
    """Where the file of ``tenant``'s ``lineage`` replicates to (see module doc)."""
    parts = urlsplit(base)
    if parts.scheme == "nats":
        bucket = parts.path.strip("/")
        return urlunsplit(("nats", parts.netloc, f"/{bucket}-{tenant}-{lineage}", "", ""))
    path = f"{parts.path.rstrip('/')}/{tenant}/{lineage}"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def registry_url(base: str, region: str) -> str:
    """Where the registry of ``region``'s agent replicates to (issue 15):
    ``<base>/_registry/<region>``, or the bucket ``<bucket>-_registry-<region>`` (NATS).
    ``_registry`` cannot be a tenant name (names start with a letter or digit), so it
    never meets a tenant's lineage."""
    return lineage_url(base, "_registry", region)


def nats_bucket(url: str) -> str | None:
    """The JetStream object-store bucket a ``nats://`` lineage URL names (None for
    other schemes): it must exist before Litestream can write to it."""
    parts = urlsplit(url)
    return parts.path.strip("/") if parts.scheme == "nats" else None


@dataclass(frozen=True)
class BackupState:
    """One tenant's replication as observed (through Litestream's control socket).

    ``txid``: Litestream's transaction id of the file (0: nothing captured yet);
    ``synced_at``: epoch seconds of the last sync that left the replica holding
    everything captured (None: never since Litestream started); ``lag``: seconds the
    replica is behind — 0 while syncs succeed (an idle tenant is fully replicated),
    growing while they fail; None when unknown (not replicated)."""

    tenant: str
    url: str | None
    txid: int = 0
    synced_at: float | None = None
    lag: float | None = None
    error: str | None = None
    synced_offset: int | None = None  # Litestream's last synced -wal offset, bytes

    def good(self, threshold: float) -> bool:
        return self.lag is not None and self.lag <= threshold and self.synced_at is not None


def lag_of(synced_at: float | None, now: float) -> float | None:
    """Seconds since the last successful sync (Litestream syncs every ``sync_interval``
    even when idle, so a healthy replica's lag stays below it)."""
    return None if synced_at is None else max(0.0, now - synced_at)
