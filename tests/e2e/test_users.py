"""Other users (issue 12, item 6), with a real unprivileged user (``reconcile-test``,
created by tests/e2e/conftest.py) and root:

* root, on a fleet owned by the service user: every command that writes is refused,
  naming the user to run as, and not one entry changes; read-only commands work;
* the owner, on its own fleet: creating, relocating and archiving leave every file
  and folder owned by it (nothing for root or anyone else);
* a user who cannot write ``data/``: a message with the path, its owner and mode and
  the access needed — never a traceback — for every command, and for any OS error
  (an unreadable ``--from`` file, an unreadable ``_retired/``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import Fleet
from tests.e2e.conftest import OtherUser, listing, readable_by_all

TENANTS = {"aaron": {"region": "eu"}, "acme": {"region": "us"}}
WRITES = [
    ("apply",), ("daemon",), ("restore", "aaron", "--from", "backup/aaron.db"),
    ("gc", "--retired-older-than", "0s"),
]
READS = [(("--dry-run",), 2), (("status",), 2), (("history",), 0),
         (("route", "aaron.yoursaas.com"), 0), (("validate",), 0)]


def _fleet(root: Path) -> Fleet:
    fleet = Fleet(root / "fleet")
    fleet.root.mkdir()
    fleet.use_shipped_migrations()
    fleet.declare(TENANTS)
    assert fleet.run().returncode == 0
    fleet.declare({**TENANTS, "hooli": {"region": "us"}})  # a pass would create hooli
    (fleet.root / "backup").mkdir()
    shutil.copy(fleet.path("aaron", "eu"), fleet.root / "backup" / "aaron.db")
    return fleet


def _chown(root: Path, user: OtherUser) -> None:
    for p in [root, *root.rglob("*")]:
        os.lchown(p, user.uid, user.gid)


def _no_traceback(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr


@pytest.mark.parametrize("args", WRITES, ids=[a[0] for a in WRITES])
def test_root_is_refused_on_a_fleet_owned_by_the_service_user_and_nothing_changes(
        open_dir: Path, other_user: OtherUser, args: tuple[str, ...]) -> None:
    fleet = _fleet(open_dir)
    _chown(fleet.root, other_user)
    before = listing(fleet.root)
    result = fleet.run(*args, timeout=60)
    _no_traceback(result.stderr)
    assert result.returncode == 1
    assert f"this fleet belongs to user {other_user.name}" in result.stderr
    assert f"sudo -u {other_user.name} reconcile" in result.stderr
    assert listing(fleet.root) == before


def test_root_may_read_a_fleet_owned_by_the_service_user(
        open_dir: Path, other_user: OtherUser) -> None:
    fleet = _fleet(open_dir)
    _chown(fleet.root, other_user)
    before = listing(fleet.root)
    for args, code in READS:
        result = fleet.run(*args)
        _no_traceback(result.stderr)
        assert result.returncode == code, (args, result.stderr)
    assert listing(fleet.root) == before


def test_the_owner_creates_relocates_and_archives_and_every_file_is_its_own(
        open_dir: Path, other_user: OtherUser) -> None:
    fleet = _fleet(open_dir)
    _chown(fleet.root, other_user)
    created = other_user.run(fleet, "apply")
    assert created.returncode == 0, created.stderr
    # aaron moves to us (a verified copy, the source retired), acme is archived
    fleet.declare({"aaron": {"region": "us"}, "hooli": {"region": "us"}}, prune="archive")
    _chown(fleet.config, other_user)
    moved = other_user.run(fleet, "apply")
    assert moved.returncode == 0, moved.stderr
    assert fleet.path("aaron", "us").exists() and fleet.path("hooli", "us").exists()
    assert list((fleet.data / "_archive").glob("acme-*.db"))
    assert list((fleet.data / "_retired").iterdir())
    owners = {str(p.relative_to(fleet.root)): p.lstat().st_uid
              for p in [fleet.root, *fleet.root.rglob("*")]}
    assert {k for k, uid in owners.items() if uid != other_user.uid} == set()


def test_a_user_who_cannot_write_the_fleet_gets_who_to_run_as_not_a_traceback(
        open_dir: Path, other_user: OtherUser) -> None:
    fleet = _fleet(open_dir)  # owned by root, readable by everyone
    readable_by_all(fleet.root)
    before = listing(fleet.root)
    for args in WRITES:
        result = other_user.run(fleet, *args, timeout=60)
        _no_traceback(result.stderr)
        assert result.returncode == 1, (args, result.stderr)
        assert "this fleet belongs to user root" in result.stderr
    assert listing(fleet.root) == before


def test_the_owner_without_write_access_to_data_is_told_the_path_and_access_needed(
        open_dir: Path, other_user: OtherUser) -> None:
    fleet = _fleet(open_dir)
    _chown(fleet.root, other_user)
    fleet.data.chmod(0o555)
    before = listing(fleet.root)
    result = other_user.run(fleet, "apply")
    _no_traceback(result.stderr)
    assert result.returncode == 1
    assert "needs write access to it and to its folder" in result.stderr
    assert f"folder {fleet.data} (owner {other_user.name}, mode r-xr-xr-x)" in result.stderr
    (fleet.data / "central.db.lock").unlink()
    result = other_user.run(fleet, "apply")
    _no_traceback(result.stderr)
    assert result.returncode == 1
    assert "cannot take the fleet lock" in result.stderr
    assert f"permission denied: {fleet.data / 'central.db.lock'}" in result.stderr
    after = listing(fleet.root)
    assert set(after) == set(before) - {"data/central.db.lock"}  # nothing created
    assert {k: v for k, v in after.items() if k != "data"} == {
        k: v for k, v in before.items() if k in after and k != "data"}


def test_any_os_error_is_a_message_with_the_path_and_never_a_traceback(
        open_dir: Path, other_user: OtherUser) -> None:
    fleet = _fleet(open_dir)
    _chown(fleet.root, other_user)
    fleet.path("aaron", "eu").unlink()  # aaron goes missing; restore it from a backup ...
    assert other_user.run(fleet, "apply").returncode == 3
    secret = fleet.root / "backup" / "aaron.db"
    secret.chmod(0o000)  # ... that this user may not read
    result = other_user.run(fleet, "restore", "aaron", "--from", str(secret))
    _no_traceback(result.stderr)
    assert result.returncode == 1
    assert f"permission denied: {secret}" in result.stderr
    assert "mode ---------" in result.stderr
    retired = fleet.data / "_retired"
    retired.mkdir(mode=0o000)
    os.chown(retired, 0, 0)
    for args in (("gc", "--retired-older-than", "1d"),
                 ("gc", "--retired-older-than", "1d", "--dry-run")):
        result = other_user.run(fleet, *args)
        _no_traceback(result.stderr)
        assert result.returncode == 1
        assert f"permission denied: {retired}" in result.stderr
        assert "read and search access" in result.stderr
