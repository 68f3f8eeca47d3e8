"""desired.load: every rule of DESIGN §2, each problem located and with a hint.

Files are real files in tmp_path; ``latest_for`` stands in for the migration catalog
(which has its own tests) and says the newest migration is 3 unless a test says else.
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
import sqlite3
import time
from pathlib import Path

import pytest

from reconciler import desired
from reconciler.desired import Desired, Rollout
from reconciler.errors import InvalidInput, Problem
from tests.conftest import REPO

BASE = """\
version: 1
settings:
  domain: yoursaas.com
  interval: 60s
  rollout: {canary: 1, batch: 25, parallel: 4}
globals:
  support_email: help@yoursaas.com
regions:
  eu: {}
  us: {}
tenants:
  aaron: {region: eu}
  acme: {region: us, domains: [acme.example.com]}
  globex: {region: eu, schema: 2}
"""


def write(tmp_path: Path, text: str | bytes, name: str = "tenants.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, text: str | bytes, latest: int | None = 3) -> Desired:
    return desired.load(write(tmp_path, text), lambda _d: latest)


def problems(tmp_path: Path, text: str | bytes, latest: int | None = 3) -> list[Problem]:
    with pytest.raises(InvalidInput) as info:
        load(tmp_path, text, latest)
    return list(info.value.problems)


def edit(old: str, new: str) -> str:
    assert old in BASE, old
    return BASE.replace(old, new, 1)


# --------------------------------------------------------------------------- valid files


def test_base_document_loads_into_frozen_values(tmp_path: Path) -> None:
    d = load(tmp_path, BASE)
    assert list(d.tenants) == ["aaron", "acme", "globex"]
    assert d.tenants["acme"].domains == ("acme.example.com",)
    assert d.tenants["globex"].schema == 2
    assert d.tenant_path("aaron", "eu") == tmp_path / "data" / "eu" / "aaron.db"
    assert d.globals == {"support_email": "help@yoursaas.com"}
    assert d.domains() == {"aaron.yoursaas.com": "aaron", "acme.yoursaas.com": "acme",
                           "acme.example.com": "acme", "globex.yoursaas.com": "globex"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.settings.interval = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        d.tenants["evil"] = d.tenants["aaron"]  # type: ignore[index]


def test_design_example_loads_with_every_key(tmp_path: Path) -> None:
    d = load(tmp_path, """\
version: 1
settings:
  data_dir: data
  central: data/central.db
  migrations: migrations
  domain: yoursaas.com
  schema: latest
  prune: archive
  prune_limit: 10
  interval: 60s
  busy_timeout: 2s
  rollout: {canary: 1, batch: 25, parallel: 4, max_failures: 0, snapshot: true}
  git: {remote: origin, branch: main}
globals:
  support_email: help@yoursaas.com
regions:
  eu: {}
  us: {path: /srv/tenants/us}
tenants:
  aaron: {region: eu}
  acme:  {region: us, schema: 2, domains: [acme.example.com]}
  globex: {region: eu, suspended: true}
  initech: {region: us, protected: true}
""")
    s = d.settings
    assert (s.data_dir, s.central, s.migrations_dir) == (
        tmp_path / "data", tmp_path / "data" / "central.db", tmp_path / "migrations")
    assert (s.domain, s.schema, s.prune, s.prune_limit, s.interval, s.busy_timeout) == (
        "yoursaas.com", None, True, 10, 60.0, 2.0)
    assert s.rollout == Rollout(1, 25, 4, 0, True)
    assert s.git is not None and (s.git.remote, s.git.branch) == ("origin", "main")
    assert d.regions["us"].path == Path("/srv/tenants/us")
    assert d.tenants["globex"].suspended and d.tenants["initech"].protected
    assert d.target_version(d.tenants["acme"], 3) == 2
    assert d.target_version(d.tenants["aaron"], 3) == 3


def test_a_tenant_pinned_to_latest_follows_the_catalog_not_the_fleet_default(
        tmp_path: Path) -> None:
    d = load(tmp_path, edit("interval: 60s", "schema: 1").replace(
        "aaron: {region: eu}", "aaron: {region: eu, schema: latest}"))
    assert d.target_version(d.tenants["aaron"], 3) == 3
    assert d.target_version(d.tenants["acme"], 3) == 1


def test_empty_optional_sections_mean_their_defaults(tmp_path: Path) -> None:
    d = load(tmp_path, "version: 1\nsettings:\n  git:\n  rollout:\nglobals:\n"
             "regions: {eu: }\ntenants:\n")
    assert d.settings.git is None
    assert d.settings.rollout == Rollout()
    assert (dict(d.globals), d.tenants) == ({}, {})
    assert d.regions["eu"].path == tmp_path / "data" / "eu"


def test_minimal_document_gets_documented_defaults(tmp_path: Path) -> None:
    d = load(tmp_path, "version: 1\nregions: {eu: {}}\ntenants: {}\n")
    s = d.settings
    assert s.data_dir == tmp_path / "data"
    assert s.central == tmp_path / "data" / "central.db"
    assert s.migrations_dir == tmp_path / "migrations"
    assert (s.domain, s.schema, s.prune, s.prune_limit, s.interval, s.busy_timeout,
            s.rollout, s.git) == (None, None, False, 10, 60.0, 5.0, Rollout(), None)
    assert d.regions["eu"].path == tmp_path / "data" / "eu"
    assert d.tenants == {}


def test_relative_paths_are_relative_to_the_file_not_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "conf").mkdir()
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path / "conf", "version: 1\nsettings: {data_dir: ../fleet}\n"
                 "regions: {eu: {}, us: {path: elsewhere/us}}\ntenants: {}\n")
    d = desired.load(Path("conf") / path.name, lambda _d: 3)
    assert d.settings.data_dir == tmp_path / "fleet"
    assert d.regions["us"].path == tmp_path / "conf" / "elsewhere" / "us"


def test_shipped_tenants_yaml_is_valid(tmp_path: Path) -> None:
    d = load(tmp_path, (REPO / "tenants.yaml").read_text())
    assert d.tenants and d.regions


@pytest.mark.parametrize("text, seconds", [
    ("60s", 60), ("5m", 300), ("1h30m", 5400), ("1h 30m", 5400), ("500ms", 0.5),
    ("1.5m", 90), ("60", 60), ("2d", 172800), ("90", 90)])
def test_interval_formats(tmp_path: Path, text: str, seconds: float) -> None:
    d = load(tmp_path, edit("interval: 60s", f"interval: {text}"))
    assert d.settings.interval == seconds


def test_names_are_read_as_written_not_as_yaml_numbers_or_booleans(tmp_path: Path) -> None:
    d = load(tmp_path, "version: 1\nregions: {no: {}}\ntenants:\n  007: {region: no}\n"
             "  'on': {region: no}\n  yes: {region: no}\n")
    assert sorted(d.tenants) == ["007", "on", "yes"]
    assert d.tenants["007"].region == "no"


def test_globals_are_mirrored_as_written(tmp_path: Path) -> None:
    d = load(tmp_path, edit("  support_email: help@yoursaas.com\n",
                            "  support_email: help@yoursaas.com\n  phone: 0044123\n"
                            "  launch: 2024-01-01\n  ratio: 1.50\n  beta: yes\n  off: false\n"
                            "  empty: ''\n  note: |\n    two\n    lines\n"))
    assert dict(d.globals) == {"support_email": "help@yoursaas.com", "phone": "0044123",
                               "launch": "2024-01-01", "ratio": "1.50", "beta": "true",
                               "off": "false", "empty": "", "note": "two\nlines\n"}


def test_plain_aliases_are_allowed(tmp_path: Path) -> None:
    d = load(tmp_path, "version: 1\nregions: {eu: {}}\ntenants:\n  a: &t {region: eu}\n"
             "  b: *t\n")
    assert d.tenants["b"].region == "eu"


def test_a_tenant_may_repeat_its_own_generated_domain(tmp_path: Path) -> None:
    d = load(tmp_path, edit("domains: [acme.example.com]", "domains: [acme.yoursaas.com]"))
    assert d.domains()["acme.yoursaas.com"] == "acme"


def test_pins_are_checked_for_sign_only_when_the_catalog_is_invalid(tmp_path: Path) -> None:
    d = load(tmp_path, edit("schema: 2", "schema: 40"), latest=None)
    assert d.tenants["globex"].schema == 40
    found = problems(tmp_path, edit("schema: 2", "schema: -1"), latest=None)
    assert [(p.line, p.column) for p in found] == [(14, 32)]


def test_central_may_be_an_existing_registry(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    sqlite3.connect(tmp_path / "data" / "central.db").execute("CREATE TABLE x (a)").connection \
        .commit()
    assert load(tmp_path, BASE).settings.central == tmp_path / "data" / "central.db"


# --------------------------------------------------------------------------- invalid files

# (id, document, [(line, column)], message fragment, hint fragment)
CASES: list[tuple[str, str, list[tuple[int, int]], str, str]] = [
    # unknown keys, with a suggestion
    ("unknown-top-key", edit("tenants:", "tenant:"), [(1, 1), (11, 1)], "unknown key 'tenant'",
     "did you mean 'tenants'"),
    ("unknown-setting", edit("interval:", "intervall:"), [(4, 3)], "unknown key 'intervall'",
     "did you mean 'interval'"),
    ("unknown-tenant-key", edit("aaron: {region: eu}", "aaron: {regoin: eu}"), [(12, 3), (12, 11)],
     "unknown key 'regoin'", "did you mean 'region'"),
    ("unknown-rollout-key", edit("canary: 1", "canaries: 1"), [(5, 13)], "unknown key 'canaries'",
     "did you mean 'canary'"),
    ("unknown-region-key", edit("us: {}", "us: {dir: /srv/us}"), [(10, 8)], "unknown key 'dir'",
     "path"),
    # wrong types
    ("version-string", edit("version: 1", "version: '1'"), [(1, 10)], "format version '1'",
     "write `version: 1`"),
    ("version-bool", edit("version: 1", "version: true"), [(1, 10)], "format version true",
     "write `version: 1`"),
    ("version-float", edit("version: 1", "version: 1.0"), [(1, 10)], "format version 1.0",
     "write `version: 1`"),
    ("version-missing", edit("version: 1\n", ""), [(1, 1)], "missing `version`",
     "add `version: 1`"),
    ("settings-list", edit("settings:\n  domain: yoursaas.com\n  interval: 60s\n"
                           "  rollout: {canary: 1, batch: 25, parallel: 4}\n",
                           "settings: [domain]\n"), [(2, 11)], "settings must be a mapping",
     "key: value"),
    ("prune-limit-quoted", edit("interval: 60s", "prune_limit: '5'"), [(4, 16)],
     "must be a whole number", "write 5 without quotes"),
    ("batch-zero", edit("batch: 25", "batch: 0"), [(5, 31)], "batch must be ≥ 1", "≥ 1"),
    ("parallel-negative", edit("parallel: 4", "parallel: -1"), [(5, 45)],
     "parallel must be from 1 to 256", "from 1 to 256"),
    ("parallel-huge", edit("parallel: 4", "parallel: 100000"), [(5, 45)], "from 1 to 256",
     "from 1 to 256"),
    ("canary-float", edit("canary: 1", "canary: 1.5"), [(5, 21)], "whole number, got 1.5",
     "whole number"),
    ("snapshot-quoted", edit("parallel: 4}", "parallel: 4, snapshot: 'true'}"), [(5, 58)],
     "true or false", "write true without quotes"),
    ("suspended-number", edit("aaron: {region: eu}", "aaron: {region: eu, suspended: 1}"),
     [(12, 34)], "tenants.aaron.suspended must be true or false", "write true or false"),
    ("tenant-scalar", edit("aaron: {region: eu}", "aaron: eu"), [(12, 10)],
     "tenants.aaron must be a mapping", "write `aaron: {region: eu}`"),
    ("tenant-list", edit("aaron: {region: eu}", "aaron: [eu]"), [(12, 10)],
     "tenants.aaron must be a mapping", "aaron: {region: eu}"),
    ("tenants-list", edit("tenants:\n", "tenants: [aaron]\nx:\n"), [(11, 10), (12, 1)],
     "tenants must be a mapping", "name: {region: eu}"),
    ("complex-key", edit("aaron: {region: eu}", "? [a, b]\n  : {region: eu}"), [(12, 5)],
     "has a key that is a list", "plain name"),
    ("custom-tag", edit("batch: 25", "batch: !!python/object:os.system 25"), [(5, 31)],
     "YAML tag !!python/object:os.system is not supported", "plain value"),
    ("merge-key", edit("globex: {region: eu, schema: 2}", "globex: {<<: {region: eu}}"),
     [(14, 12)], "merge keys (<<) are not supported", "write the keys out"),
    # duplicate keys at every level
    ("dup-top", BASE + "version: 1\n", [(15, 1)], "duplicate key 'version' in the document "
     "(first at line 1, column 1)", "silently keep only the last one"),
    ("dup-setting", edit("interval: 60s", "interval: 60s\n  interval: 5m"), [(5, 3)],
     "duplicate key 'interval' in settings (first at line 4", "merge"),
    ("dup-rollout", edit("batch: 25", "batch: 25, batch: 5"), [(5, 35)],
     "duplicate key 'batch' in settings.rollout", "merge"),
    ("dup-region", edit("us: {}", "us: {}\n  eu: {path: /srv/eu}"), [(11, 3)],
     "duplicate key 'eu' in regions (first at line 9", "merge"),
    ("dup-tenant", BASE + "  aaron: {region: us}\n", [(15, 3)],
     "duplicate key 'aaron' in tenants (first at line 12", "merge"),
    ("dup-tenant-field", edit("aaron: {region: eu}", "aaron: {region: eu, region: us}"),
     [(12, 23)], "duplicate key 'region' in tenants.aaron", "merge"),
    ("dup-global", edit("  support_email: help@yoursaas.com\n",
                        "  support_email: help@yoursaas.com\n  support_email: x@y.com\n"),
     [(8, 3)], "duplicate key 'support_email' in globals", "merge"),
    # names
    ("tenant-uppercase", edit("aaron: {region: eu}", "Aaron_Corp: {region: eu}"), [(12, 3)],
     "tenant name 'Aaron_Corp' is not a lowercase DNS label", "write 'aaron-corp'"),
    ("tenant-traversal", edit("aaron: {region: eu}", "'../../etc/passwd': {region: eu}"),
     [(12, 3)], "not a lowercase DNS label", "a-z, 0-9"),
    ("tenant-slash", edit("aaron: {region: eu}", "'a/b': {region: eu}"), [(12, 3)],
     "not a lowercase DNS label", "write 'a-b'"),
    ("tenant-too-long", edit("aaron: {region: eu}", "a" * 64 + ": {region: eu}"), [(12, 3)],
     "not a lowercase DNS label", "1–63 characters"),
    ("tenant-leading-hyphen", edit("aaron: {region: eu}", "-aaron: {region: eu}"), [(12, 3)],
     "not a lowercase DNS label", "write 'aaron'"),
    ("region-uppercase", edit("us: {}", "US: {}"), [(10, 3), (13, 18)],
     "region name 'US' is not a lowercase DNS label", "write 'us'"),
    ("region-undeclared", edit("aaron: {region: eu}", "aaron: {region: uss}"), [(12, 19)],
     "region 'uss', which is not declared", "did you mean 'us'"),
    ("region-missing", edit("aaron: {region: eu}", "aaron: {suspended: true}"), [(12, 3)],
     "tenant 'aaron' has no region", "region: eu"),
    ("region-null", edit("aaron: {region: eu}", "aaron:"), [(12, 3)], "has no region",
     "region: eu"),
    ("regions-missing", edit("regions:\n  eu: {}\n  us: {}\n", ""), [(1, 1), (9, 19), (10, 18),
                                                                    (11, 20)],
     "missing `regions:`", "regions: {eu: {}}"),
    ("regions-empty", edit("regions:\n  eu: {}\n  us: {}\n", "regions: {}\n"),
     [(8, 10), (10, 19), (11, 18), (12, 20)], "no regions declared", "eu: {}"),
    ("tenants-missing", BASE[: BASE.index("tenants:")], [(1, 1)], "missing `tenants:`",
     "tenants: {}"),
    # schema pins
    ("pin-above-latest", edit("schema: 2", "schema: 4"), [(14, 32)],
     "schema 4 is above the newest migration (3)", "from 0 to 3, or latest"),
    ("pin-negative", edit("schema: 2", "schema: -1"), [(14, 32)], "migration number or latest",
     "from 0 to 3"),
    ("pin-quoted", edit("schema: 2", "schema: '2'"), [(14, 32)], "got '2'",
     "write 2 without quotes"),
    ("pin-Latest", edit("schema: 2", "schema: Latest"), [(14, 32)], "got 'Latest'",
     "write latest (lowercase)"),
    ("settings-schema-above", edit("interval: 60s", "schema: 9"), [(4, 11)],
     "settings.schema 9 is above the newest migration (3)", "0 to 3"),
    # domains
    ("domain-uppercase", edit("acme.example.com", "Acme.Example.com"), [(13, 32)],
     "tenants.acme.domains entry 'Acme.Example.com' is not a lowercase hostname",
     "write 'acme.example.com'"),
    ("domain-url", edit("acme.example.com", "'https://acme.example.com:443/'"), [(13, 32)],
     "not a lowercase hostname", "write 'acme.example.com'"),
    ("domain-wildcard", edit("acme.example.com", "'*.example.com'"), [(13, 32)],
     "not a lowercase hostname", "no scheme, port, path or wildcard"),
    ("domain-ip", edit("acme.example.com", "10.0.0.1"), [(13, 32)], "not a lowercase hostname",
     "app.example.com"),
    ("domains-not-list", edit("[acme.example.com]", "acme.example.com"), [(13, 31)],
     "domains must be a list", "write `domains: [acme.example.com]`"),
    ("domain-dup-across", edit("aaron: {region: eu}", "aaron: {region: eu, domains: "
                               "[acme.example.com]}"), [(13, 32)],
     "domain 'acme.example.com' is already used by tenant 'aaron' (line 12)",
     "exactly one tenant"),
    ("domain-dup-within", edit("[acme.example.com]", "[acme.example.com, acme.example.com]"),
     [(13, 50)], "already used by tenant 'acme'", "remove one"),
    ("domain-generated", edit("[acme.example.com]", "[aaron.yoursaas.com]"), [(13, 32)],
     "domain 'aaron.yoursaas.com' is already used by tenant 'aaron' (its generated subdomain)",
     "exactly one tenant"),
    ("settings-domain-bad", edit("domain: yoursaas.com", "domain: YourSaaS.com."), [(3, 11)],
     "settings.domain 'YourSaaS.com.' is not a lowercase hostname", "write 'yoursaas.com'"),
    # paths: nothing may point outside the data and region directories' proper places
    ("data-dir-root", edit("domain: yoursaas.com", "data_dir: /"), [(3, 13)],
     "must not be a filesystem root", "dedicated directory"),
    ("region-root", edit("us: {}", "us: {path: /}"), [(10, 14)], "is a filesystem root",
     "its own directory"),
    ("region-is-data-dir", edit("us: {}", "us: {path: data}"), [(10, 14)],
     "contains the data directory itself", "its own directory"),
    ("region-contains-data-dir", edit("us: {}", "us: {path: .}"), [(10, 14)],
     "contains the data directory itself", "its own directory"),
    ("region-in-archive", edit("us: {}", "us: {path: data/_archive/us}"), [(10, 14)],
     "overlaps a reserved folder (_archive/_retired)", "its own directory"),
    ("region-is-retired", edit("us: {}", "us: {path: data/_retired}"), [(10, 14)],
     "overlaps a reserved folder", "its own directory"),
    ("region-same-as-other", edit("us: {}", "us: {path: data/eu}"), [(10, 14)],
     "overlaps region 'eu'", "outside the others"),
    ("region-nested", edit("us: {}", "us: {path: data/eu/us}"), [(10, 14)],
     "overlaps region 'eu'", "outside the others"),
    ("central-inside-region", edit("domain: yoursaas.com", "central: data/eu/central.db"),
     [(3, 12)], "lies inside region 'eu'", "keep the registry out of region directories"),
    ("region-holds-central", edit("us: {}", "us: {path: srv/us}").replace(
        "domain: yoursaas.com", "central: srv/us/central.db"),
     [(10, 14)], "contains the central registry", "its own directory"),
    ("region-is-migrations", edit("us: {}", "us: {path: migrations}"), [(10, 14)],
     "overlaps the migrations directory", "its own directory"),
    ("central-is-data-dir", edit("domain: yoursaas.com", "central: data"), [(3, 12)],
     "is the data directory", "data/central.db"),
    ("central-in-archive", edit("domain: yoursaas.com", "central: data/_archive/c.db"),
     [(3, 12)], "reserved folder", "data/central.db"),
    ("central-in-migrations", edit("domain: yoursaas.com", "central: migrations/c.db"),
     [(3, 12)], "inside the migrations directory", "data/central.db"),
    ("central-is-this-file", edit("domain: yoursaas.com", "central: tenants.yaml"), [(3, 12)],
     "is not a SQLite database", "registry file"),
    ("data-dir-in-migrations", edit("domain: yoursaas.com", "data_dir: migrations/data"),
     [(3, 13)], "lies inside the migrations directory", "outside the migrations"),
    ("path-env-var", edit("us: {}", "us: {path: $SRV/us}"), [(10, 14)],
     "environment variable, which is not expanded", "write the path out"),
    ("path-empty", edit("us: {}", "us: {path: ''}"), [(10, 14)], "regions.us.path is empty",
     "directory path"),
    # prune
    ("prune-delete", edit("interval: 60s", "prune: delete"), [(4, 10)],
     "settings.prune must be false or archive, got 'delete'", "never deletes"),
    ("prune-true", edit("interval: 60s", "prune: true"), [(4, 10)], "got true",
     "never deletes"),
    # durations
    ("interval-words", edit("interval: 60s", "interval: 5 minutes"), [(4, 13)],
     "settings.interval must be a duration", "30s, 5m"),
    ("interval-negative", edit("interval: 60s", "interval: -5s"), [(4, 13)], "must be a duration",
     "30s"),
    ("interval-zero", edit("interval: 60s", "interval: 0s"), [(4, 13)], "more than 0",
     "up to 30d"),
    ("interval-inf", edit("interval: 60s", "interval: .inf"), [(4, 13)], "must be a duration",
     "30s"),
    ("interval-too-long", edit("interval: 60s", "interval: 31d"), [(4, 13)], "at most 30d",
     "up to 30d"),
    ("busy-timeout-too-long", edit("interval: 60s", "busy_timeout: 2h"), [(4, 17)],
     "at most 1h", "up to 1h"),
    # globals
    ("global-list", edit("help@yoursaas.com", "[a, b]"), [(7, 18)],
     "globals.support_email must be a single value, got a list", "not mirrored"),
    ("global-mapping", edit("help@yoursaas.com", "{a: b}"), [(7, 18)], "got a mapping",
     "not mirrored"),
    ("global-null", edit("help@yoursaas.com", "~"), [(7, 18)], "has no value",
     'write `support_email: ""`'),
    # git
    ("git-option-injection", edit("interval: 60s", "git: {remote: --upload-pack=x}"), [(4, 17)],
     "not a valid git remote name", "origin"),
    ("git-branch-dots", edit("interval: 60s", "git: {branch: main..x}"), [(4, 17)],
     "not a valid git branch name", "main"),
    ("git-branch-space", edit("interval: 60s", "git: {branch: 'my branch'}"), [(4, 17)],
     "not a valid git branch name", "main"),
    # whole-document problems
    ("empty", "", [(1, 1)], "file is empty", "version: 1"),
    ("only-comments", "# nothing here\n\n", [(1, 1)], "file is empty", "version: 1"),
    ("document-list", "- version: 1\n", [(1, 1)], "the document must be a mapping, got a list",
     "start with `version: 1`"),
    ("document-scalar", "hello\n", [(1, 1)], "the document must be a mapping", "version: 1"),
    # YAML syntax
    ("tab-indent", edit("  eu: {}", "\teu: {}"), [(9, 1)], "tab", "indent with spaces"),
    ("truncated-flow", BASE[: BASE.index("us, domains") + 2], [(14, 1)], "YAML syntax error",
     "truncated"),
    ("truncated-quote", BASE + "  initech: {region: 'e", [(15, 23)], "end of stream",
     "truncated"),
    ("two-documents", BASE + "---\nversion: 1\n", [(15, 1)], "another document",
     "remove the extra `---`"),
    ("undefined-alias", edit("aaron: {region: eu}", "aaron: *nothing"), [(12, 10)],
     "undefined alias", "define the anchor"),
    ("colon-in-value", edit("help@yoursaas.com", "mail: help"), [(7, 22)],
     "mapping values are not allowed", "quote values"),
    ("nul-byte", edit("aaron", "aa\x00ron"), [(12, 5)], "control character 0x00",
     "binary or corrupted"),
]


@pytest.mark.parametrize("text, where, message, hint",
                         [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_invalid_document_is_reported_at_the_offending_node(
        tmp_path: Path, text: str, where: list[tuple[int, int]], message: str,
        hint: str) -> None:
    found = problems(tmp_path, text)
    assert sorted((p.line, p.column) for p in found) == sorted(where), "\n".join(map(str, found))
    assert any(message in p.message and hint in p.hint for p in found), \
        "\n".join(map(str, found))
    for p in found:
        assert p.file == str(tmp_path / "tenants.yaml")
        assert p.hint, f"no hint saying what to write instead: {p}"


def test_case_ids_are_distinct() -> None:
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))


def test_every_problem_is_reported_together_in_file_order(tmp_path: Path) -> None:
    text = (BASE.replace("tenants:", "tenant:").replace("batch: 25", "batch: 0")
            .replace("aaron: {region: eu}", "Aaron: {region: mars}")
            .replace("schema: 2", "schema: 7").replace("interval: 60s", "interval: soon"))
    found = problems(tmp_path, text)
    assert [(p.line, p.column) for p in found] == sorted((p.line or 0, p.column or 0)
                                                         for p in found)
    messages = " | ".join(p.message for p in found)
    for fragment in ("interval must be a duration", "batch must be", "unknown key 'tenant'",
                     "missing `tenants:`"):
        assert fragment in messages
    # with the section renamed, tenants are not checked; fix that and the rest shows up
    found = problems(tmp_path, text.replace("tenant:", "tenants:"))
    messages = " | ".join(p.message for p in found)
    for fragment in ("tenant name 'Aaron'", "region 'mars'", "schema 7 is above",
                     "interval must be", "batch must be"):
        assert fragment in messages


def test_thousands_of_problems_are_capped_with_a_count(tmp_path: Path) -> None:
    text = "version: 1\nregions: {eu: {}}\ntenants:\n" + "".join(
        f"  T{i}: {{region: eu}}\n" for i in range(300))
    found = problems(tmp_path, text)
    assert len(found) == desired.MAX_PROBLEMS + 1
    assert found[-1].message == f"… and {300 - desired.MAX_PROBLEMS} more problems"
    assert found[0].line == 4


def test_invalid_input_changes_nothing_on_disk(tmp_path: Path) -> None:
    before = sorted(p.name for p in tmp_path.iterdir())
    problems(tmp_path, edit("us: {}", "us: {path: /}"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "tenants.yaml"])


def test_central_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data" / "central.db").mkdir(parents=True)
    found = problems(tmp_path, BASE)
    assert [(p.line, p.message) for p in found] == [
        (None, f"settings.central {tmp_path / 'data' / 'central.db'} is a directory")]


def test_data_dir_or_registry_folder_blocked_by_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    found = problems(tmp_path, edit("domain: yoursaas.com", "data_dir: afile/data"))
    assert [(p.line, p.column) for p in found] == [(3, 13)]
    assert found[0].message.endswith(f"cannot be a directory: {tmp_path / 'afile'} is a file")
    found = problems(tmp_path, edit("domain: yoursaas.com", "central: afile/central.db"))
    assert [(p.line, p.column) for p in found] == [(3, 12)]
    assert "cannot be created" in found[0].message


def test_symlinked_spellings_of_one_region_directory_overlap(tmp_path: Path) -> None:
    (tmp_path / "disk").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "disk")
    found = problems(tmp_path, edit("eu: {}\n  us: {}", "eu: {path: disk}\n  us: {path: link}"))
    assert [(p.line, p.column) for p in found] == [(10, 14)]
    assert "overlaps region 'eu'" in found[0].message


# --------------------------------------------------------------------------- unreadable files


def test_missing_file_says_how_to_point_at_one(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as info:
        desired.load(tmp_path / "nope.yaml", lambda _d: 3)
    (p,) = info.value.problems
    assert (p.line, p.message) == (None, "file not found")
    assert "-c/--config" in p.hint


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as info:
        desired.load(tmp_path, lambda _d: 3)
    (p,) = info.value.problems
    assert p.message == "is a directory, not a file"
    assert "tenants.yaml" in p.hint


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "tenants.yaml"
    os.mkfifo(fifo)
    with pytest.raises(InvalidInput) as info:
        desired.load(fifo, lambda _d: 3)
    assert info.value.problems[0].message == "is not a regular file"


def test_binary_garbage_is_located_at_the_first_bad_byte(tmp_path: Path) -> None:
    found = problems(tmp_path, BASE.encode()[:30] + b"\xff\xfe\x00garbage")
    assert [(p.line, p.column, p.message) for p in found] == [
        (3, 10, "not UTF-8 text (byte 0xff)")]


def test_oversized_file_is_refused_before_parsing(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    with path.open("wb") as f:
        f.truncate(desired.MAX_BYTES + 1)
    started = time.monotonic()
    with pytest.raises(InvalidInput) as info:
        desired.load(path, lambda _d: 3)
    assert time.monotonic() - started < 1
    assert "the limit is 16 MiB" in info.value.problems[0].message


def test_billion_laughs_is_refused_quickly(tmp_path: Path) -> None:
    levels = ["lol0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, 10):
        levels.append(f"lol{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    text = "version: 1\nregions: {eu: {}}\nglobals:\n" + "".join(
        f"  {lv}\n" for lv in levels) + "tenants:\n  a: {region: eu, domains: *l9}\n"
    started = time.monotonic()
    found = problems(tmp_path, text)
    assert time.monotonic() - started < 2
    assert [(p.line, p.column) for p in found] == [(1, 1)]
    assert "aliases expand this document" in found[0].message
    assert "billion laughs" in found[0].hint


def test_quadratic_alias_fanout_is_refused(tmp_path: Path) -> None:
    domains = ", ".join(f"d{i}.example.com" for i in range(3000))
    text = (f"version: 1\nregions: {{eu: {{}}}}\ntenants:\n  t0: &t {{region: eu, domains: "
            f"[{domains}]}}\n" + "".join(f"  t{i}: *t\n" for i in range(1, 3000)))
    started = time.monotonic()
    found = problems(tmp_path, text)
    assert time.monotonic() - started < 5
    assert [(p.line, p.column) for p in found] == [(1, 1)]
    assert found[0].message.startswith("aliases expand this document")


def test_recursive_alias_is_refused(tmp_path: Path) -> None:
    found = problems(tmp_path, "version: 1\nregions: {eu: {}}\ntenants: &a {x: *a}\n")
    assert [(p.line, p.column) for p in found] == [(3, 10)]
    assert "recursive alias" in found[0].message


def test_truncating_the_shipped_file_anywhere_only_ever_yields_located_problems(
        tmp_path: Path) -> None:
    """A half-written file (editor crash, interrupted copy) never escapes as a traceback."""
    data = (REPO / "tenants.yaml").read_bytes()
    for end in range(len(data)):
        try:
            load(tmp_path, data[:end])
        except InvalidInput as exc:
            assert exc.problems and all(p.hint for p in exc.problems)


def test_random_corruption_only_ever_yields_located_problems(tmp_path: Path) -> None:
    rng = random.Random(20261126)
    data = BASE.encode()
    alphabet = b" \t\n:-[]{},&*!|>'\"#%@`?\x00\xff\xc3aZ9."
    for _ in range(400):
        buf = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            buf[rng.randrange(len(buf))] = rng.choice(alphabet)
        try:
            load(tmp_path, bytes(buf))
        except InvalidInput as exc:
            assert exc.problems
            for p in exc.problems:
                assert p.hint, p
                assert p.line is None or p.line >= 1


def test_suggestions_are_valid_names() -> None:
    assert desired.suggest_label("Acme Corp!") == "acme-corp"
    assert desired.suggest_label("acme") is None  # nothing to suggest for a valid name
    assert desired.suggest_label("___") is None
    assert desired.suggest_hostname("HTTPS://user@Shop.Acme.COM:8443/x") == "shop.acme.com"
    assert desired.suggest_hostname("*.acme.com") is None
    for name in ("a", "a-b", "0", "x" * 63):
        assert re.fullmatch(desired.LABEL, name)
    for bad in ("", "-a", "a-", "A", "a_b", "x" * 64, "a.b"):
        assert not re.fullmatch(desired.LABEL, bad)


def _fleet_text(n: int) -> str:
    return "version: 1\nsettings: {domain: yoursaas.com}\nregions: {eu: {}, us: {}}\n" \
        "tenants:\n" + "".join(f"  t{i}: {{region: {'eu' if i % 2 else 'us'}, "
                               f"domains: [t{i}.example.com]}}\n" for i in range(n))


def test_ten_thousand_tenants_load_quickly(tmp_path: Path) -> None:
    started = time.monotonic()
    d = load(tmp_path, _fleet_text(10_000))
    assert len(d.tenants) == 10_000 and len(d.domains()) == 20_000
    assert time.monotonic() - started < 5  # ~0.5 s measured; generous for a busy machine


@pytest.mark.slow
def test_hundred_thousand_tenants_load_in_seconds(tmp_path: Path) -> None:
    started = time.monotonic()
    d = load(tmp_path, _fleet_text(100_000))
    assert len(d.tenants) == 100_000
    assert time.monotonic() - started < 30  # ~5 s measured (5 MiB of YAML)
