"""``reconcile plan --rehearse``: the pending migrations run on copies of real tenants.

Why: "will this migration work on every tenant's real data?" is only answered by
running it on that data. A rehearsal copies chosen tenants with SQLite's backup API
into a private temporary folder and runs, on each copy, exactly what a rollout runs on
the tenant — ``rollout.migrate_one``: the pending steps each in its transaction, then
the health gate (``quick_check`` and the checks) — plus ``PRAGMA foreign_key_check``,
and reports per tenant ok or the failing step with its error.

Invariants:
* the live fleet is only read: each tenant is opened like ``drift`` opens files (read
  access, ``query_only``), the registry read-only, and nothing is recorded;
* disk use is bounded to one copy per worker (``rollout.parallel``) at a time: a worker
  removes its copy before it takes the next tenant;
* copies live in ``$TMPDIR/reconcile-rehearse-<pid>-*`` (mode 0700): removed when the run
  ends, also on SIGTERM/SIGINT (no further tenant starts; those in flight finish on
  their copies first); a folder left by a run killed outright (SIGKILL, power
  loss) is removed by the next rehearsal on this machine, which sweeps every such folder
  of ours whose process is gone.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import sqlite3
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType

from reconciler import context, rollout
from reconciler.actions import Action, Kind, Plan
from reconciler.context import Timer
from reconciler.drift import open_for_reading
from reconciler.errors import InvalidInput, Problem
from reconciler.migrations import Catalog

PREFIX = "reconcile-rehearse-"
_OURS = re.compile(rf"^{PREFIX}(\d+)-")
SAMPLE_EACH = 3  # default sample: the 3 largest, the 3 oldest versions, 3 at random


@dataclass(frozen=True)
class Choice:
    action: Action
    why: str  # largest | oldest | random | named | all
    size: int  # bytes of the tenant's file (and its -wal)


@dataclass(frozen=True)
class Rehearsal:
    tenant: str
    why: str
    from_version: int | None
    to_version: int | None
    ok: bool
    reached: int | None = None  # the version the copy got to
    step: str | None = None  # what failed: a migration file, "health gate", "foreign keys", …
    error: str | None = None
    duration_ms: int = 0
    size: int = 0


def _size(path: Path | None) -> int:
    total = 0
    for suffix in ("", "-wal"):
        with contextlib.suppress(OSError):
            total += os.stat(f"{path}{suffix}").st_size
    return total


def choose(plan: Plan, tenants: Sequence[str], declared: Sequence[str], config: str,
           rng: random.Random | None = None) -> list[Choice]:
    """Which tenants to rehearse. ``tenants``: [] (the default sample), ["N"] (a sample
    of N), ["all"], or tenant names (each must be declared; one with nothing pending
    is reported as such by the caller). Raises ``InvalidInput`` for an unknown name or
    a bad N."""
    pending = {a.tenant: a for a in plan.actions
               if a.kind in (Kind.MIGRATE, Kind.PENDING) and a.path is not None}
    if tenants == ["all"]:
        return [Choice(a, "all", _size(a.path)) for _, a in sorted(pending.items())]
    if len(tenants) == 1 and tenants[0].lstrip("-").isdigit():
        n = int(tenants[0])
        if n < 1:
            raise InvalidInput([Problem("--rehearse", None, None, f"sample size {n} is below 1",
                                        "write --rehearse N with N ≥ 1, all, or tenant names")])
        return _sample(list(pending.values()), n, rng or random.Random())
    if not tenants:
        return _sample(list(pending.values()), 3 * SAMPLE_EACH, rng or random.Random())
    unknown = [t for t in tenants if t not in declared]
    if unknown:
        raise InvalidInput([Problem(config, None, None, f"--rehearse: tenant {t!r} is not "
                                    "declared", "name declared tenants, a number, or all")
                            for t in unknown])
    return [Choice(pending[t], "named", _size(pending[t].path)) for t in dict.fromkeys(tenants)
            if t in pending]


def _sample(pending: list[Action], n: int, rng: random.Random) -> list[Choice]:
    """The largest files, the oldest versions and a random set (a third each), distinct."""
    if len(pending) <= n:
        return [Choice(a, "all", _size(a.path)) for a in sorted(pending, key=lambda a: a.tenant)]
    sizes = {a.tenant: _size(a.path) for a in pending}
    third = max(1, n // 3)
    out: dict[str, Choice] = {}
    for a in sorted(pending, key=lambda a: (-sizes[a.tenant], a.tenant))[:third]:
        out[a.tenant] = Choice(a, "largest", sizes[a.tenant])
    oldest = sorted((a for a in pending if a.tenant not in out),
                    key=lambda a: (a.from_version or 0, a.tenant))
    for a in oldest[:third]:
        out[a.tenant] = Choice(a, "oldest", sizes[a.tenant])
    rest = [a for a in sorted(pending, key=lambda a: a.tenant) if a.tenant not in out]
    for a in rng.sample(rest, min(len(rest), n - len(out))):
        out[a.tenant] = Choice(a, "random", sizes[a.tenant])
    return list(out.values())


def sweep(base: Path) -> list[Path]:
    """Remove rehearsal folders of ours in ``base`` whose process is gone (a run killed
    outright). Returns what was removed."""
    removed: list[Path] = []
    uid = os.getuid()
    with contextlib.suppress(OSError):
        for entry in os.scandir(base):
            m = _OURS.match(entry.name)
            if not m or not entry.is_dir(follow_symlinks=False):
                continue
            if entry.stat(follow_symlinks=False).st_uid != uid or _alive(int(m.group(1))):
                continue
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _terminate_cleanly() -> Iterator[None]:
    """SIGTERM raises ``SystemExit`` in the main thread (so ``finally`` blocks remove
    the copies), for the length of the block."""
    def on_term(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread: nothing to install
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(choices: Sequence[Choice], catalog: Catalog, busy_timeout: float, workers: int,
        progress: Callable[[int, int, int], None] | None = None,
        base: Path | None = None) -> list[Rehearsal]:
    """Rehearse each choice on a copy, up to ``workers`` at once, in the given order.

    ``progress(done, total, failed)`` after each; ``base``: where the private folder is
    made (default: the system's temporary directory)."""
    where = base or Path(tempfile.gettempdir())
    sweep(where)
    if not choices:
        return []
    with _terminate_cleanly():
        folder = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=where))
        try:
            def one(choice: Choice) -> Rehearsal:
                return rehearse_one(choice, folder, catalog, busy_timeout)

            out: dict[str, Rehearsal] = {}
            pool = ThreadPoolExecutor(max_workers=max(1, workers))
            try:
                futures = [pool.submit(one, c) for c in choices]
                failed = 0
                for f in as_completed(futures):
                    r = f.result()
                    out[r.tenant] = r
                    failed += not r.ok
                    if progress is not None:
                        progress(len(out), len(choices), failed)
            finally:  # on SIGTERM/Ctrl-C: start no further copy, let those running end
                pool.shutdown(wait=True, cancel_futures=True)
            return [out[c.action.tenant] for c in choices]
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def rehearse_one(choice: Choice, folder: Path, catalog: Catalog,
                 busy_timeout: float) -> Rehearsal:
    """Copy one tenant into ``folder``, run its rollout on the copy, remove the copy."""
    a = choice.action
    assert a.path is not None and a.to_version is not None
    timer = Timer()
    copy = folder / f"{a.tenant}.db"

    def result(ok: bool, reached: int | None, step: str | None = None,
               error: str | None = None) -> Rehearsal:
        return Rehearsal(a.tenant, choice.why, a.from_version, a.to_version, ok, reached,
                         step, error, timer.ms, choice.size)

    try:
        try:
            _copy(a.path, copy, busy_timeout)
        except (OSError, sqlite3.Error) as exc:
            return result(False, a.from_version, "copy", f"{type(exc).__name__}: {exc}")
        context.crash_point("rehearse:after-copy")
        done = rollout.migrate_one(replace(a, path=copy), catalog, busy_timeout, False)
        res = done.result
        if res is None:
            return result(False, a.from_version, "copy", done.busy or "did not run")
        if res.error is not None:
            step = ("health gate" if res.error.startswith("health gate") else
                    catalog.migrations[res.to_version].filename
                    if res.to_version < len(catalog.migrations) else "migration")
            return result(False, res.to_version, step, res.error)
        violations = _foreign_key_violations(copy, busy_timeout)
        if violations:
            return result(False, res.to_version, "foreign keys", violations)
        return result(True, res.to_version)
    finally:
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{copy}{suffix}")


def _copy(source: Path, dest: Path, busy_timeout: float) -> None:
    """A consistent copy of the live tenant with the backup API (the source only read)."""
    src = open_for_reading(os.fspath(source), busy_timeout)
    try:
        fd = os.open(dest, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
        dst = sqlite3.connect(dest)
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()


def _foreign_key_violations(path: Path, busy_timeout: float) -> str | None:
    conn = sqlite3.connect(path, timeout=busy_timeout)
    try:
        rows = conn.execute("PRAGMA foreign_key_check").fetchall()
    finally:
        conn.close()
    if not rows:
        return None
    first = ", ".join(f"{r[0]} rowid {r[1]} → {r[2]}" for r in rows[:3])
    return f"{len(rows)} foreign-key violation{'s' if len(rows) != 1 else ''} ({first})"


def lines(found: Sequence[Rehearsal], idle: Sequence[str] = ()) -> list[str]:
    """Per tenant ``ok`` or ``FAIL`` with the failing step and error, then a summary.
    ``idle``: tenants named but with no pending migration (nothing to rehearse)."""
    out = [f"Rehearsal on copies (backup API; the live files are only read): "
           f"{len(found)} tenant{'s' if len(found) != 1 else ''}"]
    if idle:
        out.append(f"  nothing pending (not rehearsed): {', '.join(idle)}")
    elif not found:
        out.append("  nothing to rehearse: no tenant has a pending migration")
    w = max((len(r.tenant) for r in found), default=0)
    for r in found:
        head = (f"  {'ok' if r.ok else 'FAIL':<4}  {r.tenant:<{w}}  v{r.from_version} → "
                f"v{r.to_version}  ({r.why}, {r.size / 1e6:.1f} MB, {r.duration_ms} ms)")
        out.append(head if r.ok else f"{head}\n        failed at {r.step} (reached "
                   f"v{r.reached}): {r.error}")
    failed = sum(not r.ok for r in found)
    out.append(f"Rehearsal: {len(found) - failed} passed, {failed} failed.")
    return out
