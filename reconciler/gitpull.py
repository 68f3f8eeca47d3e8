"""GitOps pull mode: bring the clone holding ``tenants.yaml`` up to its remote branch.

Why: in pull mode the fleet follows what was reviewed and merged, never what someone
typed on the server. So the only change this module ever makes to the work tree is a
fast-forward to the commit the remote branch points at, and only when the work tree
holds nothing but committed content; everything else is refused and reported with
what to do, and the daemon keeps applying the last commit it accepted.

Invariants:
* never rewrites history, never merges, never discards local edits or commits: a
  force-pushed branch, a local commit the remote does not have, a checkout of another
  branch, or an edited/untracked file in the watched paths is a ``refused`` result;
* the remote-tracking ref is the only thing a fetch changes (``+`` refspec: it mirrors
  the remote, even after a force-push, so the refusal can name the new commit);
* git runs with a timeout, without prompts (``GIT_TERMINAL_PROMPT=0``), and names
  come from validated settings (they cannot start with ``-``);
* reading an older commit (``first_parent``, ``checkout``: the newest valid commit
  when the head is invalid, see ``lastvalid``) writes only into a temporary directory,
  through its own index file: the work tree, its index and HEAD stay as they are, so
  the next ``pull`` fast-forwards as before.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from reconciler.revision import short

UP_TO_DATE, FAST_FORWARD, REFUSED, ERROR = "up-to-date", "fast-forward", "refused", "error"
GIT_TIMEOUT = 120.0


@dataclass(frozen=True)
class PullResult:
    outcome: str  # up-to-date | fast-forward | refused | error
    before: str | None  # HEAD before (full SHA)
    after: str | None  # HEAD after
    remote: str | None  # the fetched remote branch head
    message: str = ""

    @property
    def changed(self) -> bool:
        return self.outcome == FAST_FORWARD

    @property
    def ok(self) -> bool:
        return self.outcome in (UP_TO_DATE, FAST_FORWARD)


class GitError(Exception):
    pass


def _git(root: Path, *args: str, check: bool = True, index: Path | None = None
         ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
    if index is not None:  # a private index: the work tree's own stays untouched
        env["GIT_INDEX_FILE"] = str(index)
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                             timeout=GIT_TIMEOUT, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise GitError(f"git {args[0]} timed out after {GIT_TIMEOUT:.0f}s") from None
    except OSError as exc:
        raise GitError(f"cannot run git: {exc}") from None
    if check and out.returncode != 0:
        raise GitError(f"git {' '.join(args)}: {out.stderr.strip() or out.stdout.strip()}")
    return out


def local_edits(root: Path, paths: list[str]) -> list[str]:
    """Tracked files changed anywhere, plus untracked files among ``paths``."""
    tracked = _git(root, "status", "--porcelain=v1", "--untracked-files=no").stdout
    untracked = _git(root, "status", "--porcelain=v1", "--untracked-files=all", "--",
                     *paths).stdout if paths else ""
    found = {line[3:] for line in (tracked + untracked).splitlines() if line.strip()}
    return sorted(found)


def pull(root: Path, remote: str, branch: str, watched: list[str] | None = None) -> PullResult:
    """Fetch ``remote/branch`` and fast-forward the checked-out ``branch`` to it.

    ``watched``: paths (relative to ``root``) whose untracked files count as local edits
    — the desired-state file and the migrations directory."""
    try:
        return _pull(root, remote, branch, watched or [])
    except GitError as exc:
        return PullResult(ERROR, None, None, None, str(exc))


def _pull(root: Path, remote: str, branch: str, watched: list[str]) -> PullResult:
    top = Path(_git(root, "rev-parse", "--show-toplevel").stdout.strip())
    head = _git(top, "rev-parse", "--verify", "HEAD").stdout.strip()
    current = _git(top, "symbolic-ref", "--quiet", "--short", "HEAD", check=False).stdout.strip()
    if current != branch:
        where = f"branch {current}" if current else "a detached HEAD"
        return PullResult(REFUSED, head, head, None,
                          f"the clone is on {where}, pull mode follows {branch} — "
                          f"run `git -C {top} switch {branch}`")
    tracking = f"refs/remotes/{remote}/{branch}"
    _git(top, "fetch", "--quiet", "--no-tags", "--no-recurse-submodules", remote,
         f"+refs/heads/{branch}:{tracking}")
    theirs = _git(top, "rev-parse", "--verify", f"{tracking}^{{commit}}").stdout.strip()
    rel = [os.path.relpath(root / p, top) for p in watched]
    edits = local_edits(top, rel)
    if edits:
        shown = ", ".join(edits[:5]) + (f" and {len(edits) - 5} more" if len(edits) > 5 else "")
        return PullResult(REFUSED, head, head, theirs,
                          f"local edits in {shown}; pull mode applies only committed states — "
                          "commit and push them, or discard them")
    if theirs == head:
        return PullResult(UP_TO_DATE, head, head, theirs)
    if _is_ancestor(top, head, theirs):
        merged = _git(top, "merge", "--ff-only", "--quiet", theirs, check=False)
        if merged.returncode != 0:
            return PullResult(REFUSED, head, head, theirs,
                              f"fast-forward to {short(theirs)} failed: "
                              f"{merged.stderr.strip() or merged.stdout.strip()}")
        after = _git(top, "rev-parse", "--verify", "HEAD").stdout.strip()
        return PullResult(FAST_FORWARD, head, after, theirs)
    if _is_ancestor(top, theirs, head):
        return PullResult(REFUSED, head, head, theirs,
                          f"local branch {branch} ({short(head)}) has commits {remote}/{branch} "
                          f"({short(theirs)}) does not — push them through review, or reset the "
                          "clone to the remote")
    return PullResult(REFUSED, head, head, theirs,
                      f"not a fast-forward: {remote}/{branch} moved to {short(theirs)}, which does "
                      f"not contain the applied commit {short(head)} (history was rewritten) — "
                      f"review it, then `git -C {top} reset --hard {remote}/{branch}` to accept")


def _is_ancestor(root: Path, ancestor: str, descendant: str) -> bool:
    out = _git(root, "merge-base", "--is-ancestor", ancestor, descendant, check=False)
    if out.returncode not in (0, 1):
        raise GitError(f"git merge-base: {out.stderr.strip()}")
    return out.returncode == 0


@dataclass(frozen=True)
class Checkout:
    """Commit ``commit`` of the repository whose work tree is ``top``, written out under
    ``tree`` (``tree / p`` holds what ``top / p`` holds at that commit)."""

    commit: str  # full SHA
    top: Path
    tree: Path


def toplevel(root: Path) -> Path:
    """The work tree holding ``root``. Raises ``GitError``."""
    return Path(_git(root, "rev-parse", "--show-toplevel").stdout.strip())


def first_parent(top: Path, since: str | None, limit: int) -> list[str]:
    """HEAD and its first parents, newest first, down to (not including) ``since`` — when
    that names a commit of this repository — and at most ``limit`` commits. First
    parents only: a merge counts as the one state the branch was in, never the states
    of the branch merged into it. Raises ``GitError``."""
    bound: list[str] = []
    if since is not None and _git(top, "rev-parse", "--verify", "--quiet",
                                  f"{since}^{{commit}}", check=False).returncode == 0:
        bound = [f"^{since}"]
    out = _git(top, "rev-list", "--first-parent", f"--max-count={limit}", "HEAD", *bound)
    return out.stdout.split()


@contextlib.contextmanager
def checkout(top: Path, commit: str) -> Iterator[Checkout]:
    """``commit``'s files in a temporary directory (removed on exit), written through a
    private index file: nothing of ``top`` (files, index, HEAD, refs) changes. Raises
    ``GitError``."""
    with tempfile.TemporaryDirectory(prefix="reconcile-commit-") as temp:
        index, tree = Path(temp).resolve() / "index", Path(temp).resolve() / "tree"
        _git(top, "read-tree", commit, index=index)
        _git(top, "checkout-index", "--all", f"--prefix={tree}/", index=index)
        tree.mkdir(exist_ok=True)  # an empty commit writes nothing
        yield Checkout(commit, top, tree)
