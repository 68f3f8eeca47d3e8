"""Schema versions the migrations know, and what to say about the ones they do not.

Why: SQLite's ``PRAGMA user_version`` is a signed 32-bit integer, so a file brought in
from elsewhere can say ``-1`` or ``2147483647``. Only ``0…latest`` means a schema here
(DESIGN §3); any other value must never index the catalog (``migrations[-1]`` is the
last step) and must be reported, naming the file and its version, with what to do.
These are the words every route (plan, restore, a migration's own re-read under its
lock) uses, so the reason is the same wherever it is met.
"""

from __future__ import annotations


class UnknownVersion(ValueError):
    """A ``user_version`` outside 0…latest was about to index the catalog."""

    def __init__(self, version: int, latest: int) -> None:
        self.version = version
        self.latest = latest
        super().__init__(unknown_version(version, latest))


def unknown_version(version: int, latest: int) -> str:
    """Why ``version`` is not one the migrations know (for a file said to be at it).

    SQLite's ``user_version`` is a signed 32-bit integer, so a file can say -1 or
    2147483647; only 0…latest mean a schema here."""
    if version < 0:
        return (f"is at schema version {version} (PRAGMA user_version), which no migration "
                f"produces: the migrations know 0…{latest}, and a negative version was set "
                "by something other than this reconciler")
    return (f"is at schema version {version} (PRAGMA user_version), beyond the latest "
            f"migration v{latest}: it belongs to a newer schema than these migrations know")


def unknown_version_hint(version: int, latest: int) -> str:
    """What to do about a file at a version the migrations do not know."""
    if version < 0:
        return ("find out what set that version, and if the file's schema is that of "
                "migration N, set `PRAGMA user_version = N` on it yourself")
    return (f"deploy the migrations up to v{version} (check out the newer revision), or "
            f"use a copy at v0…v{latest}")
