"""Human durations (``90s``, ``5m``, ``1h30m``, ``7d``) shared by the config and the CLI.

Invariant: ``parse_duration`` returns a finite number of seconds ≥ 0 or raises
``ValueError`` — never NaN or infinity, which ``time.sleep`` and SQLite's busy timeout
cannot take.
"""

from __future__ import annotations

import math
import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w))+")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def parse_duration(text: str | int | float) -> float:
    """Seconds in ``text``; a bare number means seconds; parts may be separated by
    spaces (``1h 30m``). Raises ``ValueError``."""
    if isinstance(text, bool):
        raise ValueError(f"not a duration: {text!r}")
    if isinstance(text, int | float):
        if not math.isfinite(text) or text < 0:
            raise ValueError(f"not a finite duration ≥ 0: {text!r}")
        return float(text)
    s = re.sub(r"\s+", "", text).lower()
    if _NUMBER.fullmatch(s):
        seconds = float(s)
    elif _WHOLE.fullmatch(s):
        seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(s))
    else:
        raise ValueError(f"not a duration: {text!r}")
    if not math.isfinite(seconds):
        raise ValueError(f"duration too large: {text!r}")
    return seconds
