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


def configure(fmt: str | None = None, level: str = "info") -> Any:
    """A logger writing to stderr in ``fmt`` at ``level`` (no global configuration)."""
    if fmt is None:
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    return structlog.wrap_logger(
        structlog.PrintLogger(sys.stderr),
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]),
    )
