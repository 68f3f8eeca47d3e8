"""Fixtures for permission tests: a real unprivileged system user, and fleets in a
folder that user can reach.

``other_user`` creates the system user ``reconcile-test`` (``useradd --system``) when the
tests run as root and it does not exist yet, and makes the interpreter that runs the
``reconcile`` script reachable by it (search permission, ``setfacl u:reconcile-test:x``,
on each folder of the path that denies it: e.g. a pyenv under ``/root``). Without root
the tests that need it are skipped, saying why: only root can run a command as another
user.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import RECONCILE, REPO, Fleet
from tests.e2e.xmovekit import Hosts

USER = "reconcile-test"


@dataclass(frozen=True)
class OtherUser:
    """A real unprivileged user, and how to run the real ``reconcile`` as it."""

    name: str
    uid: int
    gid: int

    def run(self, fleet: Fleet, *args: str, timeout: float = 120
            ) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "RECONCILE_CRASH_AT"}
        env |= {"RECONCILE_CONFIG": str(fleet.config), "HOME": "/nonexistent",
                "USER": self.name, "LOGNAME": self.name}
        return subprocess.run([RECONCILE, *args], cwd=fleet.root, env=env, text=True,
                              capture_output=True, timeout=timeout, user=self.uid,
                              group=self.gid, extra_groups=[])


def _folders(path: Path) -> list[Path]:
    return [p for p in reversed(path.parents) if p != Path("/")]


def _grant_search(user: str, paths: list[Path]) -> None:
    """Let ``user`` traverse every folder above ``paths`` that others cannot."""
    setfacl = shutil.which("setfacl")
    for folder in dict.fromkeys(f for p in paths for f in _folders(p)):
        if folder.stat().st_mode & stat.S_IXOTH:
            continue
        if setfacl is None:
            pytest.skip(f"{folder} is not searchable by {user} and setfacl is missing "
                        "(apt-get install acl) to grant it")
        subprocess.run([setfacl, "-m", f"u:{user}:x", str(folder)], check=True)


@pytest.fixture(scope="session")
def other_user() -> OtherUser:
    if os.geteuid() != 0:
        pytest.skip("needs root: only root can create the test user and run commands as it")
    try:
        entry = pwd.getpwnam(USER)
    except KeyError:
        made = subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                               "/usr/sbin/nologin", USER], check=False)
        if made.returncode not in (0, 9):  # 9: it exists (another test worker made it)
            made.check_returncode()
        entry = pwd.getpwnam(USER)
    user = OtherUser(USER, entry.pw_uid, entry.pw_gid)
    _grant_search(USER, [Path(os.path.realpath(sys.executable)), Path(RECONCILE), REPO])
    return user


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A folder every user can reach (tmp_path is below a 0700 folder of root's)."""
    path = Path(tempfile.mkdtemp(prefix="reconcile-users-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def readable_by_all(root: Path) -> None:
    """chmod a+rX (never +w) on ``root`` and everything below it."""
    for p in [root, *root.rglob("*")]:
        mode = p.lstat().st_mode
        if stat.S_ISLNK(mode):
            continue
        extra = 0o555 if stat.S_ISDIR(mode) else 0o444
        p.chmod((stat.S_IMODE(mode) | extra) & ~0o022)


def listing(root: Path) -> dict[str, tuple[int, int, int, int, str]]:
    """Every entry below ``root`` (``root`` too): (mode, uid, size, mtime in ns, sha256
    or "") by relative path. A file created and removed again changes its folder's
    mtime, so equal listings mean nothing was written, not even for a while."""
    out: dict[str, tuple[int, int, int, int, str]] = {}
    for p in sorted([root, *root.rglob("*")]):
        st = p.lstat()
        digest = (hashlib.sha256(p.read_bytes()).hexdigest()
                  if stat.S_ISREG(st.st_mode) else "")
        out[str(p.relative_to(root))] = (st.st_mode, st.st_uid, st.st_size, st.st_mtime_ns,
                                          digest)
    return out


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Hosts]:
    """Two region hosts, eu and us (``xmovekit``), sharing a file:// replica store
    (test_multihost has its own ``hosts``, from ``hostkit``)."""
    h = Hosts(tmp_path, f"file://{tmp_path / 'replica'}")
    yield h
    h.close()
