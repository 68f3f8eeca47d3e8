"""Layout: where the fleet's files may lie relative to one another on disk.

Why a module of its own: tenant files, the registry, the migrations and the bookkeeping
folders (``_archive``, ``_retired``) are judged against each other when tenants.yaml is
loaded (``settingsconfig`` for the settings, ``desired`` for the regions), so a run can
never write one into another or fail half-way on a path that cannot be a directory.

Invariants: every rule is a pure comparison of absolute paths, except ``real`` (resolves
symlinks), ``file_in_the_way`` (stats ancestors) and ``not_a_registry`` (reads at most the
16-byte SQLite header); none of them writes, and none raises on an unreadable path.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reconciler.settingsconfig import Settings

RESERVED_DIRS = ("_archive", "_retired")
_SQLITE_MAGIC = b"SQLite format 3\x00"

HOLDS_CENTRAL = "contains the central registry"


def region_path_problem(path: Path, settings: Settings) -> str:
    """Why ``path`` cannot be a region directory ('' when it can): it must not be a root,
    hold the data directory or the registry, or overlap a reserved folder or the
    migrations. Overlap with other regions is the caller's to judge."""
    data = settings.data_dir
    if path == Path(path.anchor):
        return "is a filesystem root"
    if path == data or data.is_relative_to(path):
        return "contains the data directory itself"
    if any(nested(path, data / r) for r in RESERVED_DIRS):
        return "overlaps a reserved folder (_archive/_retired)"
    if settings.central.is_relative_to(path) or real(settings.central).is_relative_to(
            real(path)):
        return HOLDS_CENTRAL
    if nested(path, settings.migrations_dir) or nested(real(path),
                                                       real(settings.migrations_dir)):
        return "overlaps the migrations directory"
    return ""


def nested(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` are the same directory or one lies inside the other."""
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def real(path: Path) -> Path:
    """``path`` with symlinks resolved, so two spellings of one directory compare equal."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return path


def file_in_the_way(directory: Path) -> Path | None:
    """The nearest existing ``directory`` or ancestor of it, if that is not a directory
    (then the directory can never be created: the run would fail half-way)."""
    for p in (directory, *directory.parents):
        try:
            st = p.stat()
        except OSError:
            continue
        return None if stat.S_ISDIR(st.st_mode) else p
    return None


def not_a_registry(path: Path) -> str:
    """Why ``path`` cannot be the registry ('' when it can): catches `central:` pointing
    at a directory or at some other file, which would otherwise be clobbered or crash."""
    try:
        st = path.stat()
    except OSError:
        return ""
    if stat.S_ISDIR(st.st_mode):
        return "is a directory"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if st.st_size == 0:
        return ""
    try:
        with path.open("rb") as f:
            head = f.read(len(_SQLITE_MAGIC))
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    return "" if head == _SQLITE_MAGIC else "is not a SQLite database"
