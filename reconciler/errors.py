"""The error hierarchy: what went wrong, and what the caller should do about it.

Three families, because the daemon must react differently to each:

* ``InvalidInput`` — the operator's files are wrong. Nothing was changed; retrying
  without an edit is pointless. Carries every ``Problem`` found, each located at
  ``file:line:column`` with a hint saying what to write instead.
* ``RetryableError`` — a transient fault (a tenant's database is busy, an I/O hiccup).
  Back off and try again; nothing was half-done.
* ``PermanentError`` — an action failed and will fail again until someone changes
  something (a migration that breaks on a tenant's data). Isolated to that tenant.

``LockHeld`` is its own case: another reconciler is acting on the fleet.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One located validation error."""

    file: str
    line: int | None
    column: int | None
    message: str
    hint: str = ""

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        text = f"{where}: {self.message}"
        if self.hint:
            text += f" — {self.hint}"
        return text


class ReconcileError(Exception):
    """Base of every error the reconciler raises on purpose."""


class InvalidInput(ReconcileError):
    """The desired state or the migrations are invalid; nothing was changed."""

    def __init__(self, problems: list[Problem] | tuple[Problem, ...]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class RetryableError(ReconcileError):
    """A transient fault: back off and try again."""


class PermanentError(ReconcileError):
    """An action failed in a way that retrying without a change will not fix."""


def is_busy(exc: sqlite3.OperationalError) -> bool:
    """The error means another connection holds a lock we need (retry, not fail)."""
    text = str(exc)
    return "locked" in text or "busy" in text


class LockHeld(ReconcileError):
    """Another reconciler holds the fleet lock."""

    def __init__(self, lock_path: str, holder: str) -> None:
        self.lock_path = lock_path
        self.holder = holder
        super().__init__(
            f"another reconciler is acting on this fleet ({holder}, lock {lock_path}); "
            "wait for it to finish, or run without --no-wait to queue behind it"
        )
