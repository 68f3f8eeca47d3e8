"""How a migration step executes on a tenant file: inside its transaction, from a clean
connection, and committed only without foreign-key violations.

Why: "one version means one schema" (DESIGN §3) fails in ways no load-time check can see.
SQLite itself may end a transaction under a migration's feet (a ``PRIMARY KEY ON
CONFLICT ROLLBACK``, ``RAISE(ROLLBACK, …)`` in a trigger, ``SQLITE_FULL``, I/O, busy
or interrupt errors) and every later statement would then autocommit; per-connection
state (``legacy_alter_table``, ``recursive_triggers``, ``case_sensitive_like``, temp
triggers …) set by step *n* would change what step *n+1* does, so a tenant created
0→N in one pass would differ from one migrated a step at a time; and with foreign keys
off during migrations a table rebuild may commit orphaned rows.

Invariants (each step, whatever its route: ``.sql`` or ``.py``, created or migrated,
one step per pass or all in one, ``rollout.transaction: step`` or ``tenant``):

* no statement of a step runs outside the reconciler's transaction: while a step runs,
  an authorizer on its connection refuses to prepare any statement once the
  transaction is gone, and refuses transaction control, ``ATTACH`` and the pragmas
  that would break the step's promise; prepared statements are never re-used
  (``cached_statements=0``: the authorizer sees every statement), ``executemany`` checks
  the transaction before each row, and any refusal fails the step even when the
  migration caught the error;
* a step sees the connection state of a fresh connection: every step of ``step`` mode
  gets a connection of its own; in ``tenant`` mode (one transaction) the state is
  reset between steps (pragmas, ``case_sensitive_like``, limits, temp objects,
  functions and collations a ``.py`` step registered, handlers, factories);
* a step that leaves a foreign-key violation in a table it wrote (or in a table
  referencing one it wrote) fails, naming table and rowid, before ``COMMIT``;
* a ``SystemExit`` (``sys.exit()``) from a migration is a failed step, never the end of
  the process.

Errors: ``execute`` raises ``MigrationError`` only; connecting raises ``sqlite3.Error``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from reconciler.migrations import Migration, MigrationError, raised_at

# Per-connection pragmas whose value changes what a later statement does, may do, or
# returns to Python, read back on a fresh connection and restored between steps (those
# this SQLite build lacks are left out). foreign_keys cannot change inside a
# transaction; mmap_size and wal_autocheckpoint change only how pages reach the disk.
RESET_PRAGMAS = (
    "legacy_alter_table", "recursive_triggers", "defer_foreign_keys",
    "ignore_check_constraints", "reverse_unordered_selects", "trusted_schema",
    "query_only", "automatic_index", "cell_size_check", "cache_size", "cache_spill",
    "max_page_count", "secure_delete", "busy_timeout", "synchronous", "journal_size_limit",
    "analysis_limit", "threads", "count_changes", "full_column_names", "short_column_names",
    "empty_result_callbacks", "checkpoint_fullfsync", "fullfsync",
)


def _fresh_values(names: tuple[str, ...]) -> Mapping[str, Any]:
    """What a fresh connection reads for each of ``names`` (those this SQLite has)."""
    conn = sqlite3.connect(":memory:")
    try:
        out = {}
        for name in names:
            row = conn.execute(f"PRAGMA {name}").fetchone()
            if row is not None:
                out[name] = row[0]
        return MappingProxyType(out)
    finally:
        conn.close()


_FRESH = _fresh_values(RESET_PRAGMAS)  # read once per process; immutable
_OWN = ("busy_timeout", "synchronous")  # set by the reconciler per connection
_TEMP_ACTIONS = {sqlite3.SQLITE_CREATE_TEMP_TABLE, sqlite3.SQLITE_CREATE_TEMP_TRIGGER,
                 sqlite3.SQLITE_CREATE_TEMP_VIEW, sqlite3.SQLITE_CREATE_TEMP_INDEX}
# Set while a step runs: refused (the step fails), with why.
_REFUSED_PRAGMAS = {
    "user_version": "the reconciler sets user_version with the step's number",
    "schema_version": "it can corrupt the database",
    "writable_schema": "it can corrupt the database",
    "journal_mode": "the journal mode belongs to the reconciler and the application",
    "locking_mode": "the locking mode belongs to the reconciler and the application",
    "foreign_keys": "it has no effect inside the step's transaction (foreign keys are "
                    "checked before COMMIT instead)",
    "soft_heap_limit": "it changes every connection of the process",
    "hard_heap_limit": "it changes every connection of the process",
    "temp_store_directory": "it changes every connection of the process",
    "data_store_directory": "it changes every connection of the process",
}
_WRITES = {sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE,
           sqlite3.SQLITE_DROP_TABLE, sqlite3.SQLITE_CREATE_TABLE}
_AUTOROLLBACK = ("SQLite rolled back the step's whole transaction (as it does for a "
                 "constraint declared ON CONFLICT ROLLBACK, RAISE(ROLLBACK, …) in a trigger, "
                 "and disk-full, I/O, busy or interrupt errors)")
MAX_SHOWN = 5  # foreign-key violations named in a message


class StepConnection(sqlite3.Connection):
    """The connection a migration step receives (a ``sqlite3.Connection``).

    ``arm()`` before the migration runs, ``disarm()`` after: in between, the guard
    described in the module docstring is active and records the tables written."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._armed = False
        self.refused: str | None = None  # why the guard refused a statement, first one
        self.last_sql = ""  # the last statement the migration ran (for messages)
        self.hidden_used: str | None = None  # a hidden function a statement named
        self._written: set[str] = set()
        self._functions: set[str] = set()  # registered by the running step (lower case)
        self._hidden: set[str] = set()  # registered by an earlier step: unusable
        self._collations: set[str] = set()
        self._defaults: dict[str, Any] = dict(_FRESH)
        self._set_pragmas: set[str] = set()  # pragmas a step set since the last reset
        self._limits: dict[int, int] = {}  # limits a step changed → their value before
        self._temp = False  # a step may have made temp objects
        super().set_authorizer(self._authorize)

    # -- the guard
    def arm(self) -> None:
        self._armed, self.refused, self._written = True, None, set()
        self.hidden_used = None

    def disarm(self) -> set[str]:
        """Stop guarding; the (lower-case) names of the main tables the step wrote. The
        row and text factories are the defaults again (the reconciler reads rows next)."""
        self._armed = False
        self.row_factory = None
        self.text_factory = str
        return self._written

    def _refuse(self, why: str) -> int:
        if self.refused is None:
            self.refused = why
        return sqlite3.SQLITE_DENY

    def _forbid(self, why: str) -> sqlite3.ProgrammingError:
        """The error for a call a migration may not make; recorded, so the step fails
        even when the migration catches it."""
        if self._armed:
            self._refuse(why)
        return sqlite3.ProgrammingError(why)

    def _authorize(self, action: int, arg1: str | None, arg2: str | None, db: str | None,
                   _source: str | None) -> int:
        if action == sqlite3.SQLITE_FUNCTION and arg2 is not None \
                and arg2.lower() in self._hidden:
            self.hidden_used = arg2
            return sqlite3.SQLITE_DENY  # catchable, as "no such function" would be
        if not self._armed:
            return sqlite3.SQLITE_OK
        if not self.in_transaction:
            return self._refuse(f"{_AUTOROLLBACK}, and the migration went on: "
                                f"`{_short(self.last_sql)}` would have run outside it and was "
                                "refused; nothing of the step was kept")
        if action == sqlite3.SQLITE_TRANSACTION:
            return self._refuse(f"`{_short(self.last_sql)}` ({arg1}) manages the transaction "
                                "itself: the reconciler runs each step in BEGIN IMMEDIATE … "
                                "COMMIT")
        if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
            return self._refuse(f"`{_short(self.last_sql)}` reaches a file outside the tenant's "
                                "database")
        if action in _TEMP_ACTIONS or db == "temp":
            self._temp = True
        if action == sqlite3.SQLITE_PRAGMA and arg1 is not None:
            if arg2 is not None:
                self._set_pragmas.add(arg1.lower())
            why = _REFUSED_PRAGMAS.get(arg1.lower())
            if why is not None and (arg2 is not None or arg1.lower() == "writable_schema"):
                return self._refuse(f"`PRAGMA {arg1} = {arg2}` is not allowed in a "
                                    f"migration: {why}")
        elif db == "main" and arg1 is not None and action in _WRITES:
            self._written.add(arg1.lower())
        elif action == sqlite3.SQLITE_ALTER_TABLE and arg1 == "main" and arg2 is not None:
            self._written.add(arg2.lower())
        return sqlite3.SQLITE_OK

    # -- what a migration may call, guarded or tracked
    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        self.last_sql = sql
        return super().execute(sql, parameters)

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> sqlite3.Cursor:
        self.last_sql = sql
        return super().executemany(sql, self.while_in_transaction(parameters))

    def while_in_transaction(self, rows: Iterable[Any]) -> Iterable[Any]:
        """Rows for a prepared statement, each only while the step's transaction lasts
        (the authorizer saw the statement once, when it was prepared)."""
        for row in rows:
            if self._armed and not self.in_transaction:
                self._refuse(f"{_AUTOROLLBACK}, and executemany went on: `"
                             f"{_short(self.last_sql)}` was refused; nothing of the step was kept")
                raise sqlite3.OperationalError("not authorized: the step's transaction ended")
            yield row

    def cursor(self, factory: Any = None) -> Any:
        return super().cursor(factory or StepCursor)

    def set_authorizer(self, authorizer_callback: Any) -> None:
        raise self._forbid("a migration may not replace the authorizer: the "
                                       "reconciler's guard keeps each step in its transaction")

    def commit(self) -> None:
        raise self._forbid("a migration may not commit: the reconciler commits "
                                       "the step with its user_version")

    def rollback(self) -> None:
        raise self._forbid("a migration may not roll back: raise an exception "
                                       "to fail the step")

    def close(self) -> None:
        if self._armed:
            raise self._forbid("a migration may not close the reconciler's "
                                           "connection")
        super().close()

    def executescript(self, sql_script: str, /) -> sqlite3.Cursor:
        raise self._forbid("executescript COMMITs the step's transaction first: "
                                       "run each statement with conn.execute")

    def deserialize(self, data: Any, /, *, name: str = "main") -> None:
        raise self._forbid("a migration may not replace the tenant's database")

    def _registering(self, name: str) -> None:
        """A migration registers a function: never over a built-in one (it could not be
        given back to the next step), and visible again if an earlier step's was hidden."""
        builtin = super().execute("SELECT 1 FROM pragma_function_list WHERE name = ? "
                                  "AND builtin", (name.lower(),)).fetchone()
        if builtin is not None:
            raise self._forbid(f"a migration may not replace SQLite's built-in function "
                               f"{name}(): give yours another name")
        self._functions.add(name.lower())
        self._hidden.discard(name.lower())

    def create_function(self, name: str, narg: int, func: Any, *,
                        deterministic: bool = False) -> None:
        self._registering(name)
        super().create_function(name, narg, func, deterministic=deterministic)

    def create_aggregate(self, name: str, n_arg: int, aggregate_class: Any) -> None:
        self._registering(name)
        super().create_aggregate(name, n_arg, aggregate_class)

    def create_window_function(self, name: str, num_params: int, aggregate_class: Any,
                               /) -> None:
        self._registering(name)
        super().create_window_function(name, num_params, aggregate_class)

    @property  # type: ignore[override]
    def isolation_level(self) -> str | None:
        return None

    @isolation_level.setter
    def isolation_level(self, value: str | None) -> None:
        if value is not None:
            raise self._forbid("a migration may not change isolation_level: the "
                                           "reconciler manages the step's transaction")

    def setlimit(self, category: int, limit: int, /) -> int:
        previous = super().setlimit(category, limit)
        if self._armed:
            self._limits.setdefault(category, previous)
        return previous

    def enable_load_extension(self, enable: bool, /) -> None:
        raise self._forbid("a migration may not load SQLite extensions")

    def create_collation(self, name: str, callback: Any, /) -> None:
        self._collations.add(name)
        super().create_collation(name, callback)

    # -- state between steps of one transaction
    def remember_defaults(self) -> None:
        """Record the settings the reconciler gave this connection (busy timeout,
        ``synchronous``), which ``reset`` restores with every other pragma's value on a
        fresh connection (called by ``open_step``; again after changing one)."""
        own = {}
        for name in _OWN:
            own[name] = super().execute(f"PRAGMA {name}").fetchone()[0]
        self._defaults = {**_FRESH, **own}

    def reset(self) -> None:
        """Undo what the steps since the last reset changed (the guard recorded which
        pragmas they set and whether they made temp objects); works inside the open
        transaction. Cheap when a step changed nothing."""
        pragmas, self._set_pragmas = self._set_pragmas, set()
        for name in pragmas:
            if name == "case_sensitive_like":  # write-only: set its default
                super().execute("PRAGMA case_sensitive_like = OFF")
            elif name in self._defaults:
                super().execute(f"PRAGMA {name} = {_literal(self._defaults[name])}")
        for category, value in self._limits.items():
            self.setlimit(category, value)
        self._limits = {}
        if self._temp:
            self._temp = False
            temp = super().execute("SELECT type, name FROM temp.sqlite_master "
                                   "WHERE type IN ('trigger', 'view', 'table')").fetchall()
            for kind in ("trigger", "view", "table"):
                for name in (n for k, n in temp if k == kind):
                    super().execute(f"DROP {kind} IF EXISTS temp.{_quote(name)}")
        # Python 3.11 cannot unregister a function: the guard hides it (a statement
        # naming it fails to prepare, as on a fresh connection)
        self._hidden |= self._functions
        for name in self._collations:
            super().create_collation(name, None)
        self._functions, self._collations = set(), set()
        self.set_progress_handler(None, 0)
        self.set_trace_callback(None)


class StepCursor(sqlite3.Cursor):
    """A cursor of a ``StepConnection``: records the statement, checks executemany."""

    def execute(self, sql: str, parameters: Any = (), /) -> StepCursor:
        conn = self.connection
        if isinstance(conn, StepConnection):
            conn.last_sql = sql
        super().execute(sql, parameters)
        return self

    def executemany(self, sql: str, seq_of_parameters: Iterable[Any], /) -> StepCursor:
        conn = self.connection
        if isinstance(conn, StepConnection):
            conn.last_sql = sql
            seq_of_parameters = conn.while_in_transaction(seq_of_parameters)
        super().executemany(sql, seq_of_parameters)
        return self

    def executescript(self, sql_script: str, /) -> StepCursor:
        conn = self.connection
        why = "executescript COMMITs the step's transaction first: run each statement with execute"
        raise conn._forbid(why) if isinstance(conn, StepConnection) else \
            sqlite3.ProgrammingError(why)


def _short(sql: str) -> str:
    text = " ".join(sql.split())
    return text if len(text) <= 60 else text[:59] + "…"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(value: Any) -> str:
    return str(int(value)) if isinstance(value, (int, bool)) else "'" + str(value) + "'"


def main_file(conn: sqlite3.Connection) -> str:
    """The path of ``conn``'s main database file ('' for an in-memory database)."""
    for row in conn.execute("PRAGMA database_list"):
        if row[1] == "main":
            return str(row[2])
    return ""


def open_beside(conn: sqlite3.Connection) -> StepConnection:
    """A fresh step connection to ``conn``'s file, with its busy timeout and
    ``synchronous`` level (the WAL rollout relaxes it to NORMAL)."""
    timeout_ms = int(conn.execute("PRAGMA busy_timeout").fetchone()[0])
    synchronous = int(conn.execute("PRAGMA synchronous").fetchone()[0])
    step = open_step(Path(main_file(conn)), timeout_ms / 1000)
    if synchronous != 2:
        step.execute(f"PRAGMA synchronous = {synchronous}")
        step.remember_defaults()
    return step


def open_step(path: Path | None, busy_timeout: float) -> StepConnection:
    """A step connection to an existing file (never creates one), or to a new in-memory
    database when ``path`` is None (the dry run)."""
    target = ":memory:" if path is None else f"{path.as_uri()}?mode=rw"
    conn = sqlite3.connect(target, uri=path is not None, isolation_level=None,
                           timeout=busy_timeout, check_same_thread=False,
                           cached_statements=0, factory=StepConnection)
    assert isinstance(conn, StepConnection)
    conn.remember_defaults()
    return conn


def execute(conn: StepConnection, migration: Migration) -> None:
    """Run ``migration`` inside ``conn``'s open transaction (never commits).

    Raises ``MigrationError`` when it fails, when the guard refused any of its
    statements (even if the migration caught that error), when the transaction is gone
    afterwards, or when it leaves foreign-key violations; the caller rolls back."""
    conn.arm()
    try:
        migration.run(conn)
    except MigrationError as exc:
        raise _explained(conn, migration, exc.line, exc.reason) from exc
    except SystemExit as exc:
        raise MigrationError(migration, raised_at(exc, migration.path),
                             f"called sys.exit({'' if exc.code is None else repr(exc.code)}): "
                             "a migration must never end the reconciler; raise an exception "
                             "to fail the step") from exc
    except Exception as exc:  # a .py migration's own error: a failed step, with its line
        raise _explained(conn, migration, raised_at(exc, migration.path),
                         f"{type(exc).__name__}: {exc}") from exc
    finally:
        written = conn.disarm()
    if conn.refused is not None:
        raise MigrationError(migration, None, conn.refused)
    if not conn.in_transaction:
        raise MigrationError(migration, None, f"{_AUTOROLLBACK}; nothing of the step was kept")
    bad = foreign_key_violations(conn, written)
    if bad:
        raise MigrationError(migration, None, f"leaves foreign-key violations: {bad} — fix the "
                             "step (copy every parent row the children need, or delete or "
                             "update the orphaned child rows in the same step); nothing of "
                             "the step was kept")


def _explained(conn: StepConnection, migration: Migration, line: int | None,
               reason: str) -> MigrationError:
    if conn.hidden_used is not None and "not authorized" in reason:
        return MigrationError(migration, line, f"no such function: {conn.hidden_used} (an "
                              "earlier step registered it; each step starts from a fresh "
                              "connection — register it in every step that uses it)")
    if conn.refused is not None:
        return MigrationError(migration, line, conn.refused)
    if not conn.in_transaction:
        return MigrationError(migration, line, f"{reason} — {_AUTOROLLBACK}; nothing of the "
                              "step was kept")
    return MigrationError(migration, line, reason)


def foreign_key_violations(conn: sqlite3.Connection, written: set[str] | None = None) -> str:
    """'' when no foreign key is violated, else the first violations, e.g. ``tasks rowid
    2 → projects (3 rows in all)``. With ``written``, only the tables named there and the
    tables whose foreign keys refer to them are checked (what a step can have broken)."""
    if written is not None:
        if not written:
            return ""
        tables = set()
        for child, parent in conn.execute(
                "SELECT m.name, f.\"table\" FROM main.sqlite_master AS m, "
                "pragma_foreign_key_list(m.name) AS f WHERE m.type = 'table'"):
            if child.lower() in written or str(parent).lower() in written:
                tables.add(child)
        rows = [r for t in sorted(tables)
                for r in conn.execute(f"PRAGMA main.foreign_key_check({_quote(t)})")]
    else:
        rows = conn.execute("PRAGMA main.foreign_key_check").fetchall()
    if not rows:
        return ""
    shown = "; ".join(f"{table} rowid {rowid} → {parent}" if rowid is not None else
                      f"{table} (a row without rowid) → {parent}"
                      for table, rowid, parent, _fk in rows[:MAX_SHOWN])
    return shown + (f" ({len(rows)} rows in all)" if len(rows) > MAX_SHOWN else "")



