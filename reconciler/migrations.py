"""The migration catalog: numbered schema steps for tenant databases, and how to run one.

Why: a tenant's ``PRAGMA user_version`` is only meaningful if version *n* means the same
schema on every file, forever. So the catalog insists on ``0001..N`` with no gaps or
duplicates, fingerprints every file (SHA-256, recorded in the registry when first
applied) and refuses to run when an applied migration has since been edited.

Running: each migration executes inside the caller's ``BEGIN IMMEDIATE`` transaction
together with ``PRAGMA user_version = n``. SQL files are split into statements here
(``executescript`` would COMMIT the caller's transaction first) so a failure rolls the
whole step back, DDL included. Statements that manage transactions are rejected at
load time for the same reason.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from reconciler.errors import InvalidInput, Problem

NAME = re.compile(r"^(\d{4})_([a-z0-9][a-z0-9_]*)\.(sql|py)$")
_FORBIDDEN = re.compile(
    r"^\s*(BEGIN|COMMIT|END|ROLLBACK(?!\s+TO)|VACUUM|PRAGMA\s+(main\.)?user_version)\b",
    re.IGNORECASE,
)

MigrateFn = Callable[[sqlite3.Connection], None]


@dataclass(frozen=True)
class Statement:
    line: int  # 1-based line of the statement's first character in its file
    sql: str


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path
    kind: Literal["sql", "py"]
    sha256: str
    statements: tuple[Statement, ...] = ()
    function: MigrateFn | None = None

    @property
    def filename(self) -> str:
        return self.path.name

    def run(self, conn: sqlite3.Connection) -> None:
        """Execute inside the caller's open transaction (never commits)."""
        if self.function is not None:
            self.function(conn)
            if not conn.in_transaction:
                raise MigrationError(self, None, "migrate(conn) committed or rolled back "
                                     "the transaction itself; leave that to the reconciler")
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

    def steps(self, current: int, target: int) -> tuple[Migration, ...]:
        """Migrations taking a file from ``current`` to ``target`` (empty if none)."""
        return self.migrations[current:target]

    def checks_up_to(self, version: int) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.version <= version)


def split_statements(text: str) -> list[Statement]:
    """Split SQL into complete statements, keeping each one's starting line."""
    out: list[Statement] = []
    start = 0
    for i, ch in enumerate(text):
        if ch == ";" and sqlite3.complete_statement(text[start : i + 1]):
            _append(out, text, start, i + 1)
            start = i + 1
    _append(out, text, start, len(text))
    return out


def _append(out: list[Statement], text: str, start: int, end: int) -> None:
    chunk = text[start:end]
    stripped = _strip_comments(chunk).strip().rstrip(";").strip()
    if not stripped:
        return
    lead = len(chunk) - len(chunk.lstrip())
    # skip leading comment lines so the line number points at the SQL itself
    body = chunk[lead:]
    while body.startswith("--"):
        nl = body.find("\n")
        if nl < 0:
            break
        lead += nl + 1
        rest = chunk[lead:]
        lead += len(rest) - len(rest.lstrip())
        body = chunk[lead:]
    line = text.count("\n", 0, start + lead) + 1
    out.append(Statement(line, chunk.strip()))


def _strip_comments(sql: str) -> str:
    sql = re.sub(r"/\*.*?\*/", " ", sql, flags=re.DOTALL)
    return re.sub(r"--[^\n]*", " ", sql)


def load(directory: Path) -> Catalog:
    """Read and validate every migration and check. Raises ``InvalidInput``."""
    problems: list[Problem] = []
    if not directory.is_dir():
        raise InvalidInput([Problem(str(directory), None, None, "migrations directory not found",
                                    "create it, or set settings.migrations")])
    found: dict[int, Migration] = {}
    for path in sorted(directory.iterdir()):
        if path.is_dir() or path.suffix not in (".sql", ".py"):
            continue
        m = NAME.match(path.name)
        if not m:
            problems.append(Problem(str(path), None, None, "migration file name is not "
                                    "NNNN_slug.sql or NNNN_slug.py",
                                    "rename it, e.g. 0004_add_invoices.sql (4 digits, lowercase)"))
            continue
        version = int(m.group(1))
        if version in found:
            problems.append(Problem(str(path), None, None, f"duplicate migration number "
                                    f"{version:04d} (also {found[version].filename})",
                                    "give each migration its own number"))
            continue
        migration = _load_one(path, version, m.group(2), m.group(3), problems)
        if migration is not None:
            found[version] = migration
    versions = sorted(found)
    for expected, v in enumerate(versions, start=1):
        if v != expected:
            problems.append(Problem(str(found[v].path), None, None,
                                    f"migration numbers have a gap: {expected:04d} is missing",
                                    f"number migrations 0001..N without gaps; rename this one "
                                    f"to {expected:04d}_{found[v].name}.{found[v].kind}"))
            break
    if 0 in found:
        problems.append(Problem(str(found[0].path), None, None, "migration 0000 is not allowed",
                                "version 0 is the empty database; start at 0001"))
    checks = _load_checks(directory / "checks", len(versions), problems)
    if problems:
        raise InvalidInput(problems)
    return Catalog(directory, tuple(found[v] for v in versions), checks)


def _load_one(path: Path, version: int, name: str, kind: str,
              problems: list[Problem]) -> Migration | None:
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        problems.append(Problem(str(path), None, None, "not UTF-8 text", "save it as UTF-8"))
        return None
    if kind == "sql":
        statements = split_statements(text)
        if not statements:
            problems.append(Problem(str(path), 1, 1, "migration is empty",
                                    "write at least one SQL statement"))
            return None
        for st in statements:
            if _FORBIDDEN.match(st.sql):
                problems.append(Problem(str(path), st.line, 1, "migrations must not manage "
                                        f"transactions or user_version: {st.sql.split()[0]} …",
                                        "remove it; the reconciler wraps each migration in "
                                        "BEGIN IMMEDIATE … COMMIT and sets user_version"))
                return None
        if not sqlite3.complete_statement(text.rstrip() + "\n;"):
            problems.append(Problem(str(path), statements[-1].line, 1, "incomplete SQL statement",
                                    "close every string, comment and CREATE TRIGGER … END"))
            return None
        return Migration(version, name, path, "sql", digest, tuple(statements))
    fn = _load_function(path, text, version, problems)
    if fn is None:
        return None
    return Migration(version, name, path, "py", digest, (), fn)


def _load_function(path: Path, text: str, version: int,
                   problems: list[Problem]) -> MigrateFn | None:
    try:
        code = compile(text, str(path), "exec")
    except SyntaxError as exc:
        problems.append(Problem(str(path), exc.lineno, exc.offset, f"Python syntax error: "
                                f"{exc.msg}", "fix the migration's Python code"))
        return None
    spec = importlib.util.spec_from_loader(f"reconciler_migration_{version:04d}", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    module.__file__ = str(path)
    try:
        exec(code, module.__dict__)
    except Exception as exc:
        problems.append(Problem(str(path), None, None, f"importing the migration failed: "
                                f"{type(exc).__name__}: {exc}", "fix its top-level code"))
        return None
    fn = module.__dict__.get("migrate")
    if not callable(fn):
        problems.append(Problem(str(path), None, None, "Python migration has no migrate(conn) "
                                "function", "define `def migrate(conn): ...`"))
        return None
    return fn  # type: ignore[no-any-return]


def _load_checks(directory: Path, latest: int, problems: list[Problem]) -> tuple[Check, ...]:
    if not directory.is_dir():
        return ()
    out: list[Check] = []
    for path in sorted(directory.iterdir()):
        if path.is_dir() or path.suffix != ".sql":
            continue
        m = NAME.match(path.name)
        if not m:
            problems.append(Problem(str(path), None, None, "check file name is not NNNN_slug.sql",
                                    "name it after the version it checks, e.g. 0003_notes.sql"))
            continue
        version = int(m.group(1))
        if not 1 <= version <= latest:
            problems.append(Problem(str(path), None, None, f"check for version {version:04d} but "
                                    f"migrations go up to {latest:04d}",
                                    "number it after an existing migration"))
            continue
        statements = split_statements(path.read_text(encoding="utf-8"))
        if not statements:
            problems.append(Problem(str(path), 1, 1, "check is empty",
                                    "write a query that returns no rows when healthy"))
            continue
        out.append(Check(version, path, tuple(statements)))
    return tuple(out)


def verify_recorded(catalog: Catalog, recorded: Mapping[int, tuple[str, str]],
                    tenants_at_or_above: Callable[[int], int]) -> list[Problem]:
    """Problems for applied migrations whose file changed or vanished since."""
    problems: list[Problem] = []
    by_version = {m.version: m for m in catalog.migrations}
    for version, (name, sha) in sorted(recorded.items()):
        count = tenants_at_or_above(version)
        m = by_version.get(version)
        if m is None:
            problems.append(Problem(str(catalog.directory / f"{version:04d}_{name}"), None, None,
                                    f"migration {version:04d}_{name} was applied ({count} "
                                    "tenant(s) have it) but its file is gone",
                                    "restore the file; never remove an applied migration"))
        elif m.sha256 != sha:
            problems.append(Problem(str(m.path), None, None,
                                    f"edited after it was applied: {count} tenant(s) have "
                                    f"version {version} (recorded sha256 {sha[:12]}…, file "
                                    f"now {m.sha256[:12]}…)",
                                    "restore the original and put the change in a new migration "
                                    f"{catalog.latest + 1:04d}_<slug>"))
    return problems


def dry_run(catalog: Catalog) -> list[Problem]:
    """Apply every migration and check to an in-memory database: catches SQL that
    cannot work on any data (syntax errors, missing tables) before CI merges it."""
    problems: list[Problem] = []
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        for m in catalog.migrations:
            conn.execute("BEGIN IMMEDIATE")
            try:
                m.run(conn)
                conn.execute(f"PRAGMA user_version = {m.version}")
                conn.execute("COMMIT")
            except (MigrationError, sqlite3.Error, Exception) as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                line = exc.line if isinstance(exc, MigrationError) else None
                msg = str(exc).split(": ", 1)[-1] if isinstance(exc, MigrationError) else str(exc)
                problems.append(Problem(str(m.path), line, 1 if line else None,
                                        f"fails on an empty database: {msg}",
                                        "fix the statement; migrations run in order from 0001"))
                return problems
            for check in catalog.checks:
                if check.version != m.version:
                    continue
                for st in check.statements:
                    try:
                        conn.execute(st.sql).fetchone()
                    except sqlite3.Error as exc:
                        problems.append(Problem(str(check.path), st.line, 1,
                                                f"check query fails: {exc}",
                                                "write a SELECT that returns no rows when healthy"))
        return problems
    finally:
        conn.close()
