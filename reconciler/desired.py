"""Desired state: ``tenants.yaml`` loaded, validated and frozen.

Why this module exists: everything the reconciler does is driven by this file, so a
mistake in it must be caught *before* anything touches a tenant, and reported so an
operator can fix it without guessing. We therefore validate the YAML node tree (not
the plain ``yaml.safe_load`` result) because only nodes carry line and column numbers
and only the node tree shows duplicate mapping keys, which PyYAML otherwise drops.

Invariants of a loaded ``Desired``:
* every tenant's region is declared and every name is a lowercase DNS label, so
  ``<region dir>/<name>.db`` can never point outside its region directory;
* region directories are absolute, distinct, not nested in one another, and hold
  neither the registry nor the data directory's bookkeeping folders;
* domains are unique across the fleet, including the generated ``NAME.<domain>``;
* no I/O happens after ``load`` returns: the value is immutable.
"""

from __future__ import annotations

import difflib
import os
import re
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
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: same nodes, much faster


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
    if not text or len(text) > 253:
        return False
    labels = text.split(".")
    return len(labels) >= 2 and all(LABEL.match(lb) for lb in labels)


# --------------------------------------------------------------------------- loading


def load(path: Path, latest_for: Callable[[Path], int | None]) -> Desired:
    """Parse and validate ``path``. ``latest_for(migrations_dir)`` gives the highest
    migration (None if the catalog is invalid: pins are then checked for sign only).

    Raises ``InvalidInput`` with every problem found.
    """
    checker = _Checker(str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidInput(
            [Problem(str(path), None, None, "file not found",
                     "pass the desired-state file with -c/--config or RECONCILE_CONFIG")]
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput([Problem(str(path), None, None, f"cannot read: {exc}")]) from None
    desired = checker.document(text, path.resolve().parent, latest_for, path)
    if checker.problems or desired is None:
        raise InvalidInput(checker.problems)
    return desired


_SETTINGS_KEYS = {
    "data_dir": "a directory (default: data)",
    "central": "the registry file (default: <data_dir>/central.db)",
    "migrations": "the migrations directory (default: migrations)",
    "domain": "a hostname such as yoursaas.com",
    "schema": "an integer or latest",
    "prune": "false or archive",
    "prune_limit": "an integer ≥ 0",
    "interval": "a duration such as 60s",
    "busy_timeout": "a duration such as 5s",
    "rollout": "{canary, batch, parallel, max_failures, snapshot}",
    "git": "{remote, branch}",
}
_ROLLOUT_KEYS = ("canary", "batch", "parallel", "max_failures", "snapshot")
_TENANT_KEYS = ("region", "schema", "domains", "suspended", "protected")
_TOP_KEYS = ("version", "settings", "globals", "regions", "tenants")


class _Checker:
    """Walks the YAML node tree, collecting located problems instead of stopping."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[Problem] = []
        self.region_names: set[str] = set()
        self.latest: int | None = None
        self._constructor = yaml.constructor.SafeConstructor()

    # -- reporting helpers
    def error(self, node: yaml.Node | None, message: str, hint: str = "") -> None:
        if node is None:
            self.problems.append(Problem(self.file, None, None, message, hint))
        else:
            m = node.start_mark
            self.problems.append(Problem(self.file, m.line + 1, m.column + 1, message, hint))

    def value(self, node: yaml.Node) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            return node
        try:
            return self._constructor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            self.error(node, f"cannot read value: {exc}")
            return None

    def mapping(self, node: yaml.Node, what: str, allowed: tuple[str, ...] | None,
                hint: str = "") -> Iterator[tuple[str, yaml.Node, yaml.Node]]:
        """Yield (key, key node, value node), reporting bad and duplicate keys."""
        if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
            return
        if not isinstance(node, yaml.MappingNode):
            self.error(node, f"{what} must be a mapping", hint or "write `key: value` lines")
            return
        seen: dict[str, yaml.Node] = {}
        for knode, vnode in node.value:
            key = self.value(knode)
            if not isinstance(key, str):
                self.error(knode, f"{what}: key {key!r} must be a string",
                           "quote it or use a name")
                continue
            if key in seen:
                first = seen[key].start_mark.line + 1
                self.error(knode, f"duplicate key '{key}' in {what} (first at line {first})",
                           "YAML would silently keep only the last one; merge or rename them")
                continue
            seen[key] = knode
            if allowed is not None and key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                suggestion = f"did you mean '{close[0]}'? " if close else ""
                self.error(knode, f"unknown key '{key}' in {what}",
                           f"{suggestion}allowed: {', '.join(allowed)}")
                continue
            yield key, knode, vnode

    def integer(self, node: yaml.Node, what: str, minimum: int = 0) -> int | None:
        v = self.value(node)
        if isinstance(v, bool) or not isinstance(v, int):
            self.error(node, f"{what} must be an integer, got {_show(v)}",
                       f"write a whole number ≥ {minimum}")
            return None
        if v < minimum:
            self.error(node, f"{what} must be ≥ {minimum}, got {v}",
                       f"write a whole number ≥ {minimum}")
            return None
        return v

    def boolean(self, node: yaml.Node, what: str) -> bool | None:
        v = self.value(node)
        if not isinstance(v, bool):
            self.error(node, f"{what} must be true or false, got {_show(v)}",
                       "write true or false")
            return None
        return v

    def string(self, node: yaml.Node, what: str, hint: str = "") -> str | None:
        v = self.value(node)
        if not isinstance(v, str) or not v:
            self.error(node, f"{what} must be a non-empty string, got {_show(v)}", hint)
            return None
        return v

    def label(self, node: yaml.Node, what: str) -> str | None:
        v = self.value(node)
        if isinstance(v, str) and LABEL.match(v):
            return v
        suggestion = ""
        if isinstance(v, str | int):
            fixed = re.sub(r"[^a-z0-9-]+", "-", str(v).lower()).strip("-")[:63].strip("-")
            if fixed and LABEL.match(fixed):
                suggestion = f"write '{fixed}' — "
        self.error(node, f"{what} {_show(v)} is not a lowercase DNS label",
                   f"{suggestion}use a-z, 0-9 and '-', 1–63 characters, "
                   "not starting or ending with '-'")
        return None

    def duration(self, node: yaml.Node, what: str) -> float | None:
        v = self.value(node)
        try:
            if isinstance(v, str | int | float):
                return parse_duration(v)
        except ValueError:
            pass
        self.error(node, f"{what} must be a duration, got {_show(v)}",
                   "write for example 30s, 5m or 1h")
        return None

    def schema(self, node: yaml.Node, what: str, latest: int | None) -> tuple[bool, int | None]:
        """(ok, version) where version None means latest."""
        v = self.value(node)
        if v == "latest":
            return True, None
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            self.error(node, f"{what} must be an integer ≥ 0 or latest, got {_show(v)}",
                       "write latest, or a migration number such as 2")
            return False, None
        if latest is not None and v > latest:
            self.error(node, f"{what} {v} is above the newest migration ({latest})",
                       f"write a version from 0 to {latest}, or latest")
            return False, None
        return True, v

    def path(self, node: yaml.Node, what: str, base: Path) -> Path | None:
        v = self.string(node, what, "write a directory path")
        if v is None:
            return None
        if "\x00" in v:
            self.error(node, f"{what} contains a NUL byte", "write a plain path")
            return None
        return Path(os.path.normpath(base / os.path.expanduser(v)))

    # -- the document
    def document(self, text: str, base: Path, latest_for: Callable[[Path], int | None],
                 source: Path) -> Desired | None:
        try:
            root = yaml.compose(text, Loader=_LOADER)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark else None
            col = mark.column + 1 if mark else None
            self.problems.append(Problem(self.file, line, col, f"YAML syntax error: {exc.problem}",
                                         "fix the indentation or quoting near here"))
            return None
        except yaml.YAMLError as exc:
            self.problems.append(Problem(self.file, None, None, f"YAML error: {exc}"))
            return None
        if root is None:
            self.problems.append(Problem(self.file, 1, 1, "file is empty",
                                         "write at least `version: 1` and a `tenants:` mapping"))
            return None
        if not isinstance(root, yaml.MappingNode):
            self.error(root, "the document must be a mapping",
                       "start with `version: 1` then settings/regions/tenants")
            return None

        sections: dict[str, yaml.Node] = {}
        for key, _k, vnode in self.mapping(root, "the document", _TOP_KEYS):
            sections[key] = vnode
        if "version" not in sections:
            self.error(root, "missing `version`", f"add `version: {FORMAT_VERSION}` at the top")
        elif self.value(sections["version"]) != FORMAT_VERSION:
            self.error(sections["version"],
                       f"unsupported format version {_show(self.value(sections['version']))}",
                       f"write `version: {FORMAT_VERSION}`")

        settings = self.settings(sections.get("settings"), base, latest_for)
        latest = self.latest
        glob = self.globals_(sections.get("globals"))
        regions = self.regions(sections.get("regions"), settings, base)
        tenants = self.tenants(sections.get("tenants"), regions, settings, latest)
        if settings is None:
            return None
        return Desired(
            source=source,
            settings=settings,
            globals=MappingProxyType(glob),
            regions=MappingProxyType(regions),
            tenants=MappingProxyType(dict(sorted(tenants.items()))),
        )

    def settings(self, node: yaml.Node | None, base: Path,
                 latest_for: Callable[[Path], int | None]) -> Settings | None:
        raw: dict[str, Any] = {}
        nodes: dict[str, yaml.Node] = {}
        if node is not None:
            for key, _k, v in self.mapping(node, "settings", tuple(_SETTINGS_KEYS)):
                nodes[key] = v
        ok = True
        data_dir = base / "data"
        if "data_dir" in nodes:
            p = self.path(nodes["data_dir"], "settings.data_dir", base)
            ok &= p is not None
            data_dir = p or data_dir
        if data_dir == Path(data_dir.anchor):
            self.error(nodes.get("data_dir"), "settings.data_dir must not be a filesystem root",
                       "write a dedicated directory such as data or /srv/tenants")
            ok = False
        central = data_dir / "central.db"
        if "central" in nodes:
            p = self.path(nodes["central"], "settings.central", base)
            ok &= p is not None
            central = p or central
        raw["migrations_dir"] = base / "migrations"
        if "migrations" in nodes:
            p = self.path(nodes["migrations"], "settings.migrations", base)
            ok &= p is not None
            raw["migrations_dir"] = p or raw["migrations_dir"]
        self.latest = latest = latest_for(raw["migrations_dir"])
        if "domain" in nodes:
            d = self.value(nodes["domain"])
            if isinstance(d, str) and is_hostname(d):
                raw["domain"] = d
            else:
                ok = False
                self.error(nodes["domain"], f"settings.domain {_show(d)} is not a lowercase "
                           "hostname", "write for example yoursaas.com")
        if "schema" in nodes:
            good, version = self.schema(nodes["schema"], "settings.schema", latest)
            ok &= good
            raw["schema"] = version
        if "prune" in nodes:
            v = self.value(nodes["prune"])
            if v is False or v == "archive":
                raw["prune"] = v == "archive"
            else:
                ok = False
                hint = "write false or archive" + (
                    " (the reconciler never deletes tenants)" if v in ("delete", True) else "")
                self.error(nodes["prune"], f"settings.prune must be false or archive, "
                           f"got {_show(v)}", hint)
        for key, conv in (("prune_limit", self.integer), ("interval", self.duration),
                          ("busy_timeout", self.duration)):
            if key in nodes:
                got = conv(nodes[key], f"settings.{key}")
                ok &= got is not None
                if got is not None:
                    raw[key] = got
        if raw.get("interval") == 0:
            self.error(nodes["interval"], "settings.interval must be greater than 0",
                       "write for example 60s")
            ok = False
        if "rollout" in nodes:
            r: dict[str, Any] = {}
            for key, _k, v in self.mapping(nodes["rollout"], "settings.rollout", _ROLLOUT_KEYS):
                value: int | bool | None
                if key == "snapshot":
                    value = self.boolean(v, "settings.rollout.snapshot")
                else:
                    minimum = 1 if key in ("batch", "parallel") else 0
                    value = self.integer(v, f"settings.rollout.{key}", minimum)
                ok &= value is not None
                if value is not None:
                    r[key] = value
            raw["rollout"] = Rollout(**r)
        if "git" in nodes:
            g: dict[str, str] = {}
            for key, _k, v in self.mapping(nodes["git"], "settings.git", ("remote", "branch")):
                s = self.string(v, f"settings.git.{key}", "write a remote or branch name")
                if s is not None and (s.startswith("-") or any(c.isspace() for c in s)):
                    self.error(v, f"settings.git.{key} {s!r} is not a valid git name",
                               "write for example origin or main")
                    s = None
                ok &= s is not None
                if s is not None:
                    g[key] = s
            raw["git"] = GitSettings(**g)
        if not ok:
            return None
        return Settings(data_dir=data_dir, central=central, **raw)

    def globals_(self, node: yaml.Node | None) -> dict[str, str]:
        out: dict[str, str] = {}
        if node is None:
            return out
        for key, _k, v in self.mapping(node, "globals", None):
            val = self.value(v)
            if isinstance(val, bool):
                out[key] = "true" if val else "false"
            elif isinstance(val, str | int | float):
                out[key] = str(val)
            else:
                self.error(v, f"globals.{key} must be a string, number or boolean",
                           "write a single value; nested mappings and lists are not mirrored")
        return out

    def regions(self, node: yaml.Node | None, settings: Settings | None,
                base: Path) -> dict[str, Region]:
        out: dict[str, Region] = {}
        if node is None:
            self.error(None, "missing `regions:` section",
                       "declare at least one region, e.g. `regions: {eu: {}}`")
            return out
        for name_text, knode, v in self.mapping(node, "regions", None):
            self.region_names.add(name_text)
            name = self.label(knode, "region name")
            path_node: yaml.Node | None = None
            for _key, _k, pv in self.mapping(v, f"regions.{name_text}", ("path",),
                                            "write `{}` or `{path: /some/dir}`"):
                path_node = pv
            if name is None or settings is None:
                continue
            path = settings.data_dir / name
            if path_node is not None:
                p = self.path(path_node, f"regions.{name}.path", base)
                if p is None:
                    continue
                path = p
            bad = self._region_path_problem(path, settings)
            if bad:
                self.error(path_node or knode, f"region '{name}' directory {path} {bad}",
                           "give every region its own directory, outside the others")
                continue
            for other, region in out.items():
                if _nested(path, region.path):
                    self.error(path_node or knode, f"region '{name}' directory {path} overlaps "
                               f"region '{other}' ({region.path})",
                               "give every region its own directory, outside the others")
                    break
            else:
                out[name] = Region(name, path)
        if not out and not self.problems:
            self.error(node, "no regions declared", "declare at least one, e.g. `eu: {}`")
        return out

    @staticmethod
    def _region_path_problem(path: Path, settings: Settings) -> str:
        data = settings.data_dir
        if path == data or data.is_relative_to(path):
            return "contains the data directory itself"
        if any(path.is_relative_to(data / r) for r in RESERVED_DIRS):
            return "lies inside a reserved folder (_archive/_retired)"
        if settings.central.is_relative_to(path):
            return "contains the central registry"
        if path == Path(path.anchor):
            return "is a filesystem root"
        return ""

    def tenants(self, node: yaml.Node | None, regions: dict[str, Region],
                settings: Settings | None, latest: int | None) -> dict[str, TenantSpec]:
        out: dict[str, TenantSpec] = {}
        if node is None:
            return out
        owners: dict[str, tuple[str, yaml.Node | None]] = {}
        if settings is not None and settings.domain:
            for name_text, _k, _v in self.mapping(node, "tenants", None):
                owners[f"{name_text}.{settings.domain}"] = (name_text, None)
        for name_text, knode, vnode in self.mapping(node, "tenants", None):
            name = self.label(knode, "tenant name")
            fields: dict[str, Any] = {}
            has_region = False
            for key, _fk, v in self.mapping(vnode, f"tenants.{name_text}", _TENANT_KEYS,
                                            "write `{region: eu}`"):
                if key == "region":
                    has_region = True
                    r = self.value(v)
                    if isinstance(r, str) and r in regions:
                        fields["region"] = r
                    elif isinstance(r, str) and r in self.region_names:
                        pass  # the region itself is invalid and was reported there
                    elif isinstance(r, str) and r:
                        known = ", ".join(sorted(regions)) or "none"
                        self.error(v, f"tenant '{name_text}' is in region '{r}', which is not "
                                   "declared", f"declare it under regions: or use one of: {known}")
                    else:
                        self.error(v, f"tenants.{name_text}.region must be a region name, "
                                   f"got {_show(r)}", "write for example `region: eu`")
                elif key == "schema":
                    good, version = self.schema(v, f"tenants.{name_text}.schema", latest)
                    if good:
                        fields["schema"] = version
                elif key == "domains":
                    fields["domains"] = self.domains(v, name_text, owners)
                else:
                    b = self.boolean(v, f"tenants.{name_text}.{key}")
                    if b is not None:
                        fields[key] = b
            if not has_region and isinstance(vnode, yaml.MappingNode | yaml.ScalarNode):
                self.error(knode, f"tenant '{name_text}' has no region",
                           "add `region: <name>` with a declared region")
            if name is not None and "region" in fields:
                out[name] = TenantSpec(name=name, **fields)
        return out

    def domains(self, node: yaml.Node, tenant: str,
                owners: dict[str, tuple[str, yaml.Node | None]]) -> tuple[str, ...]:
        if not isinstance(node, yaml.SequenceNode):
            self.error(node, f"tenants.{tenant}.domains must be a list",
                       "write for example `domains: [acme.example.com]`")
            return ()
        out: list[str] = []
        for item in node.value:
            d = self.value(item)
            if not isinstance(d, str) or not is_hostname(d):
                lowered = d.lower().rstrip(".") if isinstance(d, str) else ""
                hint = (f"write '{lowered}'" if is_hostname(lowered)
                        else "write a lowercase hostname such as app.example.com")
                self.error(item, f"domain {_show(d)} of tenant '{tenant}' is not a lowercase "
                           "hostname", hint)
                continue
            if (d in owners and owners[d][0] != tenant) or d in out:
                owner, onode = owners.get(d, (tenant, None))
                where = f" (line {onode.start_mark.line + 1})" if onode is not None else \
                    " (its generated subdomain)" if owner != tenant else ""
                self.error(item, f"domain '{d}' is already used by tenant '{owner}'{where}",
                           "every domain routes to exactly one tenant; remove one of them")
                continue
            owners[d] = (tenant, item)
            out.append(d)
        return tuple(out)


def _nested(a: Path, b: Path) -> bool:
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def _show(v: Any) -> str:
    if isinstance(v, yaml.Node):
        return {"MappingNode": "a mapping", "SequenceNode": "a list"}.get(
            type(v).__name__, "a value")
    if v is None:
        return "nothing (null)"
    return repr(v)
