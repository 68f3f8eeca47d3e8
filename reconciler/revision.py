"""Which desired state is this? The git commit of ``tenants.yaml`` or its SHA-256.

Why: every event records the revision it came from, so an operator can tie any change
to a fleet back to the commit (and pull request) that asked for it. ``+dirty`` marks a
file (or migration) edited and not committed: applied, but not reviewed.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path


def revision(config: Path, migrations_dir: Path | None = None) -> str:
    config = config.resolve()
    paths = [config.name]
    if migrations_dir is not None and migrations_dir.resolve().is_relative_to(config.parent):
        paths.append(str(migrations_dir.resolve().relative_to(config.parent)))
    try:
        out = subprocess.run(
            ["git", "-C", str(config.parent), "status", "--porcelain=v2", "--branch",
             "--untracked-files=all", "--", *paths],
            capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return _sha(config)
    if out.returncode != 0:
        return _sha(config)
    oid, dirty, untracked_config = None, False, False
    for line in out.stdout.splitlines():
        if line.startswith("# branch.oid "):
            oid = line.split()[2]
        elif line.startswith("? "):
            if Path(line[2:]).name == config.name:
                untracked_config = True
            dirty = True
        elif line and not line.startswith("#"):
            dirty = True
    if oid is None or oid == "(initial)" or untracked_config:
        return _sha(config)
    return oid + ("+dirty" if dirty else "")


SHORT = 7  # hex digits of a commit or digest in every output (git's own default length)


def short(rev: str) -> str:
    """The one short form used in all output: ``3f2a9c1``, ``3f2a9c1+dirty``,
    ``sha256:b0cb7c2`` (``SHORT`` hex digits; git's ``--abbrev`` default)."""
    if rev.startswith("sha256:"):
        return rev[:len("sha256:") + SHORT]
    base, _, dirty = rev.partition("+")
    return base[:SHORT] + (f"+{dirty}" if dirty else "")


def _sha(config: Path) -> str:
    try:
        return "sha256:" + hashlib.sha256(config.read_bytes()).hexdigest()
    except OSError:
        return "sha256:unreadable"
