"""A YAML document read into a node tree safely, and values checked on its nodes.

Why this module exists: a configuration file written by hand must have every mistake
reported at the line and column where it was made, with a hint saying what to write
instead. Only PyYAML's *node tree* carries positions, and only the node tree shows
duplicate mapping keys (``yaml.safe_load`` silently keeps the last one), so callers
validate nodes rather than loaded values. This module is the generic half of that: it
reads and composes a document and offers located readers for single values; it knows
nothing of any particular file's schema (that lives with the caller, e.g. ``desired``).

Invariants:
* reading and composing never raise for bad input except ``InvalidInput`` (from
  ``read_text``) — binary garbage, a truncated file, a syntax error, a recursive alias
  or an alias bomb become located problems on the checker instead;
* an alias bomb is measured in time linear in what is written and refused before
  anything expands it;
* a ``NodeChecker`` reader reports each problem once and returns ``None`` (or ``BAD``
  from ``construct``) for a value it could not read, so callers never see a bad value;
* string values are taken from the text as written: ``007`` stays "007", ``no`` stays
  "no";
* only plain YAML tags are accepted (no ``!!python/...``, no custom tags), and merge
  keys (``<<``) are refused rather than silently expanded.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from reconciler.durations import parse_duration
from reconciler.errors import InvalidInput, Problem

LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
# An alias bomb ("billion laughs") composes cheaply but expands enormously; we refuse a
# document whose aliases expand it beyond this many nodes and 4× what is written.
EXPANSION_FLOOR = 100_000
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: same nodes, much faster
YAML_TAG = "tag:yaml.org,2002:"
PLAIN_TAGS = frozenset(YAML_TAG + t for t in (
    "str", "int", "float", "bool", "null", "timestamp", "map", "seq", "merge"))


@dataclass(frozen=True)
class ReadHints:
    """What to tell the operator when the path itself is wrong: only the caller knows
    how its file is named and passed to the program."""

    missing: str
    directory: str
    not_regular: str


def is_hostname(text: str) -> bool:
    """A lowercase DNS name of at least two labels whose last label is not numeric."""
    if not text or len(text) > 253:
        return False
    labels = text.split(".")
    return (len(labels) >= 2 and all(LABEL.match(lb) for lb in labels)
            and not labels[-1].isdigit())


def suggest_label(text: str) -> str | None:
    """The DNS label an operator most likely meant (``Acme_Corp`` → ``acme-corp``)."""
    fixed = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:63].strip("-")
    return fixed if fixed and fixed != text and LABEL.match(fixed) else None


def suggest_hostname(text: str) -> str | None:
    """The hostname an operator most likely meant (``https://Acme.COM:443/`` → ``acme.com``)."""
    host = text.strip().lower()
    host = host.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1]
    host = re.sub(r":\d*$", "", host).rstrip(".")
    return host if host != text and is_hostname(host) else None


def read_text(path: Path, file: str, max_bytes: int, hints: ReadHints) -> str:
    """The UTF-8 text of ``path`` (named ``file`` in problems), at most ``max_bytes``.

    Raises ``InvalidInput`` (one located problem) for anything that is not such a file."""

    def problem(message: str, hint: str, line: int | None = None,
                col: int | None = None) -> InvalidInput:
        return InvalidInput([Problem(file, line, col, message, hint)])

    try:
        st = path.stat()
    except FileNotFoundError:
        raise problem("file not found", hints.missing) from None
    except OSError as exc:
        raise problem(f"cannot read: {exc.strerror or exc}",
                      "check the path and its permissions") from None
    if stat.S_ISDIR(st.st_mode):
        raise problem("is a directory, not a file", hints.directory)
    if not stat.S_ISREG(st.st_mode):
        raise problem("is not a regular file", hints.not_regular)
    if st.st_size > max_bytes:
        raise problem(f"file is {st.st_size / 2**20:.1f} MiB; the limit is "
                      f"{max_bytes // 2**20} MiB", "check that this is the right file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise problem(f"cannot read: {exc.strerror or exc}",
                      "check the file's permissions") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise problem(f"not UTF-8 text (byte 0x{data[exc.start]:02x})",
                      "save the file as UTF-8 — is it a binary or a partly written file?",
                      line, col) from None


class NodeChecker:
    """Walks a YAML node tree, collecting located problems instead of stopping.

    A schema subclasses it and adds one method per section; every reader here reports
    what is wrong with a value and returns None, so the walk goes on and every problem
    in the file is found in one run."""

    def __init__(self, file: str, text: str) -> None:
        self.file = file
        self.text = text
        self.problems: list[Problem] = []
        self._constructor = yaml.constructor.SafeConstructor()

    # -- reporting helpers
    def error(self, node: yaml.Node | None, message: str, hint: str) -> None:
        if node is None:
            self.problems.append(Problem(self.file, None, None, message, hint))
        else:
            m = node.start_mark
            self.problems.append(Problem(self.file, m.line + 1, m.column + 1, message, hint))

    def construct(self, node: yaml.ScalarNode) -> Any:
        """The YAML value of a scalar (int, bool, str, …); ``BAD`` after reporting."""
        if node.tag not in PLAIN_TAGS:
            self.error(node, f"YAML tag {short_tag(node.tag)} is not supported",
                       "remove the tag and write a plain value")
            return BAD
        try:
            return self._constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            self.error(node, f"cannot read value {node.value!r}: {problem}",
                       "write a plain value, quoted if it contains special characters")
            return BAD

    def text_of(self, node: yaml.Node, what: str, hint: str) -> str | None:
        """A string field as written (``007`` stays "007"); None (reported) otherwise."""
        if isinstance(node, yaml.ScalarNode):
            if node.tag not in PLAIN_TAGS:
                self.error(node, f"YAML tag {short_tag(node.tag)} is not supported", hint)
                return None
            if node.tag == YAML_TAG + "null" or node.value == "":
                self.error(node, f"{what} is empty", hint)
                return None
            return str(node.value)
        self.error(node, f"{what} must be a single value, got {kind(node)}", hint)
        return None

    def mapping(self, node: yaml.Node, what: str, allowed: tuple[str, ...] | None,
                hint: str) -> Iterator[tuple[str, yaml.Node, yaml.Node]]:
        """Yield (key, key node, value node), reporting bad, unknown and duplicate keys.
        A null value (``key:`` with nothing after it) is an empty mapping."""
        if isinstance(node, yaml.ScalarNode) and node.tag == YAML_TAG + "null":
            return
        if not isinstance(node, yaml.MappingNode):
            self.error(node, f"{what} must be a mapping, got {kind(node)}", hint)
            return
        seen: dict[str, yaml.Node] = {}
        for knode, vnode in node.value:
            if isinstance(knode, yaml.ScalarNode) and knode.tag == YAML_TAG + "merge":
                self.error(knode, f"YAML merge keys (<<) are not supported in {what}",
                           "write the keys out in full for each entry")
                continue
            if not isinstance(knode, yaml.ScalarNode) or knode.tag == YAML_TAG + "null" \
                    or knode.value == "":
                self.error(knode, f"{what} has a key that is {kind(knode)}",
                           "write a plain name before the colon")
                continue
            key = str(knode.value)
            if key in seen:
                first = seen[key].start_mark
                self.error(knode, f"duplicate key '{key}' in {what} (first at line "
                           f"{first.line + 1}, column {first.column + 1})",
                           "YAML would silently keep only the last one; merge the two entries "
                           "or rename one")
                continue
            seen[key] = knode
            if allowed is not None and key not in allowed:
                close = difflib.get_close_matches(key.lower(), allowed, n=1, cutoff=0.6)
                suggestion = f"did you mean '{close[0]}'? " if close else ""
                self.error(knode, f"unknown key '{key}' in {what}",
                           f"{suggestion}allowed keys: {', '.join(allowed)}")
                continue
            yield key, knode, vnode

    def integer(self, node: yaml.Node, what: str, minimum: int = 0,
                maximum: int | None = None) -> int | None:
        bounds = f"from {minimum} to {maximum}" if maximum is not None else f"≥ {minimum}"
        v = self.construct(node) if isinstance(node, yaml.ScalarNode) else node
        if v is BAD:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            hint = f"write a whole number {bounds}"
            if isinstance(v, str) and re.fullmatch(r"\s*-?\d+\s*", v):
                hint = f"write {v.strip()} without quotes"
            elif isinstance(v, float) and v.is_integer():
                hint = f"write {int(v)} (a whole number)"
            self.error(node, f"{what} must be a whole number, got {show(v)}", hint)
            return None
        if v < minimum or (maximum is not None and v > maximum):
            self.error(node, f"{what} must be {bounds}, got {v}", f"write a whole number {bounds}")
            return None
        return v

    def boolean(self, node: yaml.Node, what: str) -> bool | None:
        v = self.construct(node) if isinstance(node, yaml.ScalarNode) else node
        if v is BAD:
            return None
        if not isinstance(v, bool):
            hint = "write true or false"
            if isinstance(v, str) and v.lower() in ("true", "false"):
                hint = f"write {v.lower()} without quotes"
            self.error(node, f"{what} must be true or false, got {show(v)}", hint)
            return None
        return v

    def label(self, node: yaml.Node, what: str) -> str | None:
        text = self.text_of(node, what, "write a lowercase name such as eu or acme")
        if text is None:
            return None
        if LABEL.match(text):
            return text
        fixed = suggest_label(text)
        self.error(node, f"{what} '{text}' is not a lowercase DNS label",
                   (f"write '{fixed}' — " if fixed else "") + "use a-z, 0-9 and '-', 1–63 "
                   "characters, not starting or ending with '-'")
        return None

    def hostname(self, node: yaml.Node, what: str) -> str | None:
        text = self.text_of(node, what, "write a lowercase hostname such as app.example.com")
        if text is None:
            return None
        if is_hostname(text):
            return text
        fixed = suggest_hostname(text)
        self.error(node, f"{what} '{text}' is not a lowercase hostname",
                   f"write '{fixed}'" if fixed else
                   "write a lowercase hostname such as app.example.com (no scheme, port, path "
                   "or wildcard)")
        return None

    def duration(self, node: yaml.Node, what: str, maximum: float,
                 allow_zero: bool) -> float | None:
        v = self.construct(node) if isinstance(node, yaml.ScalarNode) else node
        if v is BAD:
            return None
        seconds: float | None = None
        if isinstance(v, str | int | float) and not isinstance(v, bool):
            try:
                seconds = parse_duration(v)
            except ValueError:
                seconds = None
        if seconds is None or not math.isfinite(seconds):
            self.error(node, f"{what} must be a duration, got {show(v)}",
                       "write for example 500ms, 30s, 5m, 1h or 1h30m")
            return None
        if seconds > maximum or (seconds == 0 and not allow_zero):
            low = "0" if allow_zero else "more than 0"
            self.error(node, f"{what} must be {low} and at most {human(maximum)}, got {v}",
                       f"write a duration up to {human(maximum)}, for example 60s")
            return None
        return seconds

    def path(self, node: yaml.Node, what: str, base: Path) -> Path | None:
        v = self.text_of(node, what, "write a directory path, e.g. data or /srv/tenants")
        if v is None:
            return None
        if "\x00" in v:
            self.error(node, f"{what} contains a NUL character", "write a plain path")
            return None
        if re.search(r"\$\{?[A-Za-z_]", v):
            self.error(node, f"{what} '{v}' uses an environment variable, which is not "
                       "expanded", "write the path out (~ for the home directory works)")
            return None
        return Path(os.path.normpath(base / os.path.expanduser(v)))

    def compose(self, empty_hint: str) -> yaml.Node | None:
        """The document's root node, or None after reporting why there is none
        (``empty_hint`` says what an empty file should at least contain)."""
        try:
            root = yaml.compose(self.text, Loader=_LOADER)
        except yaml.MarkedYAMLError as exc:
            self.syntax_error(exc)
            return None
        except yaml.reader.ReaderError as exc:
            line = self.text.count("\n", 0, exc.position) + 1
            col = exc.position - (self.text.rfind("\n", 0, exc.position) + 1) + 1
            char = exc.character if isinstance(exc.character, int) else ord(exc.character)
            self.problems.append(Problem(
                self.file, line, col, f"control character {char:#04x} is not "
                "allowed in YAML", "remove it — NUL and other control bytes usually mean a binary "
                "or corrupted file"))
            return None
        except (yaml.YAMLError, RecursionError) as exc:
            self.problems.append(Problem(self.file, None, None, f"cannot parse YAML: "
                                         f"{str(exc).splitlines()[0]}",
                                         "fix the YAML syntax (indentation, quoting, brackets)"))
            return None
        if root is None:
            self.problems.append(Problem(self.file, 1, 1, "file is empty", empty_hint))
            return None
        if "&" not in self.text:
            return root  # no anchor, so no alias: nothing can expand (the common case, fast)
        distinct, expanded, cycle = _measure(root)
        if cycle is not None:
            self.error(cycle, "an alias refers to a node that contains it (recursive alias)",
                       "use aliases (*name) only for values defined elsewhere, not inside "
                       "themselves")
            return None
        if expanded > max(EXPANSION_FLOOR, 4 * distinct):
            self.error(root, f"aliases expand this document to over {expanded:,} values from "
                       f"{distinct:,} written", "write the values out instead of nesting "
                       "aliases (this looks like a 'billion laughs' document)")
            return None
        return root

    def syntax_error(self, exc: yaml.MarkedYAMLError) -> None:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        col = mark.column + 1 if mark else None
        problem = (exc.problem or exc.context or "syntax error").strip()
        context = ""
        cmark = exc.context_mark
        if exc.context and cmark and mark and (cmark.line, cmark.column) != (mark.line,
                                                                          mark.column):
            context = f" ({exc.context} at line {cmark.line + 1}, column {cmark.column + 1})"
        hint = "fix the YAML syntax near here: indentation, quoting or brackets"
        offending = ""
        if mark is not None:
            lines = self.text.split("\n")
            if mark.line < len(lines) and mark.column < len(lines[mark.line]):
                offending = lines[mark.line][mark.column]
        if offending == "\t" or ("\t" in problem):
            hint = "indent with spaces: YAML does not allow tabs"
            problem = "a tab character cannot start a token"
        elif "end of stream" in problem or (
                mark is not None and getattr(mark, "index", -1) >= len(self.text.rstrip())):
            hint = "the file ends inside a quoted string or bracket — is it truncated? " \
                   "Close what was opened"
        elif "did not find expected ',' or '}'" in problem or "expected ',' or ']'" in problem:
            hint = "close the bracket, and separate items with ', '"
        elif "mapping values are not allowed" in problem:
            hint = "put a space after each ':' and quote values that contain ': '"
        elif "another document" in problem or "single document" in problem:
            hint = "keep a single document: remove the extra `---` line"
        elif "undefined alias" in problem:
            hint = "define the anchor (&name) before using the alias (*name)"
        elif "duplicate anchor" in problem or "found duplicate anchor" in (exc.context or ""):
            hint = "give every anchor (&name) its own name"
        elif "could not find expected ':'" in problem:
            hint = "write `key: value` — every key needs a ':' after it"
        self.problems.append(Problem(self.file, line, col,
                                     f"YAML syntax error: {problem}{context}", hint))


class _Bad:
    """Marker for a value that could not be read (already reported)."""

    def __repr__(self) -> str:
        return "an unreadable value"


BAD: Any = _Bad()


def _measure(root: yaml.Node) -> tuple[int, int, yaml.Node | None]:
    """(distinct nodes, nodes after expanding aliases, a node on a cycle or None).

    Iterative and memoised, so an alias bomb costs time linear in what is written."""
    cap = 10**12
    sizes: dict[int, int] = {}
    open_: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        nid = id(node)
        if finished:
            open_.discard(nid)
            sizes[nid] = min(cap, 1 + sum(sizes[id(c)] for c in _children(node)))
            continue
        if nid in sizes:
            continue
        if nid in open_:
            return len(sizes), 0, node
        open_.add(nid)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in open_:
                return len(sizes), 0, child
            if id(child) not in sizes:
                stack.append((child, False))
    return len(sizes), sizes[id(root)], None


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == YAML_TAG + "null"


def short_tag(tag: str) -> str:
    return "!!" + tag[len(YAML_TAG):] if tag.startswith(YAML_TAG) else tag


def kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if node.tag == YAML_TAG + "null" or node.value == "":
        return "nothing"
    return f"'{node.value}'"


def show(v: Any) -> str:
    if isinstance(v, yaml.Node):
        return kind(v)
    if v is None:
        return "nothing (null)"
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v)


def human(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
