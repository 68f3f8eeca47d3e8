"""Pull mode: when the pulled head is invalid, apply the newest valid commit before it.

Why (issue 15 item 1): every agent reads the same desired state, so all hosts must
converge on one revision whatever moment each one pulled. Keeping "the last state this
process loaded" does not: a host that was down while a valid commit A and then an
invalid commit B were pushed pulls straight to B and would keep its older revision,
while a host that was up applied A — and the regions' agents then wait on each other
("view is at revision X, not Y") until the file is fixed. The rule instead depends on
the history alone: the newest commit on the branch's first-parent line, from the head
back, whose tenants.yaml and migrations are valid.

Invariants:
* only called when the head is invalid: a valid head costs nothing more;
* the walk stops at the revision already applied (it is valid: it was applied) and
  after ``MAX_WALK`` commits, newest first, first parents only (a merge is the state
  the branch was in, never a state of the merged branch);
* each commit is read from a temporary checkout (``gitpull.checkout``): the work tree,
  its index and HEAD stay at the head, so the next pull fast-forwards as before;
* a commit is valid exactly when ``engine.load`` accepts it (same rules, same region
  checks) — the returned ``Inputs`` carry that commit's SHA as their revision.
"""

from __future__ import annotations

from pathlib import Path

from reconciler import engine, gitpull
from reconciler.context import Logger
from reconciler.errors import InvalidInput
from reconciler.revision import short

#: commits looked at, newest first, before giving up (each costs a checkout + a load)
MAX_WALK = 50


def newest_valid(config: Path, region: str | None, applied: str | None,
                 log: Logger) -> engine.Inputs | None:
    """The desired state of the newest valid commit from HEAD back to ``applied``
    (excluded; None: back ``MAX_WALK`` commits), or None when there is none newer than
    ``applied`` or git cannot be read (logged). ``config``: the work tree's tenants.yaml;
    ``region``: as for ``engine.load``."""
    try:
        top = gitpull.toplevel(config.parent)
        commits = gitpull.first_parent(top, applied, MAX_WALK)
        for commit in commits:
            with gitpull.checkout(top, commit) as tree:
                try:
                    return engine.load(config, region, adopt=False, held=True, commit=tree)
                except InvalidInput as exc:
                    log.info("commit invalid too, looking further back", commit=commit,
                             problems=len(exc.problems))
    except gitpull.GitError as exc:
        log.error("cannot read older commits to find the newest valid one", error=str(exc))
        return None
    if applied is None or len(commits) >= MAX_WALK:
        log.warning("no valid commit found", looked_at=len(commits),
                    back_to=short(commits[-1]) if commits else None)
    return None
