"""Who may change a fleet, and what an operating-system error means for the operator.

Why: a fleet's files belong to one user (the service user, ``tenant-reconciler`` in
``deploy/``): its applications open the tenant files and ``central.db`` as that user.
Run as root (or any other user), a pass would create tenant files, ``-wal``/``-shm``,
retired and archived copies and folders that user owns, ``0600``, which the service and
its applications can no longer open. SQLite, the relocation copy, the archive and the
restore all create files, so chowning each of them afterwards would be a rule every
writer must remember; instead a command that writes runs only as the fleet's owner and
is refused otherwise, with the user to run as (``require_owner``). Read-only commands
create nothing and may run as anyone who can read the fleet.

The fleet's owner is the owner of ``central.db`` or, before it exists, of the nearest
existing folder above it (a world-writable sticky folder such as ``/tmp`` says nothing
about whose fleet it is, and is skipped).

``explain`` turns an ``OSError`` into one line with the path, who owns it, its mode and
the access needed, for the CLI's last-resort handler (no traceback reaches a user).
"""

from __future__ import annotations

import errno
import os
import pwd
import stat
from pathlib import Path

from reconciler.errors import ReconcileError


class WrongUser(ReconcileError):
    """A command that writes was run by a user who does not own the fleet."""


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def fleet_owner(central: Path) -> tuple[int, Path] | None:
    """``(uid, path it was read from)``, or None when nothing above ``central`` tells."""
    for path in (central, *central.absolute().parents):
        try:
            st = path.lstat()
        except FileNotFoundError:
            continue
        except OSError:
            return None
        if stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX and st.st_mode & 0o002:
            return None  # /tmp and the like: anyone's
        return st.st_uid, path
    return None


def require_owner(central: Path) -> None:
    """Raise ``WrongUser`` unless this process runs as the owner of the fleet whose
    registry is ``central`` (see the module docstring)."""
    owner = fleet_owner(central)
    me = os.geteuid()
    if owner is None or owner[0] == me:
        return
    uid, path = owner
    name = user_name(uid)
    raise WrongUser(
        f"this fleet belongs to user {name} (the owner of {path}) and you are "
        f"{user_name(me)}: files created now would belong to {user_name(me)}, and the "
        f"service and its applications could not open them. Run it as {name}: "
        f"`sudo -u {name} reconcile …` (read-only commands — plan, status, history, "
        "route, validate — may run as any user who can read the fleet)")


def describe(path: Path) -> str:
    """``file /x (owner alice, mode rw-------)`` of ``path`` or of the nearest existing
    folder above it."""
    for p in (path, *path.absolute().parents):
        try:
            st = p.lstat()
        except OSError:
            continue
        kind = "folder" if stat.S_ISDIR(st.st_mode) else "file"
        return (f"{kind} {p} (owner {user_name(st.st_uid)}, mode "
                f"{stat.filemode(st.st_mode)[1:]})")
    return str(path)


def explain(exc: OSError) -> str:
    """One line for an operating-system error: what failed, on which path, and what to
    do (the access needed and by whom it is held)."""
    what = exc.strerror or str(exc)
    if exc.filename is None:
        return f"{what} (an operating-system error: {exc.__class__.__name__})"
    path = Path(os.fsdecode(exc.filename))
    if exc.errno in (errno.EACCES, errno.EPERM):
        if os.path.isdir(path):
            need = (f"read and search access to it (and write access to change what it "
                    f"holds); it is the {describe(path)}")
        elif os.path.lexists(path):
            need = (f"read access to it (and write access to change it); it is the "
                    f"{describe(path)}")
        else:
            need = (f"write and search access to the folder that would hold it, the "
                    f"{describe(path.parent)}")
        return (f"permission denied: {path} — this needs {need}. Run as the owner "
                f"(`sudo -u <owner> reconcile …`) or grant that access")
    if exc.errno == errno.EROFS:
        return (f"{path} is on a read-only file system; run a read-only command (plan, "
                "status, history, route, validate) or remount it read-write")
    if exc.errno == errno.ENOSPC:
        return f"no space left on the device holding {path}; free some space and run again"
    if exc.errno == errno.ENOENT:
        return f"{path} does not exist ({what})"
    return f"{what}: {path}"
