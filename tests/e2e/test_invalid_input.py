"""Invalid input through the real CLI changes nothing (DESIGN §2, §3, §8).

A fleet is converged once by a successful ``reconcile apply`` (module fixture); each case
copies that fleet, breaks its ``tenants.yaml`` or ``migrations/`` in one distinct way, and
runs ``reconcile apply``, ``reconcile --dry-run`` and ``reconcile validate``. Each must
exit 1, name the file (with line and column where there is one), print no traceback, and
leave every byte of the project folder — data directory, registry, lock file — as it was.
(The copy's registry still names the template's paths; that is harmless because every
case must be refused before anything is observed — and if one were not, its run would
try to act and the byte comparison would catch it.)
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Fleet
from tests.test_desired import BASE  # the same file, so locations match the unit tests


@dataclass(frozen=True)
class Case:
    id: str
    change: Callable[[Fleet], None]
    where: str  # "file:line:col" or "file" (no line to give)
    says: str  # a fragment of the message


def yaml_edit(old: str, new: str) -> Callable[[Fleet], None]:
    assert old in BASE, old

    def change(f: Fleet) -> None:
        f.config.write_text(BASE.replace(old, new, 1))
    return change


def yaml_text(text: str | bytes) -> Callable[[Fleet], None]:
    def change(f: Fleet) -> None:
        if isinstance(text, bytes):
            f.config.write_bytes(text)
        else:
            f.config.write_text(text)
    return change


def migration(name: str, text: str | None) -> Callable[[Fleet], None]:
    """Write (or with None: delete) a file under migrations/."""
    def change(f: Fleet) -> None:
        path = f.migrations / name
        if text is None:
            path.unlink()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    return change


def both(*changes: Callable[[Fleet], None]) -> Callable[[Fleet], None]:
    def change(f: Fleet) -> None:
        for c in changes:
            c(f)
    return change


def config_is_a_directory(f: Fleet) -> None:
    f.config.unlink()
    f.config.mkdir()
    (f.config / "tenants.yaml").write_text(BASE)


def config_missing(f: Fleet) -> None:
    f.config.unlink()


def rename_migration(old: str, new: str) -> Callable[[Fleet], None]:
    def change(f: Fleet) -> None:
        (f.migrations / old).rename(f.migrations / new)
    return change


def billion_laughs(f: Fleet) -> None:
    levels = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"] + [
        f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 10)]
    f.config.write_text(BASE.replace("globals:\n", "globals:\n" + "".join(
        f"  {lv}\n" for lv in levels)).replace("domains: [acme.example.com]", "domains: *l9"))


CASES = [
    # tenants.yaml: the file itself
    Case("yaml-tab-indent", yaml_edit("  eu: {}", "\teu: {}"), "tenants.yaml:9:1",
         "indent with spaces"),
    Case("yaml-half-written", yaml_text(BASE[: BASE.index("us, domains") + 2]),
         "tenants.yaml:14:1", "is it truncated"),
    Case("yaml-unclosed-quote", yaml_text(BASE + "  initech: {region: 'e"),
         "tenants.yaml:15:23", "found unexpected end of stream"),
    Case("yaml-binary-garbage", yaml_text(BASE.encode()[:30] + b"\xff\xfe\x00\x01garbage"),
         "tenants.yaml:3:10", "not UTF-8 text"),
    Case("yaml-nul-byte", yaml_edit("aaron", "aa\x00ron"), "tenants.yaml:12:5",
         "control character 0x00"),
    Case("yaml-empty", yaml_text(""), "tenants.yaml:1:1", "file is empty"),
    Case("yaml-not-a-mapping", yaml_text("- aaron\n- acme\n"), "tenants.yaml:1:1",
         "the document must be a mapping"),
    Case("yaml-two-documents", yaml_text(BASE + "---\nversion: 1\n"), "tenants.yaml:15:1",
         "another document"),
    Case("yaml-billion-laughs", billion_laughs, "tenants.yaml:1:1",
         "aliases expand this document"),
    Case("config-is-a-directory", config_is_a_directory, "tenants.yaml",
         "is a directory, not a file"),
    Case("config-missing", config_missing, "tenants.yaml", "file not found"),
    # tenants.yaml: structure and types
    Case("duplicate-tenant", yaml_text(BASE + "  aaron: {region: us}\n"), "tenants.yaml:15:3",
         "duplicate key 'aaron' in tenants"),
    Case("duplicate-nested-key", yaml_edit("batch: 25", "batch: 25, batch: 5"),
         "tenants.yaml:5:35", "duplicate key 'batch' in settings.rollout"),
    Case("unknown-top-key", yaml_edit("globals:", "global:"), "tenants.yaml:6:1",
         "unknown key 'global'"),
    Case("unknown-tenant-key", yaml_edit("aaron: {region: eu}", "aaron: {region: eu, pin: 2}"),
         "tenants.yaml:12:23", "unknown key 'pin'"),
    Case("unsupported-version", yaml_edit("version: 1", "version: 2"), "tenants.yaml:1:10",
         "unsupported format version 2"),
    Case("merge-key", yaml_edit("globex: {region: eu, schema: 2}", "globex: {<<: {region: eu}}"),
         "tenants.yaml:14:12", "merge keys"),
    Case("uppercase-tenant", yaml_edit("aaron:", "Aaron:"), "tenants.yaml:12:3",
         "tenant name 'Aaron' is not a lowercase DNS label"),
    Case("path-traversal-name", yaml_edit("aaron:", "'../../etc/x':"), "tenants.yaml:12:3",
         "is not a lowercase DNS label"),
    Case("undeclared-region", yaml_edit("aaron: {region: eu}", "aaron: {region: ap}"),
         "tenants.yaml:12:19", "region 'ap', which is not declared"),
    Case("pin-above-latest", yaml_edit("schema: 2", "schema: 4"), "tenants.yaml:14:32",
         "above the newest migration (3)"),
    Case("pin-negative", yaml_edit("schema: 2", "schema: -1"), "tenants.yaml:14:32",
         "must be a migration number or latest"),
    Case("domain-uppercase", yaml_edit("acme.example.com", "ACME.example.com"),
         "tenants.yaml:13:32", "is not a lowercase hostname"),
    Case("domain-duplicate", yaml_edit("aaron: {region: eu}",
                                       "aaron: {region: eu, domains: [acme.example.com]}"),
         "tenants.yaml:13:32", "already used by tenant 'aaron'"),
    Case("domain-is-generated-subdomain", yaml_edit("acme.example.com", "aaron.yoursaas.com"),
         "tenants.yaml:13:32", "its generated subdomain"),
    Case("data-dir-root", yaml_edit("domain: yoursaas.com", "data_dir: /"),
         "tenants.yaml:3:13", "must not be a filesystem root"),
    Case("data-dir-is-a-file", yaml_edit("domain: yoursaas.com", "data_dir: tenants.yaml"),
         "tenants.yaml:3:13", "is a file"),
    Case("region-is-data-dir", yaml_edit("us: {}", "us: {path: data}"), "tenants.yaml:10:14",
         "contains the data directory itself"),
    Case("regions-overlap", yaml_edit("us: {}", "us: {path: data/eu/us}"),
         "tenants.yaml:10:14", "overlaps region 'eu'"),
    Case("region-in-archive", yaml_edit("us: {}", "us: {path: data/_archive}"),
         "tenants.yaml:10:14", "reserved folder"),
    Case("central-inside-region", yaml_edit("domain: yoursaas.com",
                                            "central: data/eu/central.db"),
         "tenants.yaml:3:12", "lies inside region 'eu'"),
    Case("central-not-sqlite", yaml_edit("domain: yoursaas.com", "central: tenants.yaml"),
         "tenants.yaml:3:12", "is not a SQLite database"),
    Case("prune-delete", yaml_edit("interval: 60s", "prune: delete"), "tenants.yaml:4:10",
         "must be false or archive"),
    Case("batch-zero", yaml_edit("batch: 25", "batch: 0"), "tenants.yaml:5:31",
         "batch must be ≥ 1"),
    Case("parallel-negative", yaml_edit("parallel: 4", "parallel: -2"), "tenants.yaml:5:45",
         "parallel must be from 1 to 256"),
    Case("interval-bad", yaml_edit("interval: 60s", "interval: 5 minutes"),
         "tenants.yaml:4:13", "must be a duration"),
    Case("global-not-scalar", yaml_edit("help@yoursaas.com", "[a, b]"), "tenants.yaml:7:18",
         "must be a single value"),
    # migrations/
    Case("migration-gap", rename_migration("0003_backfill_display_names.py",
                                           "0004_backfill_display_names.py"),
         "0004_backfill_display_names.py", "gap: 0003 is missing"),
    Case("migration-duplicate-number", migration("0002_other.sql", "CREATE TABLE x (a);\n"),
         "0002_other.sql", "duplicate migration number 0002"),
    Case("migration-bad-name", migration("4_add_tags.sql", "CREATE TABLE tags (a);\n"),
         "4_add_tags.sql", "not NNNN_slug.sql"),
    Case("migration-empty", migration("0004_nothing.sql", "\n\n"),
         "0004_nothing.sql:1:1", "migration is empty"),
    Case("migration-commits", migration("0004_tags.sql", "CREATE TABLE tags (a);\nCOMMIT;\n"),
         "0004_tags.sql:2:1", "manages the transaction itself"),
    Case("migration-attach", migration("0004_tags.sql", "ATTACH 'x.db' AS x;\n"),
         "0004_tags.sql:1:1", "outside the tenant's database"),
    Case("migration-sql-syntax", migration("0004_tags.sql", "CREATE TABLE tags (\n  a,\n);\n"),
         "0004_tags.sql:3:1", "SQL syntax error"),
    Case("migration-py-syntax", migration("0004_tags.py", "def migrate(conn)\n    pass\n"),
         "0004_tags.py:1:18", "Python syntax error"),
    Case("migration-py-without-migrate", migration("0004_tags.py", "def up(conn):\n    pass\n"),
         "0004_tags.py", "has no migrate(conn) function"),
    Case("migration-edited-after-applied",
         migration("0001_create_notes.sql", "CREATE TABLE users (id INTEGER PRIMARY KEY);\n"),
         "0001_create_notes.sql", "edited after it was applied: 3 tenants have version 1"),
    Case("migration-applied-then-removed", both(migration("0003_backfill_display_names.py", None),
                                                migration("checks/0003_display_names.sql", None)),
         "0003_backfill_display_names", "was applied (2 tenants have it) but its file is gone"),
    Case("check-for-missing-version", migration("checks/0007_x.sql", "SELECT 1 WHERE 0;\n"),
         "0007_x.sql", "check for version 0007"),
    Case("check-writes", migration("checks/0002_x.sql", "DELETE FROM notes;\n"),
         "0002_x.sql:1:1", "does not only read"),
    Case("migrations-dir-missing", yaml_edit("interval: 60s", "migrations: nowhere"),
         "nowhere", "migrations directory not found"),
]


def snapshot(root: Path) -> dict[str, str]:
    """Every path below ``root`` → sha256 of its bytes ("dir" for directories).

    Left out: the registry's ``-shm`` and an *empty* ``-wal``, which SQLite itself creates
    when a read-only connection (plan, validate) opens a WAL database whose side files
    were cleaned up; they hold no data. A ``-wal`` with any content would be a write, and
    still counts."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = "dir"
        for name in filenames:
            p = os.path.join(dirpath, name)
            if name.endswith(".db-shm") or (name.endswith(".db-wal") and
                                            os.path.getsize(p) == 0):
                continue
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def converged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    f = Fleet(tmp_path_factory.mktemp("template") / "fleet")
    f.root.mkdir()
    f.use_shipped_migrations()
    f.write_config(BASE)
    first = f.run("apply")
    assert first.returncode == 0, first.stdout + first.stderr
    assert f.user_version(f.path("aaron", "eu")) == 3
    assert f.user_version(f.path("globex", "eu")) == 2
    return f.root


def test_at_least_thirty_distinct_kinds() -> None:
    assert len({c.id for c in CASES}) == len(CASES) >= 30


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_invalid_input_exits_1_located_without_traceback_and_changes_nothing(
        converged: Path, tmp_path: Path, case: Case) -> None:
    fleet = Fleet(tmp_path / "fleet")
    shutil.copytree(converged, fleet.root, symlinks=True)
    case.change(fleet)
    before = snapshot(fleet.root)
    assert any(k.startswith("data/eu/") for k in before)  # the converged data is there
    for args in (("apply",), ("--dry-run",), ("validate",)):
        result = fleet.run(*args)
        output = result.stdout + result.stderr
        assert result.returncode == 1, f"{args}: {output}"
        assert "Traceback" not in output, output
        location = f"{case.where}: "  # "file:line:col: " or, with no line to give, "file: "
        assert location in result.stderr, f"{args}: expected {location!r} in {result.stderr}"
        assert case.says in result.stderr, f"{args}: {result.stderr}"
        assert "nothing was changed" in result.stderr
        assert snapshot(fleet.root) == before, f"{args} changed files"


def test_edited_migration_refuses_pending_work_until_restored(fleet: Fleet) -> None:
    """With real work pending (a new tenant, a new migration), an edited applied
    migration still stops the whole run before any tenant is touched; restoring the
    file lets the same run go through. (Converged in place, not copied: the registry
    holds absolute paths, and this run goes on to act.)"""
    fleet.write_config(BASE)
    first = fleet.run("apply")
    assert first.returncode == 0, first.stdout + first.stderr
    fleet.config.write_text(BASE + "  newco: {region: us}\n")
    fleet.write_migration("0004_tags.sql", "CREATE TABLE tags (name TEXT PRIMARY KEY);\n")
    original = (fleet.migrations / "0002_pin_notes.sql").read_text()
    (fleet.migrations / "0002_pin_notes.sql").write_text(original + "-- tweak\n")
    tenants_before = fleet.tenant_digests()

    refused = fleet.run("apply")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "0002_pin_notes.sql: edited after it was applied: 3 tenants have version 2" \
        in refused.stderr
    assert not fleet.path("newco", "us").exists()
    assert fleet.tenant_digests() == tenants_before

    (fleet.migrations / "0002_pin_notes.sql").write_text(original)
    done = fleet.run("apply")
    assert done.returncode == 0, done.stdout + done.stderr
    assert fleet.user_version(fleet.path("newco", "us")) == 4
    assert fleet.user_version(fleet.path("aaron", "eu")) == 4
    assert fleet.user_version(fleet.path("globex", "eu")) == 2  # pinned
