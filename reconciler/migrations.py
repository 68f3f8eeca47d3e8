"""The migration catalog: numbered schema steps for tenant databases, and how to run one.

Why: a tenant's ``PRAGMA user_version`` is only meaningful if version *n* means the same
schema on every file, forever. So the catalog insists on ``0001..N`` with no gaps or
duplicates, fingerprints every file (SHA-256 of its text, blind to line endings and a
BOM — see ``checksum`` — recorded in the registry when first applied) and refuses to run
when an applied migration has since been edited.

Running: each migration executes inside the caller's ``BEGIN IMMEDIATE`` transaction
together with ``PRAGMA user_version = n``. SQL files are split into statements
(``sqltext``; ``executescript`` would COMMIT the caller's transaction first) so a failure
rolls the whole step back, DDL included. Statements that would break that promise — transaction
control, ``user_version``, ``ATTACH`` (a path outside the tenant), ``VACUUM``, pragmas
that cannot work inside a transaction — are rejected at load time, as are SQL syntax
errors, so a broken catalog stops the run before any tenant is touched.

Invariants of a loaded ``Catalog``: migrations are exactly versions 1..latest in order;
every SQL migration has at least one statement or only (closed) comments — a no-op
step that moves ``user_version`` — and none of the rejected statements; every
Python migration defines ``migrate(conn)`` taking one argument; every check is named
after an existing version and only reads. Loading raises only ``InvalidInput``.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import os
import re
import shlex
import sqlite3
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from reconciler import checksum, pyrules
from reconciler.errors import InvalidInput, Problem
from reconciler.sqltext import (
    Statement,
    col_at,
    first_words,
    line_at,
    rejection,
    sql_statements,
    sql_words,
)
from reconciler.versions import UnknownVersion

NAME = re.compile(r"^(\d{4})_([a-z0-9][a-z0-9_]*)\.(sql|py)$")
# Something that was meant to be a migration, but is misnamed (checked case-insensitively).
_LOOKS_LIKE = re.compile(r"^\D{0,3}\d+.*\.(sql|py)$|\.(sql|py)$", re.IGNORECASE)
_SUGGEST = re.compile(r"^\D{0,3}?(\d+)[\W_]*(.*?)\.(sql|py)$", re.IGNORECASE)
_BOM = "\ufeff"
MAX_BYTES = 64 * 1024 * 1024  # a migration bigger than this is a data dump, not a step

MigrateFn = Callable[[sqlite3.Connection], None]


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path
    kind: Literal["sql", "py"]
    sha256: str
    statements: tuple[Statement, ...] = ()
    function: MigrateFn | None = None
    # recorded checksums that also mean this file as it is (``checksum.accepted``)
    accepts: frozenset[str] = frozenset()

    @property
    def filename(self) -> str:
        return self.path.name

    def run(self, conn: sqlite3.Connection) -> None:
        """Execute inside the caller's open transaction (never commits). The guards that
        keep every statement inside that transaction are ``steprun``'s."""
        if self.function is not None:
            self.function(conn)
            if not conn.in_transaction:
                raise MigrationError(self, None, "the step's transaction ended inside "
                                     "migrate(conn); nothing of the step was kept")
            return
        for st in self.statements:
            try:
                conn.execute(st.sql)
            except sqlite3.Error as exc:
                raise MigrationError(self, st.line, str(exc)) from exc


class MigrationError(Exception):
    """A migration failed on a tenant's database (the caller rolls it back)."""

    def __init__(self, migration: Migration, line: int | None, message: str) -> None:
        self.migration = migration
        self.line = line
        self.reason = message
        where = migration.filename + (f":{line}" if line else "")
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class Check:
    """Health-gate queries for a version: each must return no rows."""

    version: int
    path: Path
    statements: tuple[Statement, ...]


@dataclass(frozen=True)
class Catalog:
    directory: Path
    migrations: tuple[Migration, ...]
    checks: tuple[Check, ...] = ()

    @property
    def latest(self) -> int:
        return len(self.migrations)

    def knows(self, version: int) -> bool:
        """Whether ``version`` is one this catalog produces (0 is the empty database)."""
        return 0 <= version <= len(self.migrations)

    def steps(self, current: int, target: int) -> tuple[Migration, ...]:
        """Migrations taking a file from ``current`` to ``target`` (empty if none).

        Raises ``UnknownVersion`` when either is outside 0…latest: a version the catalog
        does not know never indexes it (``migrations[-1:]`` would be the last step)."""
        for version in (current, target):
            if not self.knows(version):
                raise UnknownVersion(version, self.latest)
        return self.migrations[current:target]

    @property
    def no_ops(self) -> tuple[Migration, ...]:
        """SQL migrations holding only comments: each only moves ``user_version``."""
        return tuple(m for m in self.migrations if m.kind == "sql" and not m.statements)

    def checks_up_to(self, version: int) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.version <= version)


# --------------------------------------------------------------------------- loading


def load(directory: Path) -> Catalog:
    """Read and validate every migration and check. Raises ``InvalidInput``."""
    problems: list[Problem] = []
    try:
        entries = sorted(directory.iterdir())
    except FileNotFoundError:
        raise InvalidInput([Problem(str(directory), None, None, "migrations directory not found",
                                    "create it (it may be empty), or set settings.migrations "
                                    "in tenants.yaml")]) from None
    except NotADirectoryError:
        raise InvalidInput([Problem(str(directory), None, None, "the migrations path is a file, "
                                    "not a directory", "point settings.migrations at the "
                                    "directory holding 0001_<slug>.sql …")]) from None
    except OSError as exc:
        raise InvalidInput([Problem(str(directory), None, None, "cannot read the migrations "
                                    f"directory: {exc.strerror or exc}",
                                    "check its permissions")]) from None
    named: dict[int, list[tuple[Path, str, str]]] = {}  # version → (path, slug, kind)
    for path in entries:
        if path.name.startswith(".") or path.name in ("__pycache__", "checks"):
            continue
        m = NAME.match(path.name)
        if m is None:
            if _LOOKS_LIKE.search(path.name):
                problems.append(Problem(str(path), None, None, "migration file name is not "
                                        "NNNN_slug.sql or NNNN_slug.py", _rename_hint(path.name)))
            continue
        if path.is_dir():
            problems.append(Problem(str(path), None, None, "is a directory, not a migration "
                                    "file", "move it out of the migrations directory"))
            continue
        named.setdefault(int(m.group(1)), []).append((path, m.group(2), m.group(3)))

    found: dict[int, Migration] = {}
    for version, files in sorted(named.items()):
        if len(files) > 1:  # reported on each: which one was applied is for the user to say
            for path, _slug, _kind in files:
                others = ", ".join(p.name for p, _s, _k in files if p != path)
                problems.append(Problem(str(path), None, None, f"duplicate migration number "
                                        f"{version:04d} (also {others})",
                                        "keep the number on the migration that was already "
                                        "applied and renumber the other to "
                                        f"{max(named) + 1:04d}"))
            continue
        path, slug, kind = files[0]
        if version == 0:
            problems.append(Problem(str(path), None, None, "migration 0000 is not allowed",
                                    "version 0 is the empty database; number migrations from "
                                    "0001"))
            continue
        migration = _load_one(path, version, slug, kind, problems)
        if migration is not None:
            found[version] = migration
    numbers = [v for v in sorted(named) if v > 0]
    expected = 1
    for v in numbers:
        if v != expected:
            one = v == expected + 1
            missing = f"{expected:04d} is" if one else f"{expected:04d}–{v - 1:04d} are"
            path, slug, kind = named[v][0]
            problems.append(Problem(str(path), None, None, f"migration numbers have a gap: "
                                    f"{missing} missing", "number migrations 0001..N without "
                                    f"gaps, e.g. rename this one to {expected:04d}_{slug}.{kind}"))
        expected = v + 1
    checks = _load_checks(directory / "checks", numbers[-1] if numbers else 0, problems)
    if problems:
        raise InvalidInput(problems)
    return Catalog(directory, tuple(found[v] for v in sorted(found)), checks)


def _rename_hint(name: str) -> str:
    m = _SUGGEST.match(name)
    if m and int(m.group(1)) <= 9999:
        slug = re.sub(r"[^a-z0-9]+", "_", m.group(2).lower()).strip("_") or "change"
        return f"rename it to {int(m.group(1)):04d}_{slug}.{m.group(3).lower()} " \
               "(4 digits, '_', lowercase letters, digits and '_')"
    return "rename it like 0004_add_invoices.sql (4 digits, '_', lowercase slug), or move " \
           "it out of the migrations directory"


def _read(path: Path, problems: list[Problem]) -> tuple[bytes, str] | None:
    """(bytes, text without a BOM) or None after reporting why it cannot be read."""
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            problems.append(Problem(str(path), None, None, "is not a regular file",
                                    "replace it with a plain file"))
            return None
        if st.st_size > MAX_BYTES:
            problems.append(Problem(str(path), None, None, f"is {st.st_size / 2**20:.0f} MiB; "
                                    f"the limit is {MAX_BYTES // 2**20} MiB",
                                    "load bulk data outside the migrations"))
            return None
        data = path.read_bytes()
    except OSError as exc:
        problems.append(Problem(str(path), None, None, f"cannot read: {exc.strerror or exc}",
                                "check the file's permissions"))
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        problems.append(Problem(str(path), line, col, f"not UTF-8 text (byte "
                                f"0x{data[exc.start]:02x})", "save it as UTF-8"))
        return None
    nul = text.find("\x00")
    if nul >= 0:  # SQLite's and Python's parsers both refuse it (with a ValueError)
        problems.append(Problem(str(path), line_at(text, nul), col_at(text, nul),
                                "contains a NUL character", "remove it — a NUL byte usually "
                                "means a binary or corrupted file"))
        return None
    # the text that runs is the canonical one the checksum covers (``checksum``): a
    # CRLF checkout or a BOM never changes what reaches a tenant
    return data, text.removeprefix(_BOM).replace("\r\n", "\n").replace("\r", "\n")


def _load_one(path: Path, version: int, name: str, kind: str,
              problems: list[Problem]) -> Migration | None:
    read = _read(path, problems)
    if read is None:
        return None
    data, text = read
    digest, accepts = checksum.of(data), checksum.accepted(data)
    if kind == "py":
        fn = _load_function(path, text, version, problems)
        return None if fn is None else Migration(version, name, path, "py", digest, (), fn,
                                                     accepts)
    statements = sql_statements(path, text, problems, what="migration")
    if statements is None:
        return None
    return Migration(version, name, path, "sql", digest, statements, accepts=accepts)


def _load_function(path: Path, text: str, version: int,
                   problems: list[Problem]) -> MigrateFn | None:
    try:
        tree = ast.parse(text, str(path))
        code = compile(tree, str(path), "exec")
    except (SyntaxError, ValueError) as exc:
        line = getattr(exc, "lineno", None)
        col = getattr(exc, "offset", None) if line else None
        msg = getattr(exc, "msg", None) or str(exc)
        problems.append(Problem(str(path), line, col, f"Python syntax error: {msg}",
                                "fix the migration's Python code"))
        return None
    found = _python_transaction_problems(path, tree)
    if found:
        problems.extend(found)
        return None
    spec = importlib.util.spec_from_loader(f"reconciler_migration_{version:04d}", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    module.__file__ = str(path)
    try:
        exec(code, module.__dict__)
    except (Exception, SystemExit) as exc:
        problems.append(Problem(str(path), _raised_at(exc, path), None, "importing the "
                                f"migration failed: {type(exc).__name__}: {exc}",
                                "fix its top-level code; do the work inside migrate(conn)"))
        return None
    fn = module.__dict__.get("migrate")
    if fn is None or not callable(fn):
        problems.append(Problem(str(path), None, None, "Python migration has no migrate(conn) "
                                "function", "define `def migrate(conn):` — it runs inside the "
                                "reconciler's transaction"))
        return None
    try:
        inspect.signature(fn).bind(None)
    except TypeError:
        line = getattr(getattr(fn, "__code__", None), "co_firstlineno", None)
        problems.append(Problem(str(path), line, 1 if line else None,
                                "migrate must take exactly one argument, the connection",
                                "write `def migrate(conn):`"))
        return None
    except ValueError:
        pass  # no introspectable signature: trust it
    return fn  # type: ignore[no-any-return]


def _python_transaction_problems(path: Path, tree: ast.Module) -> list[Problem]:
    """Calls that would break "one migration, one transaction" or end the reconciler
    (found statically, before any tenant: at run time they would already have committed
    half a migration). The connection and process-ending rules live in ``pyrules``."""
    out: list[Problem] = []
    foreign = pyrules.foreign_calls(tree)  # e.g. a scratch database of its own
    for node in ast.walk(tree):
        if isinstance(node, ast.AsyncFunctionDef) and node.name == "migrate":
            out.append(Problem(str(path), node.lineno, node.col_offset + 1,
                               "migrate must be a plain function, not async",
                               "write `def migrate(conn):`"))
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        if (node.func.attr in ("execute", "executemany") and node not in foreign
                and node.args and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)):
            rejected = rejection(node.args[0].value)
            if rejected is not None:
                why, hint = rejected
                out.append(Problem(str(path), node.lineno, node.col_offset + 1,
                                   f"statement `{first_words(node.args[0].value)}` {why}",
                                   hint))
    return out + pyrules.problems(path, tree)


def _raised_at(exc: BaseException, path: Path) -> int | None:
    """The last line of ``path`` in the traceback (where the top-level code failed)."""
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == str(path):
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


raised_at = _raised_at  # the line a migration failed at, for the step runner's messages


_READ_ONLY = re.compile(r"^(SELECT|VALUES|WITH|PRAGMA (\w+ ?\. ?)?FOREIGN_KEY_CHECK)\b")
_WRITES = re.compile(r"\b(INSERT|UPDATE|DELETE|REPLACE INTO|CREATE|DROP|ALTER)\b")


def _load_checks(directory: Path, latest: int, problems: list[Problem]) -> tuple[Check, ...]:
    try:
        entries = sorted(directory.iterdir())
    except FileNotFoundError:
        return ()
    except OSError as exc:
        problems.append(Problem(str(directory), None, None, f"cannot read the checks: "
                                f"{exc.strerror or exc}", "make it a readable directory"))
        return ()
    out: list[Check] = []
    for path in entries:
        if path.name.startswith(".") or path.name == "__pycache__":
            continue
        m = NAME.match(path.name)
        if m is None or m.group(3) != "sql" or path.is_dir():
            if _LOOKS_LIKE.search(path.name) or path.is_dir():
                problems.append(Problem(str(path), None, None, "check is not a file named "
                                        "NNNN_slug.sql", "checks are SQL queries named after "
                                        "the version they check, e.g. 0003_display_names.sql"))
            continue
        version = int(m.group(1))
        if not 1 <= version <= latest:
            problems.append(Problem(str(path), None, None, f"check for version {version:04d}, "
                                    f"but the migrations go up to {latest:04d}",
                                    "number it after the migration whose result it checks"))
            continue
        read = _read(path, problems)
        if read is None:
            continue
        text = read[1]
        statements = sql_statements(path, text, problems, what="check")
        if statements is None:
            continue
        writing = [st for st in statements
                   if not _READ_ONLY.match(sql_words(st.sql))
                   or (sql_words(st.sql).startswith("WITH") and _WRITES.search(sql_words(st.sql)))]
        for st in writing:
            problems.append(Problem(str(path), st.line, 1, f"check statement "
                                    f"`{first_words(st.sql)}` does not only read",
                                    "write a SELECT (or WITH … SELECT) that returns no rows "
                                    "when the tenant is healthy"))
        if not writing:
            out.append(Check(version, path, statements))
    return tuple(out)


# --------------------------------------------------------------------------- verifying


def verify_recorded(catalog: Catalog, recorded: Mapping[int, tuple[str, str]],
                    tenants_at_or_above: Callable[[int], int]) -> list[Problem]:
    """Problems for applied migrations whose file changed or vanished since."""
    problems: list[Problem] = []
    by_version = {m.version: m for m in catalog.migrations}
    for version, (name, sha) in sorted(recorded.items()):
        count = tenants_at_or_above(version)
        have = f"{count} tenant{'s' if count != 1 else ''} {'have' if count != 1 else 'has'}"
        m = by_version.get(version)
        if m is None:
            problems.append(Problem(str(catalog.directory / f"{version:04d}_{name}"), None, None,
                                    f"migration {version:04d}_{name} was applied ({have} it) "
                                    "but its file is gone",
                                    "restore the file from version control; never remove an "
                                    "applied migration"))
        elif m.sha256 != sha and sha not in m.accepts:
            git, where = _git_for(m.path)
            problems.append(Problem(str(m.path), None, None,
                                    f"edited after it was applied: {have} version {version} "
                                    f"(recorded sha256 {sha[:12]}…, file now "
                                    f"{m.sha256[:12]}…; line endings and a byte-order mark "
                                    "do not count); no tenant was touched",
                                    f"restore the file exactly as it was applied (`{git} log -- "
                                    f"{where}` lists its commits; then `{git} checkout <commit> "
                                    f"-- {where}`) and put the change in a new migration "
                                    f"{catalog.latest + 1:04d}_<slug>"))
    return problems


def _git_for(path: Path) -> tuple[str, str]:
    """(git command, pathspec) that name ``path`` from here: plain ``git`` and the path
    relative to the working directory when that is inside the file's repository (the
    nearest folder above it holding ``.git``), e.g. ``migrations/0002_x.sql``; else
    ``git -C <its folder>`` and its name — a pathspec must lie in the repository the
    command runs in."""
    here = Path.cwd()
    repo = next((d for d in path.parents if (d / ".git").exists()), None)
    if repo is not None and here.is_relative_to(repo):
        return "git", shlex.quote(Path(os.path.relpath(path, here)).as_posix())
    return f"git -C {shlex.quote(str(path.parent))}", shlex.quote(path.name)


def dry_run(catalog: Catalog, isolated: bool = False) -> list[Problem]:
    """Apply every migration and check to an in-memory database, the steps run exactly
    as on a tenant; ``isolated``: in a child process, so a migration that ends the
    process is a problem too (see ``dryrun``)."""
    from reconciler import dryrun  # dryrun runs steps through steprun, which imports us

    return dryrun.isolated(catalog) if isolated else dryrun.in_memory(catalog)


def dry_run_checks(conn: sqlite3.Connection, catalog: Catalog, version: int) -> list[Problem]:
    problems: list[Problem] = []
    conn.execute("PRAGMA query_only = ON")  # a check that writes fails here, not on a tenant
    try:
        for check in catalog.checks:
            if check.version != version:
                continue
            for st in check.statements:
                try:
                    conn.execute(st.sql).fetchone()
                except sqlite3.Error as exc:
                    problems.append(Problem(str(check.path), st.line, 1,
                                            f"check query fails: {exc}",
                                            "write a SELECT that returns no rows when healthy"))
    finally:
        conn.execute("PRAGMA query_only = OFF")
    return problems
