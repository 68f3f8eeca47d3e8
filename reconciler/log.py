"""Structured logging: JSON lines for machines, readable lines on a terminal.

Why: every action the reconciler takes must be visible in ``journalctl`` and greppable
by tenant, action and revision. structlog does the formatting; this module only picks
the renderer (``--log-format console|json``, default: console on a terminal).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog


def configure(fmt: str | None = None, level: str = "info") -> Any:
    """Configure structlog for this process and return a logger. Logs go to stderr."""
    if fmt is None:
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    return structlog.get_logger("reconciler")
