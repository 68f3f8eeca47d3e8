"""Desired state: ``tenants.yaml`` loaded, validated and frozen.

Why this module exists: everything the reconciler does is driven by this file, so a
mistake in it must be caught *before* anything touches a tenant, and reported so an
operator can fix it without guessing. We validate the YAML *node tree* rather than the
``yaml.safe_load`` result because only nodes carry line and column numbers, and only
the node tree shows duplicate mapping keys, which PyYAML otherwise drops silently.

Invariants of a loaded ``Desired``:
* every tenant's region is declared and every tenant and region name is a lowercase
  DNS label, so ``<region dir>/<name>.db`` never points outside its region directory;
* region directories are absolute, distinct, not nested in one another, not the data
  directory, not inside ``_archive``/``_retired``, and hold neither the registry nor the
  migrations; the registry is not inside the bookkeeping folders or the migrations;
* domains are lowercase hostnames, unique across the fleet including the generated
  ``NAME.<domain>``;
* every problem in the file is reported at once (sorted by position, each with a hint
  saying what to write instead), and loading never raises anything but
  ``InvalidInput`` — not for binary garbage, a truncated file, or an alias bomb;
* no I/O happens after ``load`` returns: the value is immutable.

Names and other string-valued fields are read from the text as written: ``007`` is the
tenant "007" (not the integer 7) and ``no`` is the region "no" (not ``False``).
"""

from __future__ import annotations

import difflib
import math
import os
import re
import stat
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from reconciler.durations import parse_duration
from reconciler.errors import InvalidInput, Problem

LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
FORMAT_VERSION = 1
RESERVED_DIRS = ("_archive", "_retired")
MAX_BYTES = 16 * 1024 * 1024  # ~500k tenants; anything bigger is the wrong file
MAX_PROBLEMS = 50  # a wrong file can produce thousands; the first ones are enough to act on
MAX_PARALLEL = 256  # one thread (and SQLite connection) per parallel migration
MAX_INTERVAL = 30 * 86400.0
MAX_BUSY_TIMEOUT = 3600.0
# An alias bomb ("billion laughs") composes cheaply but expands enormously; we refuse a
# document whose aliases expand it beyond this many nodes and 4× what is written.
EXPANSION_FLOOR = 100_000
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: same nodes, much faster
_YAML_TAG = "tag:yaml.org,2002:"
_PLAIN_TAGS = frozenset(_YAML_TAG + t for t in (
    "str", "int", "float", "bool", "null", "timestamp", "map", "seq", "merge"))
_SQLITE_MAGIC = b"SQLite format 3\x00"


@dataclass(frozen=True)
class Rollout:
    canary: int = 1
    batch: int = 25
    parallel: int = 4
    max_failures: int = 0
    snapshot: bool = False


@dataclass(frozen=True)
class GitSettings:
    remote: str = "origin"
    branch: str = "main"


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    central: Path
    migrations_dir: Path
    domain: str | None = None
    schema: int | None = None  # None means "latest"
    prune: bool = False  # True means "archive"
    prune_limit: int = 10
    interval: float = 60.0
    busy_timeout: float = 5.0
    rollout: Rollout = field(default_factory=Rollout)
    git: GitSettings | None = None

    @property
    def archive_dir(self) -> Path:
        return self.data_dir / "_archive"

    @property
    def retired_dir(self) -> Path:
        return self.data_dir / "_retired"


@dataclass(frozen=True)
class Region:
    name: str
    path: Path  # absolute, normalised (symlinks are judged at observe time)


@dataclass(frozen=True)
class TenantSpec:
    name: str
    region: str
    schema: int | None = None  # None: follow settings.schema
    domains: tuple[str, ...] = ()
    suspended: bool = False
    protected: bool = False


@dataclass(frozen=True)
class Desired:
    source: Path
    settings: Settings
    globals: Mapping[str, str]
    regions: Mapping[str, Region]
    tenants: Mapping[str, TenantSpec]  # sorted by name

    def tenant_path(self, name: str, region: str) -> Path:
        return self.regions[region].path / f"{name}.db"

    def target_version(self, spec: TenantSpec, latest: int) -> int:
        if spec.schema is not None:
            return spec.schema
        return latest if self.settings.schema is None else self.settings.schema

    def domains(self) -> dict[str, str]:
        """Every routed hostname → tenant name (declared plus ``NAME.<domain>``)."""
        out: dict[str, str] = {}
        for spec in self.tenants.values():
            if self.settings.domain:
                out[f"{spec.name}.{self.settings.domain}"] = spec.name
            for d in spec.domains:
                out[d] = spec.name
        return out


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


# --------------------------------------------------------------------------- loading


def load(path: Path, latest_for: Callable[[Path], int | None]) -> Desired:
    """Parse and validate ``path``. ``latest_for(migrations_dir)`` gives the highest
    migration (None if the catalog is invalid: pins are then checked for sign only).

    Raises ``InvalidInput`` with every problem found (never anything else).
    """
    file = str(path)
    text = _read(path, file)
    checker = _Checker(file, text)
    desired = checker.document(path.resolve().parent, latest_for, path)
    if checker.problems or desired is None:
        raise InvalidInput(_capped(checker.problems, file))
    return desired


def _read(path: Path, file: str) -> str:
    def problem(message: str, hint: str, line: int | None = None,
                col: int | None = None) -> InvalidInput:
        return InvalidInput([Problem(file, line, col, message, hint)])

    try:
        st = path.stat()
    except FileNotFoundError:
        raise problem("file not found", "create it, or pass the desired-state file with "
                      "-c/--config or RECONCILE_CONFIG") from None
    except OSError as exc:
        raise problem(f"cannot read: {exc.strerror or exc}",
                      "check the path and its permissions") from None
    if stat.S_ISDIR(st.st_mode):
        raise problem("is a directory, not a file",
                      f"pass the file itself, e.g. -c {Path(file) / 'tenants.yaml'}")
    if not stat.S_ISREG(st.st_mode):
        raise problem("is not a regular file", "pass the tenants.yaml file itself")
    if st.st_size > MAX_BYTES:
        raise problem(f"file is {st.st_size / 2**20:.1f} MiB; the limit is "
                      f"{MAX_BYTES // 2**20} MiB", "check that this is the right file")
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


def _capped(problems: list[Problem], file: str) -> list[Problem]:
    ordered = sorted(problems, key=lambda p: (p.file != file, p.line or 0, p.column or 0))
    if len(ordered) <= MAX_PROBLEMS:
        return ordered
    more = len(ordered) - MAX_PROBLEMS
    return [*ordered[:MAX_PROBLEMS],
            Problem(file, None, None, f"… and {more} more problem{'s' if more > 1 else ''}",
                    "fix the ones above and run `reconcile validate` again")]


_SETTINGS_KEYS = ("data_dir", "central", "migrations", "domain", "schema", "prune",
                  "prune_limit", "interval", "busy_timeout", "rollout", "git")
_ROLLOUT_KEYS = ("canary", "batch", "parallel", "max_failures", "snapshot")
_GIT_KEYS = ("remote", "branch")
_TENANT_KEYS = ("region", "schema", "domains", "suspended", "protected")
_TOP_KEYS = ("version", "settings", "globals", "regions", "tenants")
_BAD_GIT_NAME = re.compile(r"(^[-./]|\.\.|@\{|[\x00-\x20\x7f~^:?*\[\\]|[./]$|\.lock$|//)")


@dataclass(frozen=True)
class _Where:
    """A path setting's value and the node it was written at (None: the default)."""

    path: Path
    node: yaml.Node | None


class _Checker:
    """Walks the YAML node tree, collecting located problems instead of stopping."""

    def __init__(self, file: str, text: str) -> None:
        self.file = file
        self.text = text
        self.problems: list[Problem] = []
        self.region_names: set[str] = set()
        self.data_dir_ok = True  # False: paths derived from it are not judged again
        self.central_node: yaml.Node | None = None  # where settings.central was written
        self._constructor = yaml.constructor.SafeConstructor()

    # -- reporting helpers
    def error(self, node: yaml.Node | None, message: str, hint: str) -> None:
        if node is None:
            self.problems.append(Problem(self.file, None, None, message, hint))
        else:
            m = node.start_mark
            self.problems.append(Problem(self.file, m.line + 1, m.column + 1, message, hint))

    def construct(self, node: yaml.ScalarNode) -> Any:
        """The YAML value of a scalar (int, bool, str, …); ``_BAD`` after reporting."""
        if node.tag not in _PLAIN_TAGS:
            self.error(node, f"YAML tag {_tag(node.tag)} is not supported",
                       "remove the tag and write a plain value")
            return _BAD
        try:
            return self._constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            self.error(node, f"cannot read value {node.value!r}: {problem}",
                       "write a plain value, quoted if it contains special characters")
            return _BAD

    def text_of(self, node: yaml.Node, what: str, hint: str) -> str | None:
        """A string field as written (``007`` stays "007"); None (reported) otherwise."""
        if isinstance(node, yaml.ScalarNode):
            if node.tag not in _PLAIN_TAGS:
                self.error(node, f"YAML tag {_tag(node.tag)} is not supported", hint)
                return None
            if node.tag == _YAML_TAG + "null" or node.value == "":
                self.error(node, f"{what} is empty", hint)
                return None
            return str(node.value)
        self.error(node, f"{what} must be a single value, got {_kind(node)}", hint)
        return None

    def mapping(self, node: yaml.Node, what: str, allowed: tuple[str, ...] | None,
                hint: str) -> Iterator[tuple[str, yaml.Node, yaml.Node]]:
        """Yield (key, key node, value node), reporting bad, unknown and duplicate keys.
        A null value (``key:`` with nothing after it) is an empty mapping."""
        if isinstance(node, yaml.ScalarNode) and node.tag == _YAML_TAG + "null":
            return
        if not isinstance(node, yaml.MappingNode):
            self.error(node, f"{what} must be a mapping, got {_kind(node)}", hint)
            return
        seen: dict[str, yaml.Node] = {}
        for knode, vnode in node.value:
            if isinstance(knode, yaml.ScalarNode) and knode.tag == _YAML_TAG + "merge":
                self.error(knode, f"YAML merge keys (<<) are not supported in {what}",
                           "write the keys out in full for each entry")
                continue
            if not isinstance(knode, yaml.ScalarNode) or knode.tag == _YAML_TAG + "null" \
                    or knode.value == "":
                self.error(knode, f"{what} has a key that is {_kind(knode)}",
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
        if v is _BAD:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            hint = f"write a whole number {bounds}"
            if isinstance(v, str) and re.fullmatch(r"\s*-?\d+\s*", v):
                hint = f"write {v.strip()} without quotes"
            elif isinstance(v, float) and v.is_integer():
                hint = f"write {int(v)} (a whole number)"
            self.error(node, f"{what} must be a whole number, got {_show(v)}", hint)
            return None
        if v < minimum or (maximum is not None and v > maximum):
            self.error(node, f"{what} must be {bounds}, got {v}", f"write a whole number {bounds}")
            return None
        return v

    def boolean(self, node: yaml.Node, what: str) -> bool | None:
        v = self.construct(node) if isinstance(node, yaml.ScalarNode) else node
        if v is _BAD:
            return None
        if not isinstance(v, bool):
            hint = "write true or false"
            if isinstance(v, str) and v.lower() in ("true", "false"):
                hint = f"write {v.lower()} without quotes"
            self.error(node, f"{what} must be true or false, got {_show(v)}", hint)
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
        if v is _BAD:
            return None
        seconds: float | None = None
        if isinstance(v, str | int | float) and not isinstance(v, bool):
            try:
                seconds = parse_duration(v)
            except ValueError:
                seconds = None
        if seconds is None or not math.isfinite(seconds):
            self.error(node, f"{what} must be a duration, got {_show(v)}",
                       "write for example 500ms, 30s, 5m, 1h or 1h30m")
            return None
        if seconds > maximum or (seconds == 0 and not allow_zero):
            low = "0" if allow_zero else "more than 0"
            self.error(node, f"{what} must be {low} and at most {_human(maximum)}, got {v}",
                       f"write a duration up to {_human(maximum)}, for example 60s")
            return None
        return seconds

    def schema(self, node: yaml.Node, what: str, latest: int | None) -> tuple[bool, int | None]:
        """(ok, version) where version None means latest."""
        v = self.construct(node) if isinstance(node, yaml.ScalarNode) else node
        if v is _BAD:
            return False, None
        upto = f"0 to {latest}" if latest is not None else "0 or more"
        if v == "latest" and isinstance(v, str):
            return True, None
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            hint = f"write latest, or a migration number from {upto}"
            if isinstance(v, str) and v.strip().lower() == "latest":
                hint = "write latest (lowercase)"
            elif isinstance(v, str) and v.strip().isdigit():
                hint = f"write {v.strip()} without quotes"
            self.error(node, f"{what} must be a migration number or latest, got {_show(v)}",
                       hint)
            return False, None
        if latest is not None and v > latest:
            self.error(node, f"{what} {v} is above the newest migration ({latest})",
                       f"write a version from {upto}, or latest — or add the migration first")
            return False, None
        return True, v

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

    # -- the document
    def document(self, base: Path, latest_for: Callable[[Path], int | None],
                 source: Path) -> Desired | None:
        root = self.compose()
        if root is None:
            return None
        if not isinstance(root, yaml.MappingNode):
            self.error(root, f"the document must be a mapping, got {_kind(root)}",
                       "start with `version: 1`, then settings:, regions: and tenants:")
            return None

        sections: dict[str, yaml.Node] = {}
        for key, _k, vnode in self.mapping(root, "the document", _TOP_KEYS, ""):
            sections[key] = vnode
        if "version" not in sections:
            self.error(root, "missing `version`", f"add `version: {FORMAT_VERSION}` at the top")
        else:
            vnode = sections["version"]
            v = self.construct(vnode) if isinstance(vnode, yaml.ScalarNode) else vnode
            if v is not _BAD and (isinstance(v, bool) or not isinstance(v, int)
                                  or v != FORMAT_VERSION):
                self.error(vnode, f"unsupported format version {_show(v)}",
                           f"write `version: {FORMAT_VERSION}` (this reconciler reads format "
                           f"{FORMAT_VERSION})")

        settings, latest = self.settings(sections.get("settings"), base, latest_for)
        glob = self.globals_(sections.get("globals"))
        regions = self.regions(sections.get("regions"), root, settings, base)
        if "tenants" not in sections:
            self.error(root, "missing `tenants:`",
                       "add a `tenants:` mapping, e.g. `tenants: {acme: {region: eu}}` "
                       "(`tenants: {}` declares an empty fleet)")
        tenants = self.tenants(sections.get("tenants"), regions, settings, latest)
        return Desired(
            source=source,
            settings=settings,
            globals=MappingProxyType(dict(sorted(glob.items()))),
            regions=MappingProxyType(regions),
            tenants=MappingProxyType(dict(sorted(tenants.items()))),
        )

    def compose(self) -> yaml.Node | None:
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
            self.problems.append(Problem(self.file, 1, 1, "file is empty",
                                         "write at least `version: 1`, a `regions:` and a "
                                         "`tenants:` mapping"))
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

    def settings(self, node: yaml.Node | None, base: Path,
                 latest_for: Callable[[Path], int | None]) -> tuple[Settings, int | None]:
        """Settings with defaults for anything missing or invalid (invalid is reported),
        so the other sections are still checked against something sensible."""
        nodes: dict[str, yaml.Node] = {}
        if node is not None:
            for key, _k, v in self.mapping(node, "settings", _SETTINGS_KEYS,
                                           "write `settings:` followed by indented "
                                           "`key: value` lines"):
                nodes[key] = v
        raw: dict[str, Any] = {}

        def dir_setting(key: str, default: Path) -> _Where:
            vnode = nodes.get(key)
            if vnode is None:
                return _Where(default, None)
            p = self.path(vnode, f"settings.{key}", base)
            return _Where(p or default, vnode)

        data = dir_setting("data_dir", base / "data")
        central = dir_setting("central", data.path / "central.db")
        migrations = dir_setting("migrations", base / "migrations")
        if data.path == Path(data.path.anchor):
            self.error(data.node, "settings.data_dir must not be a filesystem root",
                       "write a dedicated directory such as data or /srv/tenants")
            self.data_dir_ok = False
        elif data.path.is_relative_to(migrations.path):
            self.error(data.node or migrations.node,
                       f"settings.data_dir {data.path} lies inside the migrations directory "
                       f"{migrations.path}", "keep tenant data outside the migrations")
            self.data_dir_ok = False
        self.central_node = central.node
        blocker = _file_in_the_way(data.path)
        if self.data_dir_ok and blocker is not None:
            self.error(data.node, f"settings.data_dir {data.path} cannot be a directory: "
                       f"{blocker} is a file", "point data_dir at a directory (or at a path "
                       "that does not exist yet), or move that file away")
            self.data_dir_ok = False
        if central.node is not None or self.data_dir_ok:  # else: already reported
            self.check_central(central, data, migrations.path)
        latest = latest_for(migrations.path)

        if "domain" in nodes:
            raw["domain"] = self.hostname(nodes["domain"], "settings.domain")
        if "schema" in nodes:
            good, version = self.schema(nodes["schema"], "settings.schema", latest)
            if good:
                raw["schema"] = version
        if "prune" in nodes:
            pnode = nodes["prune"]
            v = self.construct(pnode) if isinstance(pnode, yaml.ScalarNode) else pnode
            if v is False or (isinstance(v, str) and v == "archive"):
                raw["prune"] = v == "archive"
            elif v is not _BAD:
                hint = "write false (report removed tenants) or archive (move their files to " \
                       "<data_dir>/_archive)"
                if v is True or v == "delete":
                    hint += "; the reconciler never deletes tenant data"
                self.error(pnode, f"settings.prune must be false or archive, got {_show(v)}",
                           hint)
        if "prune_limit" in nodes:
            raw["prune_limit"] = self.integer(nodes["prune_limit"], "settings.prune_limit")
        if "interval" in nodes:
            raw["interval"] = self.duration(nodes["interval"], "settings.interval",
                                            MAX_INTERVAL, allow_zero=False)
        if "busy_timeout" in nodes:
            raw["busy_timeout"] = self.duration(nodes["busy_timeout"], "settings.busy_timeout",
                                                MAX_BUSY_TIMEOUT, allow_zero=True)
        if "rollout" in nodes:
            raw["rollout"] = self.rollout(nodes["rollout"])
        if "git" in nodes and not _is_null(nodes["git"]):  # `git:` left empty: pull mode off
            raw["git"] = self.git(nodes["git"])
        given = {k: v for k, v in raw.items() if v is not None}
        return Settings(data_dir=data.path, central=central.path,
                        migrations_dir=migrations.path, **given), latest

    def check_central(self, central: _Where, data: _Where, migrations: Path) -> None:
        where = central.node or data.node
        c = central.path
        if c == data.path or data.path.is_relative_to(c):
            self.error(where, f"settings.central {c} is the data directory",
                       "write a file path such as data/central.db")
        elif any(c.is_relative_to(data.path / r) for r in RESERVED_DIRS):
            self.error(where, f"settings.central {c} lies inside a reserved folder "
                       "(_archive/_retired)", "write a file path such as data/central.db")
        elif _nested(c, migrations):
            self.error(where, f"settings.central {c} lies inside the migrations directory",
                       "write a file path such as data/central.db")
        elif (blocker := _file_in_the_way(c.parent)) is not None:
            self.error(where, f"settings.central {c} cannot be created: {blocker} is a file",
                       "write a path whose folders are directories, e.g. data/central.db")
        else:
            problem = _not_a_registry(c)
            if problem:
                self.error(where, f"settings.central {c} {problem}",
                           "point it at the registry file (a SQLite database), or at a path "
                           "that does not exist yet")

    def rollout(self, node: yaml.Node) -> Rollout:
        r: dict[str, Any] = {}
        for key, _k, v in self.mapping(node, "settings.rollout", _ROLLOUT_KEYS,
                                       "write for example `rollout: {canary: 1, batch: 25}`"):
            value: int | bool | None
            if key == "snapshot":
                value = self.boolean(v, "settings.rollout.snapshot")
            elif key in ("batch", "parallel"):
                value = self.integer(v, f"settings.rollout.{key}", 1,
                                     MAX_PARALLEL if key == "parallel" else None)
            else:
                value = self.integer(v, f"settings.rollout.{key}", 0)
            if value is not None:
                r[key] = value
        return Rollout(**r)

    def git(self, node: yaml.Node) -> GitSettings:
        g: dict[str, str] = {}
        for key, _k, v in self.mapping(node, "settings.git", _GIT_KEYS,
                                       "write for example `git: {remote: origin, branch: main}`"):
            s = self.text_of(v, f"settings.git.{key}", "write for example origin or main")
            if s is not None and _BAD_GIT_NAME.search(s):
                self.error(v, f"settings.git.{key} '{s}' is not a valid git {key} name",
                           "write for example origin or main (no spaces, no leading '-', "
                           "no '..', '~', '^', ':', '?', '*', '[', '\\')")
                s = None
            if s is not None:
                g[key] = s
        return GitSettings(**g)

    def globals_(self, node: yaml.Node | None) -> dict[str, str]:
        out: dict[str, str] = {}
        if node is None:
            return out
        for key, _k, v in self.mapping(node, "globals", None,
                                       "write `globals:` followed by indented `key: value` "
                                       "lines"):
            if not isinstance(v, yaml.ScalarNode):
                self.error(v, f"globals.{key} must be a single value, got {_kind(v)}",
                           "write a string, number or boolean; nested mappings and lists are "
                           "not mirrored")
            elif v.tag not in _PLAIN_TAGS:
                self.error(v, f"YAML tag {_tag(v.tag)} is not supported",
                           "remove the tag and write a plain value")
            elif v.tag == _YAML_TAG + "null":
                self.error(v, f"globals.{key} has no value",
                           f'write `{key}: ""` for an empty string, or remove the key')
            elif v.tag == _YAML_TAG + "bool":
                val = self.construct(v)
                if isinstance(val, bool):
                    out[key] = "true" if val else "false"
            else:
                out[key] = str(v.value)  # as written: 0044123 stays "0044123"
        return out

    def regions(self, node: yaml.Node | None, root: yaml.Node, settings: Settings,
                base: Path) -> dict[str, Region]:
        out: dict[str, Region] = {}
        if node is None:
            self.error(root, "missing `regions:`",
                       "declare at least one region, e.g. `regions: {eu: {}}`")
            return out
        declared = 0
        for name_text, knode, v in self.mapping(node, "regions", None,
                                                "write `regions:` followed by indented "
                                                "`name: {}` lines"):
            declared += 1
            self.region_names.add(name_text)
            name = self.label(knode, "region name")
            path_node: yaml.Node | None = None
            for _key, _k, pv in self.mapping(v, f"regions.{name_text}", ("path",),
                                            f"write `{name_text}: {{}}` or "
                                            f"`{name_text}: {{path: /some/dir}}`"):
                path_node = pv
            if name is None:
                continue
            path = settings.data_dir / name
            if path_node is not None:
                p = self.path(path_node, f"regions.{name}.path", base)
                if p is None:
                    continue
                path = p
            where = path_node or knode
            bad = _region_path_problem(path, settings) \
                if path_node is not None or self.data_dir_ok else ""
            if bad == _HOLDS_CENTRAL and path_node is None and self.central_node is not None:
                # the region is where it always was: the registry was moved into it
                self.error(self.central_node, f"settings.central {settings.central} lies "
                           f"inside region '{name}' ({path})",
                           "keep the registry out of region directories, e.g. data/central.db")
                continue
            if bad:
                self.error(where, f"region '{name}' directory {path} {bad}",
                           "give every region its own directory, e.g. under the data "
                           "directory or /srv/tenants/<region>")
                continue
            for other, region in out.items():
                if _nested(path, region.path) or _nested(_real(path), _real(region.path)):
                    self.error(where, f"region '{name}' directory {path} overlaps region "
                               f"'{other}' ({region.path})",
                               "give every region its own directory, outside the others")
                    break
            else:
                out[name] = Region(name, path)
        if declared == 0:
            self.error(node, "no regions declared",
                       "declare at least one, e.g. `regions: {eu: {}}`")
        return out

    def tenants(self, node: yaml.Node | None, regions: dict[str, Region],
                settings: Settings, latest: int | None) -> dict[str, TenantSpec]:
        out: dict[str, TenantSpec] = {}
        if node is None:
            return out
        entries = list(self.mapping(node, "tenants", None,
                                    "write `tenants:` followed by indented "
                                    "`name: {region: eu}` lines"))
        owners: dict[str, tuple[str, yaml.Node | None]] = {}
        if settings.domain:
            for name_text, _k, _v in entries:
                owners[f"{name_text}.{settings.domain}"] = (name_text, None)
        for name_text, knode, vnode in entries:
            name = self.label(knode, "tenant name")
            if name is not None and settings.domain and \
                    len(f"{name}.{settings.domain}") > 253:
                self.error(knode, f"tenant '{name}' would be routed at a hostname longer than "
                           "253 characters", "choose a shorter tenant name or domain")
            fields = self.tenant_fields(name_text, knode, vnode, regions, latest, owners)
            if name is not None and "region" in fields:
                out[name] = TenantSpec(name=name, **fields)
        return out

    def tenant_fields(self, name: str, knode: yaml.Node, vnode: yaml.Node,
                      regions: dict[str, Region], latest: int | None,
                      owners: dict[str, tuple[str, yaml.Node | None]]) -> dict[str, Any]:
        example = next(iter(regions), "eu")
        if isinstance(vnode, yaml.ScalarNode) and vnode.tag != _YAML_TAG + "null":
            self.error(vnode, f"tenants.{name} must be a mapping, got a single value",
                       f"write `{name}: {{region: {vnode.value or example}}}`")
            return {}
        fields: dict[str, Any] = {}
        has_region = False
        for key, _fk, v in self.mapping(vnode, f"tenants.{name}", _TENANT_KEYS,
                                        f"write `{name}: {{region: {example}}}`"):
            if key == "region":
                has_region = True
                r = self.text_of(v, f"tenants.{name}.region", f"write `region: {example}`")
                if r is None:
                    continue
                if r in regions:
                    fields["region"] = r
                elif r not in self.region_names:  # else: that region was reported itself
                    known = ", ".join(sorted(regions)) or "none yet"
                    close = difflib.get_close_matches(r.lower(), list(regions), n=1)
                    self.error(v, f"tenant '{name}' is in region '{r}', which is not declared",
                               (f"did you mean '{close[0]}'? " if close else "")
                               + f"declare it under regions:, or use one of: {known}")
            elif key == "schema":
                good, version = self.schema(v, f"tenants.{name}.schema", latest)
                if good:  # a tenant's `latest` is the newest migration, whatever settings say
                    fields["schema"] = latest if version is None else version
            elif key == "domains":
                fields["domains"] = self.domains(v, name, owners)
            else:
                b = self.boolean(v, f"tenants.{name}.{key}")
                if b is not None:
                    fields[key] = b
        merged = isinstance(vnode, yaml.MappingNode) and any(
            k.tag == _YAML_TAG + "merge" for k, _v in vnode.value)  # reported as such
        if not has_region and not merged and not isinstance(vnode, yaml.SequenceNode):
            self.error(knode, f"tenant '{name}' has no region",
                       f"write `{name}: {{region: {example}}}` with a declared region")
        return fields

    def domains(self, node: yaml.Node, tenant: str,
                owners: dict[str, tuple[str, yaml.Node | None]]) -> tuple[str, ...]:
        if isinstance(node, yaml.ScalarNode) and node.tag == _YAML_TAG + "null":
            return ()
        if not isinstance(node, yaml.SequenceNode):
            example = node.value if isinstance(node, yaml.ScalarNode) else "acme.example.com"
            self.error(node, f"tenants.{tenant}.domains must be a list, got {_kind(node)}",
                       f"write `domains: [{example}]`")
            return ()
        out: list[str] = []
        for item in node.value:
            d = self.hostname(item, f"tenants.{tenant}.domains entry")
            if d is None:
                continue
            owner, onode = owners.get(d, (tenant, None))
            if owner != tenant or d in out:
                if onode is not None:
                    where = f" (line {onode.start_mark.line + 1})"
                elif owner != tenant:
                    where = " (its generated subdomain)"
                else:
                    where = ""
                self.error(item, f"domain '{d}' is already used by tenant '{owner}'{where}",
                           "every domain routes to exactly one tenant: remove one of them")
                continue
            owners[d] = (tenant, item)
            out.append(d)
        return tuple(out)


class _Bad:
    """Marker for a value that could not be read (already reported)."""

    def __repr__(self) -> str:
        return "an unreadable value"


_BAD: Any = _Bad()


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


_HOLDS_CENTRAL = "contains the central registry"


def _region_path_problem(path: Path, settings: Settings) -> str:
    data = settings.data_dir
    if path == Path(path.anchor):
        return "is a filesystem root"
    if path == data or data.is_relative_to(path):
        return "contains the data directory itself"
    if any(_nested(path, data / r) for r in RESERVED_DIRS):
        return "overlaps a reserved folder (_archive/_retired)"
    if settings.central.is_relative_to(path) or _real(settings.central).is_relative_to(
            _real(path)):
        return _HOLDS_CENTRAL
    if _nested(path, settings.migrations_dir) or _nested(_real(path),
                                                         _real(settings.migrations_dir)):
        return "overlaps the migrations directory"
    return ""


def _nested(a: Path, b: Path) -> bool:
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def _real(path: Path) -> Path:
    """``path`` with symlinks resolved, so two spellings of one directory compare equal."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return path


def _file_in_the_way(directory: Path) -> Path | None:
    """The nearest existing ``directory`` or ancestor of it, if that is not a directory
    (then the directory can never be created: the run would fail half-way)."""
    for p in (directory, *directory.parents):
        try:
            st = p.stat()
        except OSError:
            continue
        return None if stat.S_ISDIR(st.st_mode) else p
    return None


def _not_a_registry(path: Path) -> str:
    """Why ``path`` cannot be the registry ('' when it can): catches `central:` pointing
    at a directory or at some other file, which would otherwise be clobbered or crash."""
    try:
        st = path.stat()
    except OSError:
        return ""
    if stat.S_ISDIR(st.st_mode):
        return "is a directory"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if st.st_size == 0:
        return ""
    try:
        with path.open("rb") as f:
            head = f.read(len(_SQLITE_MAGIC))
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    return "" if head == _SQLITE_MAGIC else "is not a SQLite database"


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == _YAML_TAG + "null"


def _tag(tag: str) -> str:
    return "!!" + tag[len(_YAML_TAG):] if tag.startswith(_YAML_TAG) else tag


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if node.tag == _YAML_TAG + "null" or node.value == "":
        return "nothing"
    return f"'{node.value}'"


def _show(v: Any) -> str:
    if isinstance(v, yaml.Node):
        return _kind(v)
    if v is None:
        return "nothing (null)"
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v)


def _human(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
