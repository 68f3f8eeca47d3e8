"""``validate``'s dry run: every migration and check applied to an empty in-memory
database, the steps run exactly as on a tenant (``steprun``), in a child process.

Why: a migration that cannot work on any data (a missing table, a bad column) should
fail in CI, not on the canary — every new tenant runs exactly this sequence. It runs
in a child (``supervise``) because a ``.py`` migration may end the process in a way no
``except`` catches (``os._exit``): the dry run must then fail, naming the migration that
was running, never report the catalog "ok".

Invariants: the dry run touches no file; ``isolated`` returns the same problems as
``in_memory`` when the child finishes, and one problem naming the migration when it
does not.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import asdict

from reconciler import steprun, supervise
from reconciler.errors import Problem
from reconciler.migrations import Catalog, MigrationError, dry_run_checks


def in_memory(catalog: Catalog, note: Callable[[str], None] | None = None) -> list[Problem]:
    """Problems of the dry run, run in this process; ``note(version)`` is called
    before each step."""
    problems: list[Problem] = []
    conn = steprun.open_step(None, 0.0)
    try:
        for m in catalog.migrations:
            if note is not None:
                note(str(m.version))
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.reset()
                steprun.execute(conn, m)
                conn.execute(f"PRAGMA user_version = {m.version}")
                conn.execute("COMMIT")
            except (MigrationError, sqlite3.Error) as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                line, msg = (exc.line, exc.reason) if isinstance(exc, MigrationError) else \
                    (None, f"{type(exc).__name__}: {exc}")
                problems.append(Problem(str(m.path), line, 1 if line else None,
                                        f"fails on an empty database: {msg}",
                                        "fix it: every new tenant runs the migrations in order "
                                        "from 0001 on an empty file"))
                return problems
            conn.reset()
            problems.extend(dry_run_checks(conn, catalog, m.version))
        return problems
    finally:
        conn.close()


def isolated(catalog: Catalog) -> list[Problem]:
    """``in_memory`` in a child process; a child that ends without answering is a
    problem at the migration it was running."""
    def work(note: Callable[[str], None]) -> str:
        return json.dumps([asdict(p) for p in in_memory(catalog, note)])

    answer, ended, notes = supervise.in_child(work)
    if answer is not None:
        return [Problem(**p) for p in json.loads(answer)]
    assert ended is not None
    by_version = {str(m.version): m for m in catalog.migrations}
    running = by_version.get(notes[-1]) if notes else None
    where = str(running.path) if running is not None else str(catalog.directory)
    return [Problem(where, None, None, f"ended the process during the dry run (it "
                    f"{ended.describe()}) — a migration must never end the reconciler",
                    "remove the exit (os._exit, os.abort, os.kill …); raise an exception to "
                    "fail the step")]

