"""Structured logging: JSON lines for machines, readable lines on a terminal.

Why: every action the reconciler takes must be visible in ``journalctl`` and greppable
by tenant, action and revision. structlog does the formatting; this module only picks
the renderer (``--log-format console|json``, default: console on a terminal).

The logger is built, not configured globally: structlog's process-wide configuration is
mutable state that one caller (a test, an embedding application) would change for all.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from reconciler import terminal
from reconciler.revision import short


def configure(fmt: str | None = None, level: str = "info", per_tenant: bool = True) -> Any:
    """A logger writing to stderr in ``fmt`` at ``level`` (no global configuration).

    ``per_tenant=False`` drops events about one tenant (those with a ``tenant`` field):
    on a terminal the result summary reports them, and ``reconcile history`` keeps them
    all; fleet-wide events (waiting for the lock, a halted rollout) still show."""
    if fmt is None:
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    else:  # for a person: the revision in the short form every other output uses
        renderer = _ShortRevision(structlog.dev.ConsoleRenderer(
            colors=terminal.colour_wanted(sys.stderr)))
    return structlog.wrap_logger(
        structlog.PrintLogger(sys.stderr),
        processors=[
            *(() if per_tenant else (_drop_tenant_events,)),
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]),
    )


class _ShortRevision:
    """Shows ``revision`` as ``revision.short`` does before rendering; JSON lines keep the
    full value, which is what ``jq`` filters and the events table compare with."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __call__(self, logger: Any, method: str, event: dict[str, Any]) -> Any:
        if isinstance(event.get("revision"), str):
            event["revision"] = short(event["revision"])
        return self._inner(logger, method, event)


def _drop_tenant_events(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    if event.get("tenant") is not None:
        raise structlog.DropEvent
    return event
