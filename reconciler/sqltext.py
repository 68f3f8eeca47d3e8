"""SQL text of migrations and checks: statements, what kind they are, and what is refused.

Why a module of its own: every SQL file is split into statements here rather than run
with ``executescript`` (which would COMMIT the caller's transaction first), and the
statements that would break "one migration, one transaction" are recognised from the
text; the catalog (``migrations``) only loads files and puts the results together.

Invariants: splitting keeps a ``CREATE TRIGGER … END``, strings, quoted names and
comments holding ``;`` whole (SQLite's ``complete_statement`` decides) and runs in
linear time; every ``Statement`` carries the 1-based line of its first SQL character;
a syntax error is found by compiling on an empty in-memory database (``EXPLAIN``), so
no file is touched; problems are appended to the caller's list, never raised.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from reconciler.errors import Problem

_SYNTAX = re.compile(r'^(near "(?P<near>.*)": syntax error|unrecognized token: "(?P<tok>.*)"'
                     r"|incomplete input)", re.DOTALL)


@dataclass(frozen=True)
class Statement:
    line: int  # 1-based line of the statement's first SQL character in its file
    sql: str


def split_statements(text: str) -> list[Statement]:
    """Split SQL into complete statements, each with the line of its first SQL character
    (leading comments are dropped). ``CREATE TRIGGER … BEGIN …; …; END;``, strings and
    comments holding ``;`` stay whole: SQLite's own ``complete_statement`` decides."""
    parts = _split(text)
    return [Statement(line, sql)
            for line, (_start, sql) in zip(_lines_of(text, parts), parts, strict=True)]


def _split(text: str) -> list[tuple[int, str]]:
    """(offset of the first SQL character, statement text) for each statement.

    Only a ``;`` outside strings, quoted names and comments is offered to
    ``complete_statement`` (which still decides about trigger bodies), so a statement
    with many semicolons inside its strings costs linear, not quadratic, time."""
    out: list[tuple[int, str]] = []
    start = i = 0
    n = len(text)
    closers = {"'": "'", '"': '"', "`": "`", "[": "]"}
    while i < n:
        ch = text[i]
        if ch in closers:
            close = text.find(closers[ch], i + 1)
            i = n if close < 0 else close + 1  # '' and "" escapes re-enter the same branch
            continue
        if text.startswith("--", i):
            nl = text.find("\n", i)
            i = n if nl < 0 else nl + 1
            continue
        if text.startswith("/*", i):
            close = text.find("*/", i + 2)
            i = n if close < 0 else close + 2
            continue
        if ch == ";" and sqlite3.complete_statement(text[start : i + 1]):
            _append(out, text, start, i + 1)
            start = i + 1
        i += 1
    _append(out, text, start, n)
    return out


def _append(out: list[tuple[int, str]], text: str, start: int, end: int) -> None:
    begin = _skip_blank(text, start, end)
    sql = text[begin:end].strip()
    if sql and sql != ";":
        out.append((begin, sql))


def _skip_blank(text: str, pos: int, end: int) -> int:
    """First position at or after ``pos`` that is neither whitespace nor a comment."""
    while pos < end:
        if text[pos].isspace():
            pos += 1
        elif text.startswith("--", pos):
            nl = text.find("\n", pos, end)
            pos = end if nl < 0 else nl + 1
        elif text.startswith("/*", pos):
            close = text.find("*/", pos + 2, end)
            pos = end if close < 0 else close + 2
        else:
            break
    return pos


def _lines_of(text: str, parts: list[tuple[int, str]]) -> list[int]:
    """The line of each part's start, in one pass (parts are in text order)."""
    out: list[int] = []
    line, last = 1, 0
    for start, _sql in parts:
        line += text.count("\n", last, start)
        last = start
        out.append(line)
    return out


def line_at(text: str, offset: int) -> int:
    """The 1-based line of character ``offset`` in ``text``."""
    return text.count("\n", 0, offset) + 1


def col_at(text: str, offset: int) -> int:
    """The 1-based column of character ``offset`` in ``text``."""
    return offset - (text.rfind("\n", 0, offset) + 1) + 1


def sql_words(sql: str) -> str:
    """The statement upper-cased with comments, string literals and runs of spaces
    collapsed — enough to recognise what kind of statement it is."""
    s = re.sub(r"--[^\n]*|/\*.*?(\*/|$)", " ", sql, flags=re.DOTALL)
    s = re.sub(r"'(?:[^']|'')*'?", "''", s)
    return re.sub(r"\s+", " ", s).strip().upper()


_REJECT: tuple[tuple[re.Pattern[str], str, str], ...] = (
    (re.compile(r"^(BEGIN|COMMIT|END|ROLLBACK(?! (TRANSACTION )?TO\b))\b"),
     "manages the transaction itself",
     "remove it: the reconciler runs each migration in its own BEGIN IMMEDIATE … COMMIT"),
    (re.compile(r"^PRAGMA (\w+ ?\. ?)?USER_VERSION ?[=(]"),
     "sets user_version",
     "remove it: the reconciler sets user_version to the migration's number in the same "
     "transaction"),
    (re.compile(r"^VACUUM\b"), "cannot run inside a transaction",
     "remove it: run VACUUM out of band if the file needs compacting"),
    (re.compile(r"^(ATTACH|DETACH)\b"),
     "cannot run inside a transaction and would reach a file outside the tenant's database",
     "remove it: a migration changes only its own tenant's database"),
    (re.compile(r"^PRAGMA (\w+ ?\. ?)?(JOURNAL_MODE|LOCKING_MODE) ?[=(]"),
     "cannot change inside a transaction",
     "remove it: the journal mode belongs to the reconciler and the application"),
    (re.compile(r"^PRAGMA (\w+ ?\. ?)?FOREIGN_KEYS ?[=(]"),
     "has no effect inside a transaction",
     "remove it: migrations run with foreign keys off, and the reconciler checks them "
     "before each step's COMMIT (a step that leaves orphaned rows fails)"),
    (re.compile(r"^PRAGMA (\w+ ?\. ?)?(SCHEMA_VERSION|WRITABLE_SCHEMA) ?[=(]"),
     "can corrupt the database",
     "remove it: change tables with ALTER TABLE, or create-copy-drop-rename"),
)


def rejection(sql: str) -> tuple[str, str] | None:
    """(why, hint) when ``sql`` is a statement a migration may not run, else None."""
    words = sql_words(sql)
    for pattern, why, hint in _REJECT:
        if pattern.match(words):
            return why, hint
    return None


def _syntax_problems(path: Path, text: str, parts: list[tuple[int, str]],
                     problems: list[Problem]) -> bool:
    """Report SQL that SQLite cannot parse (compiling with EXPLAIN on an empty scratch
    database: parse errors come before name resolution, so "no such table" — expected
    when the tables come from earlier migrations — is not a syntax error here)."""
    conn = sqlite3.connect(":memory:")
    try:
        for start, sql in parts:
            if sql_words(sql).startswith("EXPLAIN"):
                continue
            try:
                conn.execute(f"EXPLAIN {sql}")
            except sqlite3.Error as exc:
                m = _SYNTAX.match(str(exc))
                if m is None:
                    continue
                token = m.group("near") or m.group("tok")
                at = sql.find(token) if token else -1
                offset = start + (at if at >= 0 else len(sql) if token is None else 0)
                problems.append(Problem(str(path), line_at(text, offset),
                                        col_at(text, offset), f"SQL syntax error: {exc}",
                                        "fix the statement (check commas, parentheses, "
                                        "quotes and keywords)"))
                return False
        return True
    finally:
        conn.close()


def sql_statements(path: Path, text: str, problems: list[Problem],
                    what: str) -> tuple[Statement, ...] | None:
    """The statements of a ``what`` ("migration" or "check") file's ``text``, or None
    after appending to ``problems`` why it cannot run: empty, incomplete, a refused
    statement (``rejection``) or a syntax error. A migration of closed comments only is
    ``()``, a no-op step."""
    parts = _split(text)
    if not parts and what == "migration" and ("--" in text or "/*" in text):
        # comments only: a step that is empty for SQLite (a numbering shared with other
        # engines) is a valid no-op that moves user_version — if its comments are closed
        if not sqlite3.complete_statement(text.rstrip() + "\n;"):
            at = text.rfind("/*")
            problems.append(Problem(str(path), line_at(text, at), col_at(text, at),
                                    "incomplete SQL: the file ends inside a /* comment",
                                    "close it with */"))
            return None
        return ()
    if not parts:
        problems.append(Problem(str(path), 1, 1, f"{what} is empty",
                                "write at least one SQL statement, or a comment saying why "
                                "this step does nothing (`-- nothing to do: …`), which makes "
                                "it a no-op that only moves user_version"
                                if what == "migration" else
                                "write a SELECT that returns no rows when the tenant is "
                                "healthy"))
        return None
    if not sqlite3.complete_statement(text.rstrip() + "\n;"):
        start, _ = parts[-1]
        problems.append(Problem(str(path), line_at(text, start), col_at(text, start),
                                "incomplete SQL: the file ends inside a string, a /* comment "
                                "or a CREATE TRIGGER without END",
                                "close every string, comment and CREATE TRIGGER … END;"))
        return None
    ok = True
    for start, sql in parts:
        rejected = rejection(sql)
        if rejected is not None:
            why, hint = rejected
            problems.append(Problem(str(path), line_at(text, start), col_at(text, start),
                                    f"statement `{first_words(sql)}` {why}", hint))
            ok = False
    if not ok or not _syntax_problems(path, text, parts, problems):
        return None
    return tuple(Statement(line, sql)
                 for line, (_start, sql) in zip(_lines_of(text, parts), parts, strict=True))


def first_words(sql: str) -> str:
    """The start of a statement as written, on one line, for messages."""
    text = re.sub(r"\s+", " ", sql).strip()
    return text if len(text) <= 40 else text[:39].rstrip() + "…"
