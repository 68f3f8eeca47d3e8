"""The newest valid commit of a real git repository (``lastvalid``, ``gitpull.checkout``,
``gitpull.first_parent``): older commits are read from a temporary checkout, the work
tree, its index and HEAD are left exactly as they were."""

from __future__ import annotations

import subprocess
from pathlib import Path

import structlog
from structlog.testing import capture_logs

from reconciler import gitpull, lastvalid
from tests.conftest import Fleet


def git(root: Path, *args: str) -> str:
    out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                         check=True)
    return out.stdout.strip()


def commit_all(root: Path, message: str) -> str:
    git(root, "add", "-A")
    git(root, "commit", "-q", "--allow-empty", "-m", message)
    return git(root, "rev-parse", "HEAD")


def repo(tmp_path: Path) -> tuple[Fleet, str]:
    """A fleet's folder as a git repository: tenants.yaml + the shipped migrations."""
    fleet = Fleet(tmp_path / "clone").use_shipped_migrations()
    (fleet.root / ".gitignore").write_text("data/\n")
    fleet.declare({"aaron": {"region": "eu"}})
    git(tmp_path, "init", "-q", "-b", "main", str(fleet.root))
    git(fleet.root, "config", "user.email", "dev@example.com")
    git(fleet.root, "config", "user.name", "Dev")
    return fleet, commit_all(fleet.root, "first")


def test_checkout_writes_an_older_commit_elsewhere_leaving_tree_index_and_head_alone(
        tmp_path: Path) -> None:
    fleet, first = repo(tmp_path)
    fleet.declare({"aaron": {"region": "eu"}, "beta": {"region": "us"}})
    head = commit_all(fleet.root, "second")
    index = (fleet.root / ".git" / "index").read_bytes()
    with gitpull.checkout(fleet.root, first) as old:
        assert old.commit == first and old.top == fleet.root
        assert "beta" not in (old.tree / "tenants.yaml").read_text()
        assert (old.tree / "migrations" / "0001_create_notes.sql").is_file()
        kept = old.tree
    assert not kept.exists()
    assert git(fleet.root, "rev-parse", "HEAD") == head
    assert git(fleet.root, "status", "--porcelain") == ""
    assert (fleet.root / ".git" / "index").read_bytes() == index
    assert "beta" in fleet.config.read_text()


def test_first_parent_walks_newest_first_to_the_applied_commit_skipping_merged_ones(
        tmp_path: Path) -> None:
    fleet, first = repo(tmp_path)
    a = commit_all(fleet.root, "A")
    git(fleet.root, "switch", "-q", "-c", "side", first)
    side = commit_all(fleet.root, "on a side branch")
    git(fleet.root, "switch", "-q", "main")
    git(fleet.root, "merge", "-q", "--no-ff", "-m", "merge side", "side")
    merge = git(fleet.root, "rev-parse", "HEAD")
    assert gitpull.first_parent(fleet.root, first, 50) == [merge, a]
    assert side not in gitpull.first_parent(fleet.root, None, 50)
    assert gitpull.first_parent(fleet.root, None, 2) == [merge, a]
    # a revision that is no commit here (a file digest) bounds nothing
    assert gitpull.first_parent(fleet.root, "sha256:" + "0" * 64, 50) == [merge, a, first]


def test_newest_valid_commit_is_read_with_its_own_migrations_and_real_paths(
        tmp_path: Path) -> None:
    fleet, first = repo(tmp_path)
    fleet.declare({"aaron": {"region": "eu"}, "beta": {"region": "us"}})
    a = commit_all(fleet.root, "A: beta")
    fleet.write_migration("0004_broken.sql", "CREATE TABLE (;\n")  # B: invalid migration
    fleet.declare({"aaron": {"region": "eu"}, "beta": {"region": "us"}, "Gina": {"region": "eu"}})
    b = commit_all(fleet.root, "B: invalid")
    log = structlog.get_logger()

    with capture_logs() as logs:
        found = lastvalid.newest_valid(fleet.config, None, first, log)
    assert found is not None and found.revision == a
    assert set(found.desired.tenants) == {"aaron", "beta"}
    assert found.catalog.latest == 3  # A's migrations, not the work tree's 0004
    assert found.catalog.directory == fleet.migrations.resolve()
    assert all(m.path.parent == fleet.migrations.resolve() for m in found.catalog.migrations)
    assert found.desired.settings.central == fleet.central.resolve()
    assert found.desired.source == fleet.config
    assert [e["commit"] for e in logs if e["event"].startswith("commit invalid")] == [b]
    assert git(fleet.root, "rev-parse", "HEAD") == b
    assert git(fleet.root, "status", "--porcelain") == ""


def test_nothing_newer_than_the_applied_commit_is_valid_keeps_it(tmp_path: Path) -> None:
    fleet, _ = repo(tmp_path)
    fleet.declare({"aaron": {"region": "eu"}, "beta": {"region": "us"}})
    a = commit_all(fleet.root, "A")
    fleet.declare({"Gina": {"region": "eu"}})
    commit_all(fleet.root, "B: invalid")
    fleet.declare({"Gina": {"region": "eu"}, "Hugo": {"region": "us"}})
    commit_all(fleet.root, "C: still invalid")
    assert lastvalid.newest_valid(fleet.config, None, a, structlog.get_logger()) is None
    # not knowing what was applied (a fresh start on an invalid head): walk back to A
    found = lastvalid.newest_valid(fleet.config, None, None, structlog.get_logger())
    assert found is not None and found.revision == a


def test_outside_a_git_repository_it_logs_and_finds_nothing(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path / "plain").use_shipped_migrations()
    fleet.declare({"aaron": {"region": "eu"}})
    with capture_logs() as logs:
        assert lastvalid.newest_valid(fleet.config, None, None, structlog.get_logger()) is None
    assert [e["log_level"] for e in logs] == ["error"]
