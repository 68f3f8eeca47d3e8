"""Counts in words: ``1 problem``, ``2 problems``, ``9,812 tenants``.

Why: every summary the reconciler prints says how many of something there are, and a
wrong plural ("1 problems") or an unreadable large number ("9812") is the first thing a
reader notices. One helper keeps every message consistent.
"""

from __future__ import annotations

from collections.abc import Sequence


def count(n: int) -> str:
    """``n`` with thousands separators: ``9,812``."""
    return f"{n:,}"


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 tenant``, ``0 tenants``, ``9,812 tenants``; ``many`` for irregular plurals
    (``plural(2, "registry correction")`` → ``2 registry corrections``)."""
    return f"{count(n)} {word if n == 1 else many or word + 's'}"


def names(items: Sequence[str], limit: int = 6) -> str:
    """At most ``limit`` names: ``a, b, c, d, e, … z`` (the first ones and the last)."""
    if len(items) <= limit:
        return ", ".join(items)
    return ", ".join(items[:limit - 1]) + f", … {items[-1]}"
