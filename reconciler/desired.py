"""Desired state: ``tenants.yaml`` loaded, validated and frozen.

Why this module exists: everything the reconciler does is driven by this file, so a
mistake in it must be caught *before* anything touches a tenant, and reported so an
operator can fix it without guessing. This module holds the values (frozen dataclasses)
and the schema of ``tenants.yaml`` — which sections and keys exist, their defaults, and
the rules that keep tenant files where they belong. Reading the YAML safely and checking
single values at their line and column is generic and lives in ``yamlnodes``; the
schema rules here are a ``yamlnodes.NodeChecker`` with one method per section. The
``settings:`` section (its values and checks) lives in ``settingsconfig`` and
``settings.notify`` in ``notifyconfig``, mixed into the checker here; which paths may
hold which files is ``layout``. ``Settings``, ``Rollout``, ``GitSettings`` and
``NotifyTarget`` are re-exported here, where callers import the desired state from.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import yaml

from reconciler.errors import InvalidInput, Problem
from reconciler.layout import HOLDS_CENTRAL, nested, real, region_path_problem
from reconciler.notifyconfig import NOTIFY_EVENTS as NOTIFY_EVENTS
from reconciler.notifyconfig import NOTIFY_FORMATS as NOTIFY_FORMATS
from reconciler.notifyconfig import NotifyTarget as NotifyTarget
from reconciler.settingsconfig import GitSettings as GitSettings
from reconciler.settingsconfig import Rollout as Rollout
from reconciler.settingsconfig import Settings as Settings
from reconciler.settingsconfig import SettingsChecker
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
MAX_BYTES = 16 * 1024 * 1024  # ~500k tenants; anything bigger is the wrong file
MAX_PROBLEMS = 50  # a wrong file can produce thousands; the first ones are enough to act on


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


def load(path: Path, latest_for: Callable[[Path], int | None], *,
         base: Path | None = None) -> Desired:
    """Parse and validate ``path``. ``latest_for(migrations_dir)`` gives the highest
    migration (None if the catalog is invalid: pins are then checked for sign only).
    ``base``: the directory relative paths are resolved against (default: ``path``'s;
    pull mode reads an older commit from a temporary copy as if it were in place).

    Raises ``InvalidInput`` with every problem found (never anything else).
    """
    file = str(path)
    text = read_text(path, file, MAX_BYTES, ReadHints(
        missing="create it, or pass the desired-state file with -c/--config or "
                "RECONCILE_CONFIG",
        directory=f"pass the file itself, e.g. -c {Path(file) / 'tenants.yaml'}",
        not_regular="pass the tenants.yaml file itself"))
    checker = _Checker(file, text)
    desired = checker.document(base or path.resolve().parent, latest_for, path)
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


_TENANT_KEYS = ("region", "schema", "domains", "suspended", "protected")
_TOP_KEYS = ("version", "settings", "globals", "regions", "tenants", "retired")


def _endpoint_host(host: str) -> bool:
    """An endpoint's host: an IP address, or DNS labels (``localhost`` included)."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return len(host) <= 253 and all(LABEL.match(label) for label in host.split("."))


class _Checker(SettingsChecker):
    """The rules of ``tenants.yaml``, one method per section, on the generic readers."""

    def __init__(self, file: str, text: str) -> None:
        super().__init__(file, text)
        self.region_names: set[str] = set()

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
            bad = region_path_problem(path, settings) \
                if path_node is not None or self.data_dir_ok else ""
            if bad == HOLDS_CENTRAL and path_node is None and self.central_node is not None:
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
                if nested(path, region.path) or nested(real(path), real(region.path)):
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
