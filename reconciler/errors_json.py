"""Errors as JSON objects, for ``--json`` runs: scripts parse stdout, never stderr text.

Why: a CI job or a wrapper that asked for ``--json`` must be able to tell "the plan has
changes" from "tenants.yaml is invalid at line 7" without scraping human text. Under
``--json`` every error is one object on stdout; the exit code is the same as without it.

Shape (every field always present; ``problems`` empty unless the input was invalid)::

    {"ok": false, "error": "invalid_input" | "lock_held" | "retryable_error" |
     "permanent_error" | "routing_error" | "usage" | "interrupted" | "<snake_case class>",
     "message": "one line a person can read",
     "problems": [{"file": str, "line": int | null, "column": int | null,
                   "message": str, "hint": str}]}
"""

from __future__ import annotations

import re
from typing import Any

from reconciler.errors import InvalidInput, ReconcileError
from reconciler.wording import plural


def invalid(exc: InvalidInput) -> dict[str, Any]:
    return _shape("invalid_input", f"invalid input — nothing was changed "
                  f"({plural(len(exc.problems), 'problem')})",
                  [{"file": p.file, "line": p.line, "column": p.column, "message": p.message,
                    "hint": p.hint} for p in exc.problems])


def error(exc: ReconcileError) -> dict[str, Any]:
    """``LockHeld`` → ``lock_held``: the class name in snake case names the error."""
    kind = re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()
    return _shape(kind, str(exc))


def usage(message: str) -> dict[str, Any]:
    return _shape("usage", message)


def interrupted() -> dict[str, Any]:
    return _shape("interrupted", "interrupted")


def _shape(kind: str, message: str, problems: list[dict[str, Any]] | None = None
           ) -> dict[str, Any]:
    return {"ok": False, "error": kind, "message": message, "problems": problems or []}
