"""``reconcile gc --retired-older-than D``: the only command that deletes tenant data.

Why: relocation and restore never delete — a source they moved out of service goes to
``<data_dir>/_retired/``. Space comes back only when an operator asks for it, for copies
retired longer ago than a duration they chose, and every deletion is said out loud
(and recorded in ``events``). ``--dry-run`` lists the same files and deletes nothing.

Invariants:
* only regular ``*.db`` files directly in ``_retired/`` are candidates (with their
  ``-wal``/``-shm``/``-journal``); symlinks, directories and anything else are ignored;
* a file's age is the retirement time in its name (``<...>-<UTC stamp>.db``; a rename
  keeps the old mtime), falling back to its mtime;
* a path an unfinished operation's journal still names is never deleted;
* deleting runs under the fleet lock, so no relocation is retiring a file meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from reconciler import relocate, tenantdb
from reconciler.context import OK, Context, Logger, record
from reconciler.engine import Inputs, locked_registry
from reconciler.registry import Registry


@dataclass(frozen=True)
class Candidate:
    path: Path
    size: int  # bytes, with its sidecars
    retired_at: float
    age: float  # seconds
    delete: bool  # old enough and not referenced by the journal
    reason: str = ""


def retired_at(path: Path, mtime: float) -> float:
    _stem, _sep, text = path.name[:-3].rpartition("-")
    return relocate.unstamp(text) or mtime


def scan(retired_dir: Path, older_than: float, keep: set[str], now: float | None = None
         ) -> list[Candidate]:
    """What is in ``retired_dir``, oldest first, and whether gc would delete it."""
    now = time.time() if now is None else now
    try:
        entries = list(os.scandir(retired_dir))
    except FileNotFoundError:
        return []
    out = []
    for e in entries:
        if not e.name.endswith(".db") or e.name.startswith("."):
            continue
        st = e.stat(follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            continue
        path = Path(e.path)
        size = 0
        for suffix in tenantdb.FILES:
            with contextlib.suppress(OSError):
                size += os.lstat(f"{path}{suffix}").st_size
        when = retired_at(path, st.st_mtime)
        age = now - when
        reason = ""
        if str(path) in keep:
            reason = "an unfinished operation refers to it"
        elif age <= older_than:
            reason = "too recent"
        out.append(Candidate(path, size, when, age, not reason, reason))
    return sorted(out, key=lambda c: (c.retired_at, c.path.name))


def collect(inputs: Inputs, older_than: float, log: Logger, *, dry_run: bool,
            wait: bool = True) -> list[Candidate]:
    """Delete (or, with ``dry_run``, list) retired copies older than ``older_than`` s."""
    settings = inputs.desired.settings
    if dry_run:
        nothing: set[str] = set()
        keep = Registry.read(settings.central, lambda reg: reg.journal_paths()
                             if reg.version >= 2 else nothing, nothing)
        return scan(settings.retired_dir, older_than, keep)
    with locked_registry(inputs, log, wait) as registry:
        found = scan(settings.retired_dir, older_than, registry.journal_paths())
        ctx = Context(inputs.desired, inputs.catalog, registry, inputs.revision, log)
        for c in found:
            if not c.delete:
                continue
            tenantdb.remove_quietly(c.path)
            with registry.transaction():
                record(ctx, "gc", _tenant_of(c.path), OK, path=str(c.path), bytes=c.size,
                       retired_at=_iso(c.retired_at))
        return found


def _tenant_of(path: Path) -> str | None:
    """Best effort: retired names start with the tenant name (``<tenant>-<label>-…``)."""
    stem = path.name[:-3]
    head, _sep, _stamp = stem.rpartition("-")
    name, _sep, _label = head.rpartition("-")
    return name or head or None


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def human_age(seconds: float) -> str:
    s = max(0, int(seconds))
    for unit, span in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= span:
            return f"{s // span}{unit}"
    return f"{s}s"


def lines(found: list[Candidate], older_than: float, dry_run: bool, base: Path) -> list[str]:
    verb = "would delete" if dry_run else "deleted"
    out = []
    for c in found:
        if c.delete:
            out.append(f"{verb}  {c.path.relative_to(base)}  {human_size(c.size)}, retired "
                       f"{_iso(c.retired_at)} ({human_age(c.age)} ago)")
    deleted = [c for c in found if c.delete]
    kept = [c for c in found if not c.delete]
    freed = human_size(sum(c.size for c in deleted))
    out.append(f"gc: {verb} {len(deleted)} retired file{'s' if len(deleted) != 1 else ''} "
               f"({freed}); kept {len(kept)} (retired within {human_age(older_than)}"
               f" or still referenced)")
    return out
