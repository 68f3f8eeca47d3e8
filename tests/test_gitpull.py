"""Pull mode against a real local bare repository as ``origin``: fast-forwards only."""

from __future__ import annotations

import subprocess
from pathlib import Path

from reconciler import gitpull


def git(root: Path, *args: str) -> str:
    out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                         check=True)
    return out.stdout.strip()


def commit(root: Path, name: str, text: str, message: str) -> str:
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(text)
    git(root, "add", name)
    git(root, "commit", "-q", "-m", message)
    return git(root, "rev-parse", "HEAD")


def setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    """origin (bare), dev (where people push from), clone (what the daemon pulls into)."""
    origin, dev, clone = tmp_path / "origin.git", tmp_path / "dev", tmp_path / "clone"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], check=True)
    subprocess.run(["git", "clone", "-q", str(origin), str(dev)], check=True,
                   capture_output=True)
    for r in (dev,):
        git(r, "config", "user.email", "dev@example.com")
        git(r, "config", "user.name", "Dev")
        git(r, "checkout", "-q", "-b", "main")
    commit(dev, "tenants.yaml", "version: 1\n", "first")
    git(dev, "push", "-q", "origin", "main")
    subprocess.run(["git", "clone", "-q", "-b", "main", str(origin), str(clone)], check=True)
    git(clone, "config", "user.email", "ops@example.com")
    git(clone, "config", "user.name", "Ops")
    return origin, dev, clone


WATCHED = ["tenants.yaml", "migrations"]


def test_up_to_date_clone_changes_nothing(tmp_path: Path) -> None:
    _, _, clone = setup(tmp_path)
    head = git(clone, "rev-parse", "HEAD")
    result = gitpull.pull(clone, "origin", "main", WATCHED)
    assert result.outcome == gitpull.UP_TO_DATE and not result.changed
    assert result.after == head == git(clone, "rev-parse", "HEAD")


def test_pushed_commit_is_fast_forwarded(tmp_path: Path) -> None:
    _, dev, clone = setup(tmp_path)
    pushed = commit(dev, "tenants.yaml", "version: 1\ntenants: {}\n", "second")
    git(dev, "push", "-q", "origin", "main")
    result = gitpull.pull(clone, "origin", "main", WATCHED)
    assert result.outcome == gitpull.FAST_FORWARD and result.changed
    assert result.after == pushed == git(clone, "rev-parse", "HEAD")
    assert (clone / "tenants.yaml").read_text() == "version: 1\ntenants: {}\n"


def test_force_pushed_rewrite_is_refused_and_work_tree_kept(tmp_path: Path) -> None:
    _, dev, clone = setup(tmp_path)
    commit(dev, "tenants.yaml", "version: 1\n# b\n", "second")
    git(dev, "push", "-q", "origin", "main")
    applied = gitpull.pull(clone, "origin", "main", WATCHED).after
    git(dev, "reset", "-q", "--hard", "HEAD~1")
    rewritten = commit(dev, "tenants.yaml", "version: 1\n# rewritten\n", "rewritten")
    git(dev, "push", "-q", "--force", "origin", "main")
    result = gitpull.pull(clone, "origin", "main", WATCHED)
    assert result.outcome == gitpull.REFUSED
    assert "not a fast-forward" in result.message and rewritten[:7] in result.message
    assert result.remote == rewritten
    assert git(clone, "rev-parse", "HEAD") == applied
    assert (clone / "tenants.yaml").read_text() == "version: 1\n# b\n"


def test_local_edit_is_refused_and_kept(tmp_path: Path) -> None:
    _, dev, clone = setup(tmp_path)
    commit(dev, "tenants.yaml", "version: 1\n# pushed\n", "second")
    git(dev, "push", "-q", "origin", "main")
    head = git(clone, "rev-parse", "HEAD")
    (clone / "tenants.yaml").write_text("version: 1\n# typed on the server\n")
    result = gitpull.pull(clone, "origin", "main", WATCHED)
    assert result.outcome == gitpull.REFUSED and "tenants.yaml" in result.message
    assert git(clone, "rev-parse", "HEAD") == head
    assert (clone / "tenants.yaml").read_text() == "version: 1\n# typed on the server\n"


def test_untracked_migration_counts_as_local_edit(tmp_path: Path) -> None:
    _, _, clone = setup(tmp_path)
    (clone / "migrations").mkdir()
    (clone / "migrations" / "0001_x.sql").write_text("CREATE TABLE x (id INTEGER);\n")
    result = gitpull.pull(clone, "origin", "main", WATCHED)
    assert result.outcome == gitpull.REFUSED and "migrations/0001_x.sql" in result.message


def test_local_commit_not_on_remote_is_refused(tmp_path: Path) -> None:
    _, _, clone = setup(tmp_path)
    local = commit(clone, "tenants.yaml", "version: 1\n# local\n", "local")
    result = gitpull.pull(clone, "origin", "main", WATCHED)
    assert result.outcome == gitpull.REFUSED and "has commits" in result.message
    assert git(clone, "rev-parse", "HEAD") == local


def test_other_branch_checked_out_is_refused(tmp_path: Path) -> None:
    _, _, clone = setup(tmp_path)
    git(clone, "checkout", "-q", "-b", "experiment")
    result = gitpull.pull(clone, "origin", "main", WATCHED)
    assert result.outcome == gitpull.REFUSED and "experiment" in result.message


def test_unreachable_remote_is_an_error_not_a_change(tmp_path: Path) -> None:
    origin, _, clone = setup(tmp_path)
    head = git(clone, "rev-parse", "HEAD")
    origin.rename(tmp_path / "gone.git")
    result = gitpull.pull(clone, "origin", "main", WATCHED)
    assert result.outcome == gitpull.ERROR and not result.ok
    assert git(clone, "rev-parse", "HEAD") == head
