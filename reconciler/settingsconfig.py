"""``settings:`` of tenants.yaml: the fleet-wide settings, their values and their checks.

Why a module of its own: the settings are one self-contained section of the desired
state (where data, registry and migrations live, the rollout, git, drift, notification
and backup policies), and the largest; ``desired`` keeps the document's structure and
mixes these checks into its checker, like ``notifyconfig`` for ``settings.notify``.
The values are re-exported by ``desired``, where callers import them from.

Invariants: ``Settings`` and its parts are frozen; a setting missing or invalid gets its
default (an invalid one is reported at its line and column with a hint), so the other
sections are still checked against something sensible; ``data_dir``, ``central`` and
``migrations_dir`` are absolute and placed by the rules of ``layout``. Checking reads the
file system only to judge those paths (``layout``); the values do no I/O.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from reconciler import backup as backup_mod
from reconciler.backup import BackupSettings
from reconciler.layout import RESERVED_DIRS, file_in_the_way, nested, not_a_registry
from reconciler.notifyconfig import NotifyChecker, NotifyTarget
from reconciler.yamlnodes import BAD, YAML_TAG, is_null, kind, show

MAX_PARALLEL = 256  # one thread (and SQLite connection) per parallel migration
MAX_INTERVAL = 30 * 86400.0
DEFAULT_STALE_AFTER = 30.0  # settings.stale_after (issue 15)
MAX_BUSY_TIMEOUT = 3600.0


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
_BAD_GIT_NAME = re.compile(r"(^[-./]|\.\.|@\{|[\x00-\x20\x7f~^:?*\[\\]|[./]$|\.lock$|//)")


@dataclass(frozen=True)
class _Where:
    """A path setting's value and the node it was written at (None: the default)."""

    path: Path
    node: yaml.Node | None


class SettingsChecker(NotifyChecker):
    """The checks of ``settings:`` (and of schema pins), mixed into tenants.yaml's checker."""

    def __init__(self, file: str, text: str) -> None:
        super().__init__(file, text)
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
        blocker = file_in_the_way(data.path)
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
        elif nested(c, migrations):
            self.error(where, f"settings.central {c} lies inside the migrations directory",
                       "write a file path such as data/central.db")
        elif (blocker := file_in_the_way(c.parent)) is not None:
            self.error(where, f"settings.central {c} cannot be created: {blocker} is a file",
                       "write a path whose folders are directories, e.g. data/central.db")
        else:
            problem = not_a_registry(c)
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
                    elif "://" not in text and not os.path.isabs(text):  # issue 15
                        b["relative_at"] = (v.start_mark.line + 1, v.start_mark.column + 1,
                                          text)
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
