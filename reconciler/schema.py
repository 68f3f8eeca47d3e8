"""A database's schema as a structural fingerprint, and the differences between two.

Why: ``user_version`` says which migrations ran, not that the schema is what they
built (DESIGN §3, "one version means one schema"). An index added by hand, a column
"fixed" by support, a file restored from an older build: from then on the tenant's
version lies. Comparing a tenant's structure with the reference the catalog builds for
its version finds that. There is no well-kept Python library for SQLite schema
comparison, so this builds on SQLite's own PRAGMAs (``table_list``, ``table_xinfo``,
``index_list``, ``index_xinfo``, ``foreign_key_list``) — the parsed schema SQLite itself
uses — rather than on SQL text.

Rules (also in README, "Schema drift"):
* compared: tables (columns in order, with type, NOT NULL, default, primary-key position
  and hidden/generated kind; UNIQUE constraints; foreign keys; WITHOUT ROWID; STRICT),
  indexes (table, key columns with order and collation, UNIQUE, partial ``WHERE``),
  triggers and views (their SQL, normalised), virtual tables (module and arguments);
* not compared: SQLite's internal objects (``sqlite_%``), Litestream's two tables,
  virtual tables' shadow tables (their module builds them), the text of CHECK
  constraints, column collations and generated-column expressions (no PRAGMA exposes
  them), rows;
* names are compared case-insensitively (as SQLite resolves them); SQL fragments
  (defaults, WHERE clauses, trigger and view bodies) are normalised: comments dropped,
  whitespace collapsed, keywords and simple identifiers lowercased, identifier quoting
  (``"x"``, ``[x]``, `` `x` ``) removed where the name needs none; string literals are
  kept exactly.

Invariants: a ``Schema`` is immutable and built only by ``read`` (from a connection);
``compare`` is a pure function of two of them and returns differences in a stable
order (tables, then indexes, triggers, views; by name). Identical ``sqlite_master``
contents give identical fingerprints, so ``master_digest`` lets a caller skip ``read``
for files whose schema text it has already judged.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from dataclasses import dataclass, field
from typing import Any

# --------------------------------------------------------------------------- SQL text

_TOKEN = re.compile(r"""
    '(?:[^']|'')*'?              # string literal (kept as written)
  | "(?:[^"]|"")*"?              # quoted identifier
  | `(?:[^`]|``)*`?
  | \[[^\]]*\]?
  | --[^\n]*                     # comments: dropped
  | /\*.*?(?:\*/|\Z)
  | [A-Za-z_\x80-\uffff][A-Za-z0-9_$\x80-\uffff]*
  | [0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|\.[0-9]+(?:[eE][+-]?[0-9]+)?
  | \|\||<<|>>|<=|>=|==|!=|<>|->>|->
  | \S
""", re.VERBOSE | re.DOTALL)
_SIMPLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def tokens(sql: str) -> list[str]:
    """``sql`` as normalised tokens (see the module's rules)."""
    out: list[str] = []
    for tok in _TOKEN.findall(sql):
        first = tok[0]
        if tok.startswith("--") or tok.startswith("/*"):
            continue
        if first in "\"`[":
            inner = tok[1:-1] if len(tok) > 1 else ""
            if first == '"':
                inner = inner.replace('""', '"')
            elif first == "`":
                inner = inner.replace("``", "`")
            out.append(inner.lower() if _SIMPLE.match(inner) else
                       '"' + inner.replace('"', '""') + '"')
        elif first == "'":
            out.append(tok)
        else:
            out.append(tok.lower())
    return out


def normalise(sql: str | None) -> str | None:
    """Whitespace, comments, case and quoting normalised; None stays None."""
    return None if sql is None else " ".join(tokens(sql))


def _after_parens(toks: list[str]) -> tuple[list[str], list[str]]:
    """(the tokens inside the first top-level parentheses, the tokens after them)."""
    try:
        start = toks.index("(")
    except ValueError:
        return [], []
    depth = 0
    for i in range(start, len(toks)):
        if toks[i] == "(":
            depth += 1
        elif toks[i] == ")":
            depth -= 1
            if depth == 0:
                return toks[start + 1:i], toks[i + 1:]
    return toks[start + 1:], []


def _split_commas(toks: list[str]) -> list[str]:
    parts: list[list[str]] = [[]]
    depth = 0
    for t in toks:
        if t == "(":
            depth += 1
        elif t == ")":
            depth -= 1
        if t == "," and depth == 0:
            parts.append([])
        else:
            parts[-1].append(t)
    return [" ".join(p) for p in parts]


def quote(name: str) -> str:
    """``name`` as an SQL identifier (quoted only when it needs it)."""
    return name if _SIMPLE.match(name) else '"' + name.replace('"', '""') + '"'


# --------------------------------------------------------------------------- values


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # declared type, upper case, normalised ('' when none)
    notnull: bool
    default: str | None  # the default's SQL, normalised
    pk: int  # position in the primary key (1-based), 0 when not part of it
    hidden: int  # table_xinfo: 0 normal, 1 hidden, 2 generated virtual, 3 generated stored

    def definition(self) -> str:
        """The column as ``ALTER TABLE … ADD COLUMN`` would take it (for repair hints)."""
        out = quote(self.name) + (f" {self.type}" if self.type else "")
        if self.notnull:
            out += " NOT NULL"
        if self.default is not None:
            out += f" DEFAULT {self.default}"
        return out

    def describe(self) -> str:
        parts = [self.type or "(no type)"]
        if self.notnull:
            parts.append("NOT NULL")
        if self.default is not None:
            parts.append(f"DEFAULT {self.default}")
        if self.pk:
            parts.append(f"PRIMARY KEY#{self.pk}")
        if self.hidden:
            parts.append({1: "HIDDEN", 2: "GENERATED VIRTUAL", 3: "GENERATED STORED"}.get(
                self.hidden, f"hidden={self.hidden}"))
        return " ".join(parts)


@dataclass(frozen=True)
class ForeignKey:
    columns: tuple[str, ...]
    table: str
    refs: tuple[str | None, ...]  # None: the referenced table's primary key
    on_update: str
    on_delete: str
    match: str

    def describe(self) -> str:
        refs = ", ".join(r or "<pk>" for r in self.refs)
        out = f"({', '.join(self.columns)}) → {self.table}({refs})"
        for what, v in (("ON UPDATE", self.on_update), ("ON DELETE", self.on_delete)):
            if v != "NO ACTION":
                out += f" {what} {v}"
        return out


@dataclass(frozen=True)
class Table:
    name: str
    virtual: bool
    columns: tuple[Column, ...]
    foreign_keys: tuple[ForeignKey, ...] = ()  # sorted
    unique: tuple[tuple[str, ...], ...] = ()  # UNIQUE constraints' columns, sorted
    without_rowid: bool = False
    strict: bool = False
    module: str | None = None  # virtual tables: "using fts5 ( x )", normalised
    sql: str = field(default="", compare=False)  # as stored (repair hints only)


@dataclass(frozen=True)
class Index:
    name: str
    table: str
    columns: tuple[str, ...]  # "name [desc] [collate x]", or a normalised expression
    unique: bool
    where: str | None  # partial index condition, normalised
    sql: str = field(default="", compare=False)


@dataclass(frozen=True)
class Code:
    """A trigger or a view: compared by its normalised SQL."""

    name: str
    table: str
    text: str  # normalised SQL
    sql: str = field(default="", compare=False)


@dataclass(frozen=True)
class Schema:
    tables: tuple[Table, ...] = ()
    indexes: tuple[Index, ...] = ()
    triggers: tuple[Code, ...] = ()
    views: tuple[Code, ...] = ()


@dataclass(frozen=True)
class Difference:
    """One way a tenant's schema differs from its reference.

    ``change``: ``extra`` (only in the tenant), ``missing`` (only in the reference) or
    ``changed``; ``what``: table, virtual table, column, index, trigger, view;
    ``name``: the object (``table.column`` for columns); ``detail``: how it changed;
    ``repair``: SQL (or an SQL comment) a person could run to repair it — never run."""

    change: str
    what: str
    name: str
    detail: str = ""
    repair: str = ""

    def summary(self) -> str:
        if self.change == "extra":
            return f"extra {self.what} {self.name}"
        if self.change == "missing":
            return f"{self.name} missing" if self.what == "column" else \
                f"{self.what} {self.name} missing"
        return f"{self.name}: {self.detail}" if self.what == "column" else \
            f"{self.what} {self.name} changed ({self.detail})"

    def as_json(self) -> dict[str, str]:
        return {"change": self.change, "what": self.what, "name": self.name,
                "detail": self.detail, "repair": self.repair, "summary": self.summary()}

    @staticmethod
    def from_json(d: dict[str, Any]) -> Difference:
        return Difference(str(d["change"]), str(d["what"]), str(d["name"]),
                          str(d.get("detail", "")), str(d.get("repair", "")))


def summary(diffs: tuple[Difference, ...] | list[Difference], limit: int = 4) -> str:
    """``extra index notes_by_day; notes.color missing`` (the first ``limit``, then a count)."""
    shown = "; ".join(d.summary() for d in diffs[:limit])
    more = len(diffs) - limit
    return shown + (f"; … {more} more" if more > 0 else "")


# --------------------------------------------------------------------------- comparing


def compare(reference: Schema, actual: Schema) -> tuple[Difference, ...]:
    """How ``actual`` differs from ``reference`` (empty when they match). Pure."""
    out: list[Difference] = []
    ref_t = {t.name: t for t in reference.tables}
    act_t = {t.name: t for t in actual.tables}
    for name in sorted(ref_t.keys() | act_t.keys()):
        r, a = ref_t.get(name), act_t.get(name)
        if a is None and r is not None:
            out.append(Difference("missing", _kind(r), name, repair=_stmt(r.sql)))
        elif r is None and a is not None:
            out.append(Difference("extra", _kind(a), name, repair=(
                f"-- extra {_kind(a)} {name}: check whose data it holds; "
                f"DROP TABLE {quote(name)}; only if nobody needs it")))
        elif r is not None and a is not None and r != a:
            out.extend(_table_diffs(r, a))
    for what, ref_objs, act_objs in (("index", reference.indexes, actual.indexes),
                                     ("trigger", reference.triggers, actual.triggers),
                                     ("view", reference.views, actual.views)):
        out.extend(_object_diffs(what, ref_objs, act_objs))
    return tuple(out)


def _kind(t: Table) -> str:
    return "virtual table" if t.virtual else "table"


def _stmt(sql: str) -> str:
    return sql.rstrip().rstrip(";") + ";" if sql else ""


_REBUILD = ("-- rebuild {t} to the reference shape: create the reference table under a new "
            "name, copy the rows, drop {t}, rename the new one "
            "(https://www.sqlite.org/lang_altertable.html#otheralter)")


def _table_diffs(r: Table, a: Table) -> list[Difference]:
    out: list[Difference] = []
    name = r.name
    rebuild = _REBUILD.format(t=quote(name))
    if r.virtual != a.virtual or r.module != a.module:
        return [Difference("changed", _kind(r), name,
                           f"{a.module or 'a table'} (reference: {r.module or 'a table'})",
                           f"-- recreate {quote(name)} as in the reference: {_stmt(r.sql)}")]
    rc = {c.name: c for c in r.columns}
    ac = {c.name: c for c in a.columns}
    for c in r.columns:
        if c.name not in ac:
            simple = not c.pk and not c.hidden and (not c.notnull or c.default is not None)
            out.append(Difference("missing", "column", f"{name}.{c.name}", c.describe(),
                                  f"ALTER TABLE {quote(name)} ADD COLUMN {c.definition()};"
                                  if simple else rebuild))
    for c in a.columns:
        if c.name not in rc:
            out.append(Difference("extra", "column", f"{name}.{c.name}", c.describe(),
                                  f"ALTER TABLE {quote(name)} DROP COLUMN {quote(c.name)};"
                                  " -- only if nobody needs its data"))
    for c in r.columns:
        other = ac.get(c.name)
        if other is not None and other != c:
            out.append(Difference("changed", "column", f"{name}.{c.name}",
                                  _column_change(c, other), rebuild))
    common_r = [c.name for c in r.columns if c.name in ac]
    common_a = [c.name for c in a.columns if c.name in rc]
    if common_r != common_a:
        out.append(Difference("changed", "table", name,
                              f"column order {', '.join(common_a)} (reference: "
                              f"{', '.join(common_r)})", rebuild))
    for label, rv, av in (("WITHOUT ROWID", r.without_rowid, a.without_rowid),
                          ("STRICT", r.strict, a.strict)):
        if rv != av:
            out.append(Difference("changed", "table", name,
                                  f"{label} {'off' if rv else 'on'} (reference: "
                                  f"{'on' if rv else 'off'})", rebuild))
    for fk in sorted(set(r.foreign_keys) - set(a.foreign_keys), key=ForeignKey.describe):
        out.append(Difference("changed", "table", name, f"foreign key {fk.describe()} missing",
                              rebuild))
    for fk in sorted(set(a.foreign_keys) - set(r.foreign_keys), key=ForeignKey.describe):
        out.append(Difference("changed", "table", name, f"extra foreign key {fk.describe()}",
                              rebuild))
    for u in sorted(set(r.unique) - set(a.unique)):
        out.append(Difference("changed", "table", name, f"UNIQUE ({', '.join(u)}) missing",
                              rebuild))
    for u in sorted(set(a.unique) - set(r.unique)):
        out.append(Difference("changed", "table", name, f"extra UNIQUE ({', '.join(u)})",
                              rebuild))
    return out


def _column_change(r: Column, a: Column) -> str:
    parts = []
    if r.type != a.type:
        parts.append(f"type {a.type or '(none)'} (reference: {r.type or '(none)'})")
    if r.notnull != a.notnull:
        parts.append(f"{'NOT NULL' if a.notnull else 'nullable'} (reference: "
                     f"{'NOT NULL' if r.notnull else 'nullable'})")
    if r.default != a.default:
        parts.append(f"default {a.default if a.default is not None else 'none'} (reference: "
                     f"{r.default if r.default is not None else 'none'})")
    if r.pk != a.pk:
        parts.append(f"primary key position {a.pk} (reference: {r.pk})")
    if r.hidden != a.hidden:
        parts.append(f"hidden/generated {a.hidden} (reference: {r.hidden})")
    return "; ".join(parts)


def _object_diffs(what: str, ref: tuple[Index, ...] | tuple[Code, ...],
                  act: tuple[Index, ...] | tuple[Code, ...]) -> list[Difference]:
    out: list[Difference] = []
    rm: dict[str, Index | Code] = {o.name: o for o in ref}
    am: dict[str, Index | Code] = {o.name: o for o in act}
    drop = {"index": "DROP INDEX", "trigger": "DROP TRIGGER", "view": "DROP VIEW"}[what]
    for name in sorted(rm.keys() | am.keys()):
        r, a = rm.get(name), am.get(name)
        if a is None and r is not None:
            out.append(Difference("missing", what, name, repair=_stmt(r.sql)))
        elif r is None and a is not None:
            out.append(Difference("extra", what, name, repair=f"{drop} {quote(name)};"))
        elif r is not None and a is not None and r != a:
            out.append(Difference("changed", what, name, _object_change(r, a),
                                  f"{drop} {quote(name)}; {_stmt(r.sql)}"))
    return out


def _object_change(r: Index | Code, a: Index | Code) -> str:
    if isinstance(r, Index) and isinstance(a, Index):
        parts = []
        if r.table != a.table:
            parts.append(f"on {a.table} (reference: {r.table})")
        if r.columns != a.columns:
            parts.append(f"columns ({', '.join(a.columns)}) (reference: "
                         f"({', '.join(r.columns)}))")
        if r.unique != a.unique:
            parts.append("UNIQUE" if a.unique else "not UNIQUE")
        if r.where != a.where:
            parts.append(f"WHERE {a.where or '(none)'} (reference: {r.where or '(none)'})")
        return "; ".join(parts)
    return "its SQL differs"


# --------------------------------------------------------------------------- reading


# Not the schema a catalog builds: SQLite's internal objects, and the two bookkeeping
# tables Litestream adds to every file it replicates (``backup.LITESTREAM_TABLES``;
# named here too, so this module imports nothing with I/O).
_OURS = ("name NOT LIKE 'sqlite\\_%' ESCAPE '\\' "
         "AND name NOT IN ('_litestream_seq', '_litestream_lock')")


def master_digest(conn: sqlite3.Connection) -> str:
    """SHA-256 of the schema's definition (every non-internal ``sqlite_master`` row's
    type, name, table and SQL, in name order). Equal digests, equal fingerprints."""
    h = hashlib.sha256()
    for row in conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master "
                            f"WHERE {_OURS} ORDER BY type, name"):
        h.update(repr(tuple(row)).encode())
    return h.hexdigest()


def read(conn: sqlite3.Connection) -> Schema:
    """The fingerprint of the ``main`` schema open on ``conn``. Raises ``sqlite3.Error``."""
    master = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master "
                          f"WHERE {_OURS}").fetchall()
    kinds = _table_kinds(conn)
    tables: list[Table] = []
    indexes: list[Index] = []
    triggers: list[Code] = []
    views: list[Code] = []
    for type_, name, tbl, sql in master:
        sql = sql or ""
        if type_ == "table":
            kind, wr, strict = kinds.get(name, ("table", 0, 0))
            if kind == "shadow":
                continue
            tables.append(_read_table(conn, name, sql, kind == "virtual", bool(wr),
                                      bool(strict)))
        elif type_ == "index" and sql:  # no SQL: a constraint's index (in its table)
            indexes.append(_read_index(conn, name, tbl, sql))
        elif type_ in ("trigger", "view"):
            (triggers if type_ == "trigger" else views).append(
                Code(name.lower(), tbl.lower(), normalise(sql) or "", sql))
    return Schema(tuple(sorted(tables, key=lambda t: t.name)),
                  tuple(sorted(indexes, key=lambda i: i.name)),
                  tuple(sorted(triggers, key=lambda c: c.name)),
                  tuple(sorted(views, key=lambda c: c.name)))


def _table_kinds(conn: sqlite3.Connection) -> dict[str, tuple[str, int, int]]:
    """name → (table|virtual|shadow|view, WITHOUT ROWID, STRICT) from ``table_list``
    (SQLite ≥ 3.37); {} on an older SQLite (then shadow tables are compared too)."""
    try:
        rows = conn.execute("SELECT name, type, wr, strict FROM pragma_table_list "
                            "WHERE schema = 'main'").fetchall()
    except sqlite3.OperationalError:
        return {}
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def _pragma(conn: sqlite3.Connection, pragma: str, arg: str) -> list[Any]:
    return conn.execute(f"SELECT * FROM pragma_{pragma}(?)", (arg,)).fetchall()


def _read_table(conn: sqlite3.Connection, name: str, sql: str, virtual: bool, wr: bool,
                strict: bool) -> Table:
    module = None
    if virtual:
        toks = tokens(sql)
        module = " ".join(toks[toks.index("using"):]) if "using" in toks else " ".join(toks)
        try:
            cols = _pragma(conn, "table_xinfo", name)
        except sqlite3.Error:  # a module this SQLite lacks: compare its declaration only
            cols = []
    else:
        cols = _pragma(conn, "table_xinfo", name)
    columns = tuple(Column(c[1].lower(), " ".join(tokens(c[2] or ""))
                           .upper().replace("( ", "(").replace(" )", ")"),
                           bool(c[3]), normalise(c[4]), int(c[5]), int(c[6]))
                    for c in cols)
    fks: dict[int, list[Any]] = {}
    unique: list[tuple[str, ...]] = []
    if not virtual:
        for r in _pragma(conn, "foreign_key_list", name):
            fks.setdefault(r[0], []).append(r)
        for idx in _pragma(conn, "index_list", name):
            if idx[3] == "u":
                unique.append(tuple(str(c[2]).lower() for c in
                                    _pragma(conn, "index_info", idx[1])))
    foreign = tuple(sorted((ForeignKey(
        tuple(str(r[3]).lower() for r in rows), str(rows[0][2]).lower(),
        tuple(None if r[4] is None else str(r[4]).lower() for r in rows),
        str(rows[0][5]).upper(), str(rows[0][6]).upper(), str(rows[0][7]).upper())
        for rows in (sorted(v, key=lambda r: r[1]) for v in fks.values())),
        key=ForeignKey.describe))
    return Table(name.lower(), virtual, columns, foreign, tuple(sorted(unique)), wr, strict,
                 module, sql)


def _read_index(conn: sqlite3.Connection, name: str, table: str, sql: str) -> Index:
    toks = tokens(sql)
    inside, after = _after_parens(toks)
    exprs = _split_commas(inside)
    info = {r[1]: r for r in _pragma(conn, "index_list", table)}.get(name)
    keys = [r for r in _pragma(conn, "index_xinfo", name) if r[5]]
    columns = []
    for i, r in enumerate(keys):
        if r[2] is None:  # an expression: its text from the SQL
            columns.append(exprs[i] if i < len(exprs) else "?")
            continue
        col = str(r[2]).lower() + (" desc" if r[3] else "")
        if r[4] and str(r[4]).upper() != "BINARY":
            col += f" collate {str(r[4]).lower()}"
        columns.append(col)
    where = " ".join(after[1:]) if after[:1] == ["where"] else None
    unique = bool(info[2]) if info is not None else "unique" in toks[:2]
    return Index(name.lower(), table.lower(), tuple(columns), unique, where, sql)
