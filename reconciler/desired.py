"""Desired state: ``tenants.yaml`` loaded, validated and frozen.

Why this module exists: everything the reconciler does is driven by this file, so a
mistake in it must be caught *before* anything touches a tenant, and reported so an
operator can fix it without guessing. This module holds the values (frozen dataclasses)
and the schema of ``tenants.yaml`` — which sections and keys exist, their defaults, and
the rules that keep tenant files where they belong. Reading the YAML safely and checking
single values at their line and column is generic and lives in ``yamlnodes``; the
schema rules here are a ``yamlnodes.NodeChecker`` with one method per section.

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
import ipaddress
import os
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import yaml

from reconciler import backup as backup_mod
from reconciler.backup import BackupSettings
from reconciler.errors import InvalidInput, Problem
from reconciler.notifyconfig import NOTIFY_EVENTS as NOTIFY_EVENTS
from reconciler.notifyconfig import NOTIFY_FORMATS as NOTIFY_FORMATS
from reconciler.notifyconfig import NotifyChecker
from reconciler.notifyconfig import NotifyTarget as NotifyTarget
from reconciler.yamlnodes import (
    BAD,
    PLAIN_TAGS,
    YAML_TAG,
    ReadHints,
    is_null,
    kind,
    read_text,
    short_tag,
    show,
)

# Re-exported: the label rules are generic, but callers and tests import them from here.
from reconciler.yamlnodes import LABEL as LABEL
from reconciler.yamlnodes import suggest_hostname as suggest_hostname
from reconciler.yamlnodes import suggest_label as suggest_label

FORMAT_VERSION = 1
RESERVED_DIRS = ("_archive", "_retired")
MAX_BYTES = 16 * 1024 * 1024  # ~500k tenants; anything bigger is the wrong file
MAX_PROBLEMS = 50  # a wrong file can produce thousands; the first ones are enough to act on
MAX_PARALLEL = 256  # one thread (and SQLite connection) per parallel migration
MAX_INTERVAL = 30 * 86400.0
DEFAULT_STALE_AFTER = 30.0  # settings.stale_after (issue 15)
MAX_BUSY_TIMEOUT = 3600.0
_SQLITE_MAGIC = b"SQLite format 3\x00"


@dataclass(frozen=True)
class Rollout:
    canary: int = 1
    batch: int = 25
    parallel: int = 4
    max_failures: int = 0
    snapshot: bool = False
    transaction: str = "step"  # "step": one transaction per step; "tenant": one for all
    # ``snapshot: replica`` (issue 14): no local copy; a failed migration's tenant is put
    # back from its Litestream replica at the point recorded before its first step
    from_replica: bool = False


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
    drift: str = "block"  # block | warn | ignore (schema drift, see reconciler.drift)
    drift_ignore: tuple[str, ...] = ()  # fnmatch patterns of object names drift ignores
    # repr=False: plan.rollout_key hashes repr(settings), and adding a webhook must not
    # start a new rollout (nor lift a halt)
    notify: tuple[NotifyTarget, ...] = field(default=(), repr=False)
    backup: BackupSettings | None = None  # settings.backup: Litestream replication (issue 14)
    # issue 15: seconds after which a peer region's registry view is stale (repr=False:
    # not a reason to start a new rollout)
    stale_after: float = field(default=DEFAULT_STALE_AFTER, repr=False)

    @property
    def archive_dir(self) -> Path:
        return self.data_dir / "_archive"

    @property
    def retired_dir(self) -> Path:
        return self.data_dir / "_retired"

    @property
    def restore_dir(self) -> Path:
        """Where a point-in-time restore stages Litestream's copy (``pitr``)."""
        return self.data_dir / "_restore"

    @property
    def follow_dir(self) -> Path:
        """Where this host keeps its followed copies of other regions' registries
        (``<region>.db``, restored by Litestream; issue 15)."""
        return self.data_dir / "_follow"


@dataclass(frozen=True)
class Region:
    name: str
    path: Path  # absolute, normalised (symlinks are judged at observe time)
    # issue 15: where applications of this region are served (http/https URL), carried
    # by routing's TenantElsewhere; repr=False: not a reason to start a new rollout
    endpoint: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
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
    # ``retired:``: undeclared tenants an operator acknowledged — "known, keep the file,
    # do not route" (an acknowledged orphan is not a problem)
    retired: frozenset[str] = frozenset()

    def tenant_path(self, name: str, region: str) -> Path:
        return self.regions[region].path / f"{name}.db"

    @cached_property
    def path_texts(self) -> Mapping[str, str]:
        """Tenant → the text of ``tenant_path``, built once: every pass needs it for every
        tenant, and building 100k ``Path`` objects costs more than reading the files. By
        string concatenation where that is provably the same text (checked per region)."""
        prefixes: dict[str, str | None] = {}
        out: dict[str, str] = {}
        for spec in self.tenants.values():
            region = spec.region
            if region not in prefixes:
                # two unlike names must map to <same prefix><name>.db, else ask tenant_path
                a, b = (os.fspath(self.tenant_path(n, region)) for n in ("a", "z9-probe"))
                prefix = a[:-4]
                prefixes[region] = prefix if b == f"{prefix}z9-probe.db" else None
            known = prefixes[region]
            out[spec.name] = (f"{known}{spec.name}.db" if known is not None
                              else os.fspath(self.tenant_path(spec.name, region)))
        return MappingProxyType(out)

    def target_version(self, spec: TenantSpec, latest: int) -> int:
        if spec.schema is not None:
            return spec.schema
        return latest if self.settings.schema is None else self.settings.schema

    def domains(self) -> dict[str, str]:
        """Every routed hostname → tenant name (declared plus ``NAME.<domain>``); a new
        dict each call, copied from the one built on first use (a daemon plans with the
        same ``Desired`` for every pass, and at 100k tenants building it costs more)."""
        return self._domains.copy()

    @cached_property
    def _domains(self) -> dict[str, str]:  # never handed out: only copies of it
        out: dict[str, str] = {}
        for spec in self.tenants.values():
            if self.settings.domain:
                out[f"{spec.name}.{self.settings.domain}"] = spec.name
            for d in spec.domains:
                out[d] = spec.name
        return out


# --------------------------------------------------------------------------- loading


def load(path: Path, latest_for: Callable[[Path], int | None]) -> Desired:
    """Parse and validate ``path``. ``latest_for(migrations_dir)`` gives the highest
    migration (None if the catalog is invalid: pins are then checked for sign only).

    Raises ``InvalidInput`` with every problem found (never anything else).
    """
    file = str(path)
    text = read_text(path, file, MAX_BYTES, ReadHints(
        missing="create it, or pass the desired-state file with -c/--config or "
                "RECONCILE_CONFIG",
        directory=f"pass the file itself, e.g. -c {Path(file) / 'tenants.yaml'}",
        not_regular="pass the tenants.yaml file itself"))
    checker = _Checker(file, text)
    desired = checker.document(path.resolve().parent, latest_for, path)
    if checker.problems or desired is None:
        raise InvalidInput(_capped(checker.problems, file))
    return desired


def _capped(problems: list[Problem], file: str) -> list[Problem]:
    ordered = sorted(problems, key=lambda p: (p.file != file, p.line or 0, p.column or 0))
    if len(ordered) <= MAX_PROBLEMS:
        return ordered
    more = len(ordered) - MAX_PROBLEMS
    return [*ordered[:MAX_PROBLEMS],
            Problem(file, None, None, f"… and {more} more problem{'s' if more > 1 else ''}",
                    "fix the ones above and run `reconcile validate` again")]


_SETTINGS_KEYS = ("data_dir", "central", "migrations", "domain", "schema", "prune",
                  "prune_limit", "interval", "busy_timeout", "rollout", "git", "drift",
                  "drift_ignore", "notify", "backup", "stale_after")
_ROLLOUT_KEYS = ("canary", "batch", "parallel", "max_failures", "snapshot", "transaction")
TRANSACTIONS = ("step", "tenant")
_TRANSACTION_HINT = ("write step (each migration commits on its own) or tenant (all of a "
                     "tenant's pending migrations commit together, or none)")
_GIT_KEYS = ("remote", "branch")
DRIFT_POLICIES = ("block", "warn", "ignore")
_DRIFT_PATTERN = re.compile(r"^[A-Za-z0-9_.*?\[\]!$-]{1,200}$")
_BACKUP_KEYS = ("replica", "retention", "sync_interval", "lag_threshold", "processes")
_TENANT_KEYS = ("region", "schema", "domains", "suspended", "protected")
_TOP_KEYS = ("version", "settings", "globals", "regions", "tenants", "retired")
_BAD_GIT_NAME = re.compile(r"(^[-./]|\.\.|@\{|[\x00-\x20\x7f~^:?*\[\\]|[./]$|\.lock$|//)")


@dataclass(frozen=True)
class _Where:
    """A path setting's value and the node it was written at (None: the default)."""

    path: Path
    node: yaml.Node | None


def _endpoint_host(host: str) -> bool:
    """An endpoint's host: an IP address, or DNS labels (``localhost`` included)."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return len(host) <= 253 and all(LABEL.match(label) for label in host.split("."))


class _Checker(NotifyChecker):
    """The rules of ``tenants.yaml``, one method per section, on the generic readers."""

    def __init__(self, file: str, text: str) -> None:
        super().__init__(file, text)
        self.region_names: set[str] = set()
        self.data_dir_ok = True  # False: paths derived from it are not judged again
        self.central_node: yaml.Node | None = None  # where settings.central was written
        self._replica_snapshot: yaml.Node | None = None  # `rollout.snapshot: replica`

    def schema(self, node: yaml.Node, what: str, latest: int | None) -> tuple[bool, int | None]:
        """(ok, version) where version None means latest."""
        v = self.construct(node) if isinstance(node, yaml.ScalarNode) else node
        if v is BAD:
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
            self.error(node, f"{what} must be a migration number or latest, got {show(v)}",
                       hint)
            return False, None
        if latest is not None and v > latest:
            self.error(node, f"{what} {v} is above the newest migration ({latest})",
                       f"write a version from {upto}, or latest — or add the migration first")
            return False, None
        return True, v

    # -- the document
    def document(self, base: Path, latest_for: Callable[[Path], int | None],
                 source: Path) -> Desired | None:
        root = self.compose("write at least `version: 1`, a `regions:` and a "
                            "`tenants:` mapping")
        if root is None:
            return None
        if not isinstance(root, yaml.MappingNode):
            self.error(root, f"the document must be a mapping, got {kind(root)}",
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
            if v is not BAD and (isinstance(v, bool) or not isinstance(v, int)
                                  or v != FORMAT_VERSION):
                self.error(vnode, f"unsupported format version {show(v)}",
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
        retired = self.retired(sections.get("retired"), tenants)
        return Desired(
            source=source,
            settings=settings,
            globals=MappingProxyType(dict(sorted(glob.items()))),
            regions=MappingProxyType(regions),
            tenants=MappingProxyType(dict(sorted(tenants.items()))),
            retired=retired,
        )

    def retired(self, node: yaml.Node | None, tenants: dict[str, TenantSpec]
                ) -> frozenset[str]:
        """``retired: [name, …]``: tenant names, each once, none also under ``tenants:``."""
        if node is None or is_null(node):
            return frozenset()
        if not isinstance(node, yaml.SequenceNode):
            self.error(node, f"retired must be a list of tenant names, got {kind(node)}",
                       "write `retired: [oldco, initech]`")
            return frozenset()
        out: set[str] = set()
        for item in node.value:
            name = self.label(item, "retired tenant name")
            if name is None:
                continue
            if name in out:
                self.error(item, f"tenant '{name}' is listed twice under retired:",
                           "list each retired tenant once")
            elif name in tenants:
                self.error(item, f"tenant '{name}' is declared under tenants: and listed "
                           "under retired:", f"remove '{name}' from retired: to keep serving "
                           "it, or remove it from tenants: to retire it")
            out.add(name)
        return frozenset(out)

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
            elif v is not BAD:
                hint = "write false (report removed tenants) or archive (move their files to " \
                       "<data_dir>/_archive)"
                if v is True or v == "delete":
                    hint += "; the reconciler never deletes tenant data"
                self.error(pnode, f"settings.prune must be false or archive, got {show(v)}",
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
        if "git" in nodes and not is_null(nodes["git"]):  # `git:` left empty: pull mode off
            raw["git"] = self.git(nodes["git"])
        if "drift" in nodes:
            raw["drift"] = self.drift_policy(nodes["drift"])
        if "drift_ignore" in nodes:
            raw["drift_ignore"] = self.drift_ignore(nodes["drift_ignore"])
        if "notify" in nodes and not is_null(nodes["notify"]):
            raw["notify"] = self.notify(nodes["notify"])
        if "backup" in nodes and not is_null(nodes["backup"]):  # `backup:` empty: off
            raw["backup"] = self.backup(nodes["backup"], base)
        if "stale_after" in nodes:
            raw["stale_after"] = self.duration(nodes["stale_after"], "settings.stale_after",
                                               MAX_INTERVAL, allow_zero=False)
        if self._replica_snapshot is not None and \
                ("backup" not in nodes or is_null(nodes["backup"])):
            self.error(self._replica_snapshot, "settings.rollout.snapshot: replica needs backups "
                       "(the tenant is put back from its Litestream replica)",
                       "add `backup: {replica: /srv/backups}` under settings, or write "
                       "snapshot: true (a local copy)")
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
            value: int | bool | str | None
            if key == "transaction":
                value = self.text_of(v, "settings.rollout.transaction", _TRANSACTION_HINT)
                if value is not None and value not in TRANSACTIONS:
                    self.error(v, f"settings.rollout.transaction must be step or tenant, got "
                               f"{value!r}", _TRANSACTION_HINT)
                    value = None
            elif key == "snapshot":
                if isinstance(v, yaml.ScalarNode) and v.value == "replica":
                    r["from_replica"] = True  # snapshot stays false: no local copy
                    self._replica_snapshot = v
                    continue
                value = self.boolean(v, "settings.rollout.snapshot")
            elif key in ("batch", "parallel"):
                value = self.integer(v, f"settings.rollout.{key}", 1,
                                     MAX_PARALLEL if key == "parallel" else None)
            else:
                value = self.integer(v, f"settings.rollout.{key}", 0)
            if value is not None:
                r[key] = value
        return Rollout(**r)

    def drift_policy(self, node: yaml.Node) -> str | None:
        hint = ("write block (drifted tenants are not migrated), warn (migrated and "
                "reported) or ignore (not checked)")
        v = self.text_of(node, "settings.drift", hint)
        if v is not None and v not in DRIFT_POLICIES:
            self.error(node, f"settings.drift must be block, warn or ignore, got {v!r}",
                       f"write {v.strip().lower()}" if v.strip().lower() in DRIFT_POLICIES
                       else hint)
            return None
        return v

    def drift_ignore(self, node: yaml.Node) -> tuple[str, ...] | None:
        """Name patterns (``ops_*``, ``notes.tmp_?``) of objects drift ignores."""
        if isinstance(node, yaml.ScalarNode) and node.tag == YAML_TAG + "null":
            return ()
        if not isinstance(node, yaml.SequenceNode):
            example = node.value if isinstance(node, yaml.ScalarNode) else "ops_*"
            self.error(node, f"settings.drift_ignore must be a list, got {kind(node)}",
                       f"write `drift_ignore: [{example}]`")
            return None
        out: list[str] = []
        for item in node.value:
            v = self.text_of(item, "settings.drift_ignore entry",
                             "write a name pattern such as ops_* or notes.tmp_*")
            if v is None:
                continue
            if not _DRIFT_PATTERN.match(v):
                self.error(item, f"settings.drift_ignore entry {v!r} is not a name pattern",
                           "use letters, digits, _ . - and the wildcards * ? [ ], "
                           "e.g. ops_* or notes.tmp_*")
                continue
            out.append(v)
        return tuple(out)

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

    def backup(self, node: yaml.Node, base: Path) -> BackupSettings | None:
        """``settings.backup`` (issue 14): rules in ``reconciler.backup``."""
        b: dict[str, Any] = {}
        for key, _k, v in self.mapping(node, "settings.backup", _BACKUP_KEYS,
                                       "write for example `backup: {replica: "
                                       "file:///srv/backups}`"):
            what = f"settings.backup.{key}"
            if key == "replica":
                text = self.text_of(v, what, "write a URL such as file:///srv/backups")
                if text is not None:
                    url, message, hint = backup_mod.check_replica(text, base)
                    if url is None:
                        self.error(v, message, hint)
                    b["replica"] = url
            elif key == "retention":
                b[key] = self.duration(v, what, 3650 * 86400.0, allow_zero=False)
                if b[key] is not None and b[key] < backup_mod.MIN_RETENTION:
                    self.error(v, f"{what} must be at least 1h, got {b[key]:g}s",
                               "write for example 24h or 7d")
                    b[key] = None
            elif key == "processes":  # Litestream processes (issue 14): auto or 1..64
                if isinstance(v, yaml.ScalarNode) and v.value == "auto":
                    continue
                b[key] = self.integer(v, what, 1, backup_mod.MAX_PROCESSES)
            else:
                b[key] = self.duration(v, what, backup_mod.MAX_SYNC_INTERVAL if
                                       key == "sync_interval" else 30 * 86400.0,
                                       allow_zero=False)
        if "replica" not in b:
            self.error(node, "settings.backup needs a replica",
                       "write for example `backup: {replica: file:///srv/backups}`")
            return None
        if any(v is None for v in b.values()):
            return None  # each already reported
        return BackupSettings(**b)

    def globals_(self, node: yaml.Node | None) -> dict[str, str]:
        out: dict[str, str] = {}
        if node is None:
            return out
        for key, _k, v in self.mapping(node, "globals", None,
                                       "write `globals:` followed by indented `key: value` "
                                       "lines"):
            if not isinstance(v, yaml.ScalarNode):
                self.error(v, f"globals.{key} must be a single value, got {kind(v)}",
                           "write a string, number or boolean; nested mappings and lists are "
                           "not mirrored")
            elif v.tag not in PLAIN_TAGS:
                self.error(v, f"YAML tag {short_tag(v.tag)} is not supported",
                           "remove the tag and write a plain value")
            elif v.tag == YAML_TAG + "null":
                self.error(v, f"globals.{key} has no value",
                           f'write `{key}: ""` for an empty string, or remove the key')
            elif v.tag == YAML_TAG + "bool":
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
            endpoint: str | None = None
            for key, _k, pv in self.mapping(v, f"regions.{name_text}", ("path", "endpoint"),
                                            f"write `{name_text}: {{}}` or "
                                            f"`{name_text}: {{path: /some/dir}}`"):
                if key == "endpoint":
                    endpoint = self.endpoint(pv, f"regions.{name_text}.endpoint")
                else:
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
                out[name] = Region(name, path, endpoint)
        if declared == 0:
            self.error(node, "no regions declared",
                       "declare at least one, e.g. `regions: {eu: {}}`")
        return out

    def endpoint(self, node: yaml.Node, what: str) -> str | None:
        """``regions.<name>.endpoint`` (issue 15): an absolute http(s) URL whose host is a
        hostname (RFC 1123, ASCII: IDNs in their xn-- form) or an IP address, without
        spaces, credentials, query or fragment; returned without a trailing slash."""
        hint = "write the URL applications of that region are served at, for example " \
               "https://eu.example.com"
        text = self.text_of(node, what, hint)
        if text is None:
            return None
        try:
            parts = urlsplit(text)
            parts.port  # noqa: B018 (raises ValueError for a bad port)
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname \
                or not text.isascii() or any(c.isspace() for c in text) \
                or not _endpoint_host(parts.hostname):
            self.error(node, f"{what} {text!r} is not an http or https URL", hint)
            return None
        if parts.username or parts.password or parts.query or parts.fragment:
            self.error(node, f"{what} {text!r} must not carry credentials, a query or a "
                       "fragment", "write only scheme, host, port and path, e.g. "
                       "https://eu.example.com")
            return None
        return text.rstrip("/")

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
        if isinstance(vnode, yaml.ScalarNode) and vnode.tag != YAML_TAG + "null":
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
            k.tag == YAML_TAG + "merge" for k, _v in vnode.value)  # reported as such
        if not has_region and not merged and not isinstance(vnode, yaml.SequenceNode):
            self.error(knode, f"tenant '{name}' has no region",
                       f"write `{name}: {{region: {example}}}` with a declared region")
        return fields

    def domains(self, node: yaml.Node, tenant: str,
                owners: dict[str, tuple[str, yaml.Node | None]]) -> tuple[str, ...]:
        if isinstance(node, yaml.ScalarNode) and node.tag == YAML_TAG + "null":
            return ()
        if not isinstance(node, yaml.SequenceNode):
            example = node.value if isinstance(node, yaml.ScalarNode) else "acme.example.com"
            self.error(node, f"tenants.{tenant}.domains must be a list, got {kind(node)}",
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
